package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func needEtcd(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd not on PATH (scripts/install-test-deps.sh installs etcd-server)")
	}
}

// TestScaleShort is the scale run at 1,000 and 20,000 grants: the bulk
// loader writes exactly the counted keys, a fresh Portcullis verifies every
// sampled loaded token (cold, then warm) and denies what it must. Latency
// figures are reported, not asserted: on a shared two-core machine a
// timing bound would be flaky.
func TestScaleShort(t *testing.T) {
	if testing.Short() {
		t.Skip("bulk-loads an external etcd and starts six servers")
	}
	needEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	opts, err := parseFlags([]string{"-mode", "scale", "-scale-steps", "1000,20000", "-scale-sample", "300",
		"-scale-warm", "500ms", "-scale-compare", "2s", "-conns", "8"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := runScale(ctx, opts.scale)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.steps) != 2 {
		t.Fatalf("%d steps, want 2", len(rep.steps))
	}
	for i, want := range []int64{1000, 20000} {
		s := rep.steps[i]
		if s.grants != want || s.users != want/grantsPerUser || s.tokens != want/grantsPerUser {
			t.Errorf("step %d: %d grants, %d users, %d tokens in etcd; want %d, %d, %d", i, s.grants, s.users, s.tokens, want, want/grantsPerUser, want/grantsPerUser)
		}
		if wantCold := min(int64(300), want/grantsPerUser); s.cold.requests != wantCold || !s.cold.only(200) {
			t.Errorf("step %d: cold %d requests (want %d), codes %v", i, s.cold.requests, wantCold, s.cold.codes)
		}
		if s.warm.requests == 0 || !s.warm.only(200) {
			t.Errorf("step %d: warm %d requests, codes %v", i, s.warm.requests, s.warm.codes)
		}
		if len(s.denials) != 3 {
			t.Errorf("step %d: %d denial checks, want 3", i, len(s.denials))
		}
		for _, c := range s.denials {
			if !c.ok() {
				t.Errorf("step %d: %s: got %d, want %d", i, c.what, c.got, c.want)
			}
		}
		if s.dbSize <= 0 || s.rss <= 0 {
			t.Errorf("step %d: db size %d, RSS %d", i, s.dbSize, s.rss)
		}
	}
	if len(rep.side) != 6 {
		t.Fatalf("%d side-by-side targets, want 6", len(rep.side))
	}
	for _, s := range rep.side {
		if len(s.rounds) != 4 || len(s.servers) == 0 {
			t.Errorf("%s: %d rounds on %d servers", s.name, len(s.rounds), len(s.servers))
		}
	}
	if n := len(rep.side[3].servers); n != 3 {
		t.Errorf("the replicas target ran %d servers", n)
	}
	var out bytes.Buffer
	rep.markdown(&out)
	t.Log("\n" + out.String())
	for _, want := range []string{"| 20000 | 2000 | 2000 |", "| forward-auth, cache miss, 1 replica |", "| forward-auth, cache hit, 3 replicas |", "| reverse proxy, cache hit, 1 replica |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestSoakShort runs the soak mode for 20s with writes every 100ms, with
// its defaults: an external etcd (the embedded one when etcd is not on
// PATH) and the server and the generator on separate CPUs when there are
// two and taskset is on PATH. The peak is found by paced probes, the paced
// load is served without a failure, every trickle write succeeds, the
// processes run where the plan put them, this process's affinity is
// restored afterwards, and every sample has Portcullis's RSS, heap,
// goroutines and open files (and etcd's RSS). The p99 bound of the probes
// is loose and no figure is asserted: on a shared machine it would flake.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("a 20s soak")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"-mode", "soak", "-soak", "20s", "-soak-interval", "5s", "-conns", "8", "-warmup", "500ms", "-soak-probe", "2s", "-soak-peak-p99", "1s"}
	external := true
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Log("etcd not on PATH: soak on the embedded etcd")
		args, external = append(args, "-soak-store", storeEmbedded), false
	}
	opts, err := parseFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	before, err := allowedCPUs("/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	_, tasksetErr := exec.LookPath("taskset")
	wantPinned := len(before) >= 2 && tasksetErr == nil
	rep, err := runSoak(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.pin.on() != wantPinned {
		t.Errorf("pinned %v (%s), want %v with CPUs %s and taskset error %v", rep.pin.on(), rep.pin.why, wantPinned, before, tasksetErr)
	}
	if !wantPinned {
		t.Logf("not pinned: %s", rep.pin.why)
	}
	if after, err := allowedCPUs("/proc/self"); err != nil || !slices.Equal(after, before) {
		t.Errorf("this process runs on CPUs %s after the soak (%v), want %s again", after, err, before)
	}
	if rep.ceiling.rps() <= 0 || len(rep.probes) == 0 || !rep.probes[len(rep.probes)-1].sustained || rep.peak <= 0 || rep.peak > rep.ceiling.rps()*1.001 {
		t.Fatalf("ceiling %.0f req/s, %d probes, peak %.0f", rep.ceiling.rps(), len(rep.probes), rep.peak)
	}
	if rep.rate != 0.8*rep.peak || len(rep.minutes) != 1 || rep.minutes[0].p.requests == 0 {
		t.Fatalf("rate %.0f for peak %.0f, %d minutes", rep.rate, rep.peak, len(rep.minutes))
	}
	if rep.pin.on() && rep.gomaxprocs != int64(len(rep.pin.server)) {
		t.Errorf("server GOMAXPROCS %d on CPUs %s", rep.gomaxprocs, rep.pin.server)
	}
	if len(rep.samples) < 5 || !rep.samples[0].idle || !rep.samples[len(rep.samples)-1].idle {
		t.Errorf("%d samples, want at least 5 (idle before, every 5s under load, idle after)", len(rep.samples))
	}
	for _, s := range rep.samples {
		if s.rss <= 0 || s.heap <= 0 || s.heapGoal <= 0 || s.goroutines <= 0 || s.openFDs <= 0 || (s.etcdRSS > 0) != external {
			t.Errorf("sample %+v", s)
		}
	}
	var out bytes.Buffer
	rep.markdown(&out)
	t.Log("\n" + out.String())
	for _, want := range []string{"0 write errors", "p99 per minute: min", "- heap in use MiB: ", "- GC heap goal MiB: ", "- open fds: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestParseFlagsModes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"-mode", "scale"}, true},
		{[]string{"-mode", "scale", "-scale-steps", "1000,100"}, false}, // not ascending
		{[]string{"-mode", "scale", "-scale-steps", "5"}, false},        // fewer grants than one user holds
		{[]string{"-mode", "scale", "-scale-steps", "9000000"}, false},  // beyond the bound
		{[]string{"-mode", "soak"}, false},                              // no -soak
		{[]string{"-mode", "soak", "-soak", "1m", "-soak-load", "1.5"}, false},
		{[]string{"-mode", "soak", "-soak", "1m"}, true},
		{[]string{"-mode", "soak", "-soak", "1m", "-soak-store", "embedded", "-soak-pin", "off"}, true},
		{[]string{"-mode", "soak", "-soak", "1m", "-soak-pin", "0:1-3"}, true},
		{[]string{"-mode", "soak", "-soak", "1m", "-soak-store", "memory"}, false},
		{[]string{"-mode", "soak", "-soak", "1m", "-soak-pin", "0-1:1"}, false}, // overlap
		{[]string{"-mode", "soak", "-soak", "1m", "-soak-pin", "0"}, false},     // no generator CPUs
		{[]string{"-mode", "soak", "-soak", "1m", "-soak-pin", "1-0:2"}, false}, // descending range
		{[]string{"-mode", "soak", "-soak", "1m", "-soak-probe", "100ms"}, false},
		{[]string{"-mode", "bogus"}, false},
		{[]string{"-baseline-request", "minimal"}, true},
		{[]string{"-baseline-request", "same"}, true},
		{[]string{"-baseline-request", "empty"}, false},
	} {
		_, err := parseFlags(tc.args)
		if (err == nil) != tc.ok {
			t.Errorf("parseFlags(%q): err %v, want ok=%v", tc.args, err, tc.ok)
		}
	}
}

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want cpuSet
		list string
	}{
		{"0", cpuSet{0}, "0"},
		{"0-1", cpuSet{0, 1}, "0-1"},
		{" 3,0-1,1 ", cpuSet{0, 1, 3}, "0-1,3"},
		{"2-2,4-6", cpuSet{2, 4, 5, 6}, "2,4-6"},
		{"", nil, ""},
		{"a", nil, ""},
		{"-1", nil, ""},
		{"3-1", nil, ""},
		{"0-1024", nil, ""},
	} {
		got, err := parseCPUList(tc.in)
		if (err == nil) != (tc.want != nil) || !slices.Equal(got, tc.want) || (err == nil && got.String() != tc.list) {
			t.Errorf("parseCPUList(%q) = %v (%q), %v; want %v (%q)", tc.in, got, got.String(), err, tc.want, tc.list)
		}
	}
}

// TestPinSelf moves every thread of the test binary onto one CPU and back:
// each thread's Cpus_allowed_list says so, and GOMAXPROCS follows.
func TestPinSelf(t *testing.T) {
	before, err := allowedCPUs("/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	procs := runtime.GOMAXPROCS(0)
	one := before[len(before)-1:]
	restore, err := pinSelf(one)
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if got, err := allowedCPUs("/proc/self/task/" + task.Name()); err == nil && !slices.Equal(got, one) {
			t.Errorf("thread %s on CPUs %s, want %s", task.Name(), got, one)
		}
	}
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Errorf("GOMAXPROCS %d while pinned to one CPU", n)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if after, _ := allowedCPUs("/proc/self"); !slices.Equal(after, before) {
		t.Errorf("after restore on CPUs %s, want %s", after, before)
	}
	if n := runtime.GOMAXPROCS(0); n != procs {
		t.Errorf("GOMAXPROCS %d after restore, want %d", n, procs)
	}
}

func TestSlopeAndDrift(t *testing.T) {
	xs := []float64{0, 1, 2, 3, 4, 5, 6, 7}
	ys := []float64{10, 12, 14, 16, 18, 20, 22, 24}
	if got := slope(xs, ys); got != 2 {
		t.Errorf("slope = %v, want 2", got)
	}
	if a, b := drift(ys); a != 11 || b != 23 {
		t.Errorf("drift = %v, %v; want 11, 23", a, b)
	}
	if got := slope([]float64{1}, []float64{5}); got != 0 {
		t.Errorf("slope of one point = %v", got)
	}
}

// TestPinPlan: without taskset on PATH, auto runs unpinned and says why,
// an explicit -soak-pin fails naming taskset; off never pins; CPUs this
// process may not use are refused.
func TestPinPlan(t *testing.T) {
	allowed, err := allowedCPUs("/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	explicit := pinSpec{server: cpuSet{0}, gen: cpuSet{1}}
	if p, err := (pinSpec{mode: pinOff}).plan(); err != nil || p.on() {
		t.Errorf("off: %+v, %v", p, err)
	}
	if _, lookErr := exec.LookPath("taskset"); lookErr == nil {
		if _, err := (pinSpec{server: cpuSet{0}, gen: cpuSet{maxCPU - 1}}).plan(); err == nil || !strings.Contains(err.Error(), "may only use CPUs") {
			t.Errorf("CPU %d outside %s: err %v", maxCPU-1, allowed, err)
		}
	}
	t.Setenv("PATH", t.TempDir())
	if p, err := (pinSpec{mode: pinAuto}).plan(); err != nil || p.on() || p.why == "" {
		t.Errorf("auto without taskset: %+v, %v", p, err)
	} else if len(allowed) >= 2 && !strings.Contains(p.why, "taskset") {
		t.Errorf("auto without taskset on %s CPUs: why %q", allowed, p.why)
	}
	if _, err := explicit.plan(); err == nil || !strings.Contains(err.Error(), "taskset") {
		t.Errorf("explicit without taskset: err %v", err)
	}
}

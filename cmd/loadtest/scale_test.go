package main

import (
	"bytes"
	"context"
	"os/exec"
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

// TestSoakShort runs the soak mode for 20s with writes every 100ms: the
// peak is measured, the paced load is served without a failure, every
// trickle write succeeds, and RSS, goroutines and open files are sampled
// from /proc and the server's /metrics.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("a 20s soak")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts, err := parseFlags([]string{"-mode", "soak", "-soak", "20s", "-soak-interval", "5s", "-conns", "8", "-warmup", "500ms"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := runSoak(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.peak.rps() <= 0 || rep.rate <= 0 || len(rep.minutes) != 1 || rep.minutes[0].requests == 0 {
		t.Fatalf("peak %.0f req/s, rate %.0f, %d minutes", rep.peak.rps(), rep.rate, len(rep.minutes))
	}
	if len(rep.samples) < 5 || !rep.samples[0].idle || !rep.samples[len(rep.samples)-1].idle {
		t.Errorf("%d samples, want at least 5 (idle before, every 5s under load, idle after)", len(rep.samples))
	}
	for _, s := range rep.samples {
		if s.rss <= 0 || s.goroutines <= 0 || s.openFDs <= 0 {
			t.Errorf("sample %+v", s)
		}
	}
	var out bytes.Buffer
	rep.markdown(&out)
	t.Log("\n" + out.String())
	if !strings.Contains(out.String(), "0 write errors") {
		t.Errorf("report lacks the write errors:\n%s", out.String())
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
		{[]string{"-mode", "bogus"}, false},
	} {
		_, err := parseFlags(tc.args)
		if (err == nil) != tc.ok {
			t.Errorf("parseFlags(%q): err %v, want ok=%v", tc.args, err, tc.ok)
		}
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The stores of -soak-store.
const (
	storeExternal = "external" // an etcd process of its own (Debian's etcd-server)
	storeEmbedded = "embedded" // etcd inside the Portcullis process
)

// Finding the peak: paced probes from the closed-loop ceiling down, each
// probeStep of the one before, at most maxProbes of them. A probe is
// sustained when it achieves probeAchieved of its rate with p99 within
// -soak-peak-p99.
const (
	probeStep     = 0.9
	maxProbes     = 10
	probeAchieved = 0.97
)

// The criteria the report judges flatness and stability by.
const (
	flatRatio   = 1.10 // last-quarter mean at most this times the first-quarter mean
	stableRatio = 2.0  // the worst minute's p99 at most this times the median minute's
)

// soakSample is one reading of the processes during the soak.
type soakSample struct {
	at         time.Duration
	rss        int64 // Portcullis's VmRSS
	heap       int64 // go_memstats_heap_inuse_bytes from its /metrics
	heapGoal   int64 // go_memstats_next_gc_bytes: (1+GOGC/100)× the heap live after the last GC
	etcdRSS    int64 // the external etcd's VmRSS (0: embedded)
	goroutines int64 // go_goroutines from its /metrics
	openFDs    int64 // process_open_fds from its /metrics
	idle       bool  // taken before or after the load, not under it
}

// probe is one paced run at a candidate peak rate.
type probe struct {
	rate      float64 // asked for
	p         phase
	cpu       cpuUse
	sustained bool
}

// soakMinute is one paced minute of the soak.
type soakMinute struct {
	p   phase
	cpu cpuUse
}

// cpuUse is CPU time spent during one phase.
type cpuUse struct {
	server, gen, etcd time.Duration
	// others is what everything else got of the server's CPUs (of all
	// CPUs when nothing is pinned): the tenants a shared machine adds.
	others time.Duration
}

// pct is d in percent of one CPU over wall.
func pct(d, wall time.Duration) float64 { return 100 * d.Seconds() / wall.Seconds() }

// meter reads the CPU counters around a phase.
type meter struct {
	server, etcd int    // pids; etcd 0: embedded
	cpus         cpuSet // the server's when pinned; nil: all
}

type cpuSnap struct{ server, etcd, self, busy time.Duration }

func (m meter) snap() cpuSnap {
	var s cpuSnap
	s.server, _ = cpuTime(m.server)
	if m.etcd > 0 {
		s.etcd, _ = cpuTime(m.etcd)
	}
	s.self, _ = cpuTime(0)
	s.busy, _ = busyTime(m.cpus)
	return s
}

// run is one phase of g with the CPU time spent in its window.
func (m meter) run(ctx context.Context, g goGen, addr string, req request, conns int, d time.Duration) (phase, cpuUse, error) {
	var a, b cpuSnap
	p, err := g.run(ctx, addr, req, conns, d, func() { a = m.snap() }, func() { b = m.snap() })
	u := cpuUse{server: b.server - a.server, gen: b.self - a.self, etcd: b.etcd - a.etcd}
	ours := u.server
	if m.cpus == nil {
		ours += u.gen + u.etcd
	}
	u.others = max(0, b.busy-a.busy-ours)
	return p, u, err
}

// soakReport is what the soak mode measured.
type soakReport struct {
	started    time.Time
	machine    machineInfo
	opts       options
	pin        pinning
	gomaxprocs int64 // the server's, from its /metrics (0: not exported)
	ceiling    phase // closed loop, before the probes
	ceilingCPU cpuUse
	probes     []probe // paced, from the ceiling down
	peak       float64 // the highest sustained probe rate
	rate       float64 // the soak's paced rate
	minutes    []soakMinute
	samples    []soakSample
	trickleErr int // "trickle write failed" lines in the server's log
	endAvg     string
}

// runSoak starts one Portcullis forward-auth server (on an external etcd,
// or its embedded one) writing a trickle of grants and tokens through its
// own authz service, pins it and the generator to separate CPUs, finds the
// peak the paced generator sustains, then holds opts.soakLoad of it for
// opts.soak in one-minute phases, sampling memory, goroutines and open
// files every opts.soakInterval. It returns what it measured so far even
// with an error.
func runSoak(ctx context.Context, opts options) (*soakReport, error) {
	rep := &soakReport{started: time.Now(), machine: readMachine(), opts: opts}
	defer func() { rep.endAvg = readMachine().loadAvg }()
	pin, err := opts.soakPin.plan()
	if err != nil {
		return rep, err
	}
	rep.pin = pin
	if pin.on() {
		restore, err := pinSelf(pin.gen)
		if err != nil {
			return rep, fmt.Errorf("pin the generator: %w", err)
		}
		defer func() {
			if err := restore(); err != nil {
				progress("soak: restore this process's CPU affinity: %v", err)
			}
		}()
		progress("soak: server on CPUs %s; generator (GOMAXPROCS %d) and etcd on CPUs %s", pin.server, len(pin.gen), pin.gen)
	} else {
		progress("soak: not pinning CPUs: %s", pin.why)
	}

	args := []string{"-kind", kindPortcullis, "-metrics"}
	var etcd *etcdProcess
	if opts.soakStore == storeExternal {
		progress("soak: starting etcd")
		if etcd, err = startEtcdOn(ctx, pin.gen); err != nil {
			return rep, err
		}
		defer etcd.stop()
		args = append(args, "-etcd", etcd.endpoint, "-seed")
	}
	if opts.soakTrickle > 0 {
		args = append(args, "-trickle", opts.soakTrickle.String())
	}
	px, err := startChildOn(ctx, pin.server, keyForward, args...)
	if err != nil {
		return rep, err
	}
	defer px.stop()
	if m, err := scrapeMetrics(ctx, px.metrics, "go_sched_gomaxprocs_threads"); err == nil {
		rep.gomaxprocs = int64(m["go_sched_gomaxprocs_threads"])
	}
	req := request{method: "GET", path: forwardPath + "?permission=" + url.QueryEscape(allowPermission), header: []string{"Authorization: Bearer " + px.token}}
	nop := func() {}
	if opts.warmup > 0 {
		if _, err := (goGen{}).run(ctx, px.addr, req, opts.conns, opts.warmup, nop, nop); err != nil {
			return rep, err
		}
	}
	m := meter{server: px.pid(), cpus: pin.server}
	if etcd != nil {
		m.etcd = etcd.pid()
	}
	if err := findPeak(ctx, opts, m, px.addr, req, rep); err != nil {
		return rep, err
	}
	rep.rate = opts.soakLoad * rep.peak

	sctx, stopSampling := context.WithCancel(ctx)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		sampErr error
	)
	begin := time.Now()
	sample := func(ctx context.Context, idle bool) {
		s := soakSample{at: time.Since(begin), idle: idle}
		err := s.read(ctx, px, etcd)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if sampErr == nil && ctx.Err() == nil {
				sampErr = err
			}
			return
		}
		rep.samples = append(rep.samples, s)
	}
	sample(ctx, true)
	wg.Go(func() {
		tick := time.NewTicker(opts.soakInterval)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
				sample(sctx, false)
			}
		}
	})
	defer func() {
		stopSampling()
		wg.Wait()
	}()
	progress("soak: %s at %.0f req/s (%.0f%% of the paced peak %.0f req/s), writes every %s", opts.soak, rep.rate, 100*opts.soakLoad, rep.peak, opts.soakTrickle)
	for time.Since(begin) < opts.soak {
		d := min(time.Minute, opts.soak-time.Since(begin))
		if d < time.Second {
			break
		}
		p, u, err := m.run(ctx, goGen{rate: rep.rate}, px.addr, req, opts.conns, d)
		if err != nil {
			return rep, err
		}
		rep.minutes = append(rep.minutes, soakMinute{p: p, cpu: u})
		progress("soak: minute %d: %.0f req/s, p99 %s ms, CPU: server %.0f%%, generator %.0f%%, others on the server's CPUs %.0f%%",
			len(rep.minutes), p.rps(), ms(p.p99), pct(u.server, p.elapsed), pct(u.gen, p.elapsed), pct(u.others, p.elapsed))
		if p.non200 > 0 || p.errors > 0 {
			return rep, fmt.Errorf("soak minute %d: %d not 200, %d failed\n%s", len(rep.minutes), p.non200, p.errors, px.log.String())
		}
	}
	stopSampling()
	wg.Wait()
	time.Sleep(time.Second) // let the closed connections go
	sample(ctx, true)       // the final reading, after the load
	rep.trickleErr = strings.Count(px.log.String(), "trickle write failed")
	mu.Lock()
	defer mu.Unlock()
	if sampErr != nil {
		return rep, fmt.Errorf("sample: %w", sampErr)
	}
	if rep.trickleErr > 0 {
		return rep, fmt.Errorf("%d trickle writes failed:\n%s", rep.trickleErr, px.log.String())
	}
	return rep, nil
}

// findPeak sets rep.ceiling, rep.probes and rep.peak. The closed loop
// gives the ceiling: with one request in flight per connection nothing
// paced on the same connections can exceed it. But pacing costs the
// generator more CPU per request (a timer and a park per request instead
// of a write right after each read), so the peak is the highest rate, from
// the ceiling down in steps of 10%, that the paced generator itself
// achieves (97% of it) with p99 within -soak-peak-p99, latency counted
// from when each request was due, so a probe that falls behind fails.
func findPeak(ctx context.Context, opts options, m meter, addr string, req request, rep *soakReport) error {
	progress("soak: ceiling, %s closed loop", opts.soakProbe)
	var err error
	if rep.ceiling, rep.ceilingCPU, err = m.run(ctx, goGen{}, addr, req, opts.conns, opts.soakProbe); err != nil {
		return err
	}
	if c := rep.ceiling; c.non200 > 0 || c.errors > 0 || c.requests == 0 {
		return fmt.Errorf("ceiling: %d requests, %d not 200, %d failed", c.requests, c.non200, c.errors)
	}
	r := rep.ceiling.rps()
	for range maxProbes {
		p, u, err := m.run(ctx, goGen{rate: r}, addr, req, opts.conns, opts.soakProbe)
		if err != nil {
			return err
		}
		if p.non200 > 0 || p.errors > 0 {
			return fmt.Errorf("probe at %.0f req/s: %d not 200, %d failed", r, p.non200, p.errors)
		}
		pr := probe{rate: r, p: p, cpu: u, sustained: p.rps() >= probeAchieved*r && p.p99 <= opts.soakPeakP99}
		rep.probes = append(rep.probes, pr)
		progress("soak: probe at %.0f req/s: achieved %.0f, p99 %s ms, CPU: server %.0f%%, generator %.0f%%, others on the server's CPUs %.0f%%: sustained %v",
			r, p.rps(), ms(p.p99), pct(u.server, p.elapsed), pct(u.gen, p.elapsed), pct(u.others, p.elapsed), pr.sustained)
		if pr.sustained {
			rep.peak = r
			return nil
		}
		r *= probeStep
	}
	var others, wall time.Duration
	for _, p := range rep.probes {
		others, wall = others+p.cpu.others, wall+p.p.elapsed
	}
	return fmt.Errorf("no paced probe from %.0f down to %.0f req/s achieved %.0f%% of its rate with p99 ≤ %s; other processes took %.0f%% of the server's CPUs meanwhile: free the CPUs (or raise -soak-peak-p99)",
		rep.probes[0].rate, rep.probes[len(rep.probes)-1].rate, 100*probeAchieved, opts.soakPeakP99, pct(others, wall))
}

// read takes one sample of the Portcullis child and of etcd (nil: embedded).
func (s *soakSample) read(ctx context.Context, px *child, etcd *etcdProcess) error {
	var err error
	if s.rss, err = rss(px.pid()); err != nil {
		return err
	}
	if etcd != nil {
		if s.etcdRSS, err = rss(etcd.pid()); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
	}
	m, err := scrapeMetrics(ctx, px.metrics, "go_memstats_heap_inuse_bytes", "go_memstats_next_gc_bytes", "go_goroutines", "process_open_fds")
	if err != nil {
		return err
	}
	s.heap, s.heapGoal = int64(m["go_memstats_heap_inuse_bytes"]), int64(m["go_memstats_next_gc_bytes"])
	s.goroutines, s.openFDs = int64(m["go_goroutines"]), int64(m["process_open_fds"])
	return nil
}

// scrapeMetrics reads the named unlabelled metrics from a /metrics
// listener (the Prometheus text format, one "name value" line each); every
// name must be there.
func scrapeMetrics(ctx context.Context, addr string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape metrics: %s", resp.Status)
	}
	out := make(map[string]float64, len(names))
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %q", name, value)
		}
		out[name] = f
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("scrape metrics: %s missing", n)
		}
	}
	return out, nil
}

// drift compares the mean of the first and the last quarter of xs (at
// least one value each).
func drift(xs []float64) (first, last float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	q := max(1, len(xs)/4)
	mean := func(v []float64) float64 {
		var s float64
		for _, x := range v {
			s += x
		}
		return s / float64(len(v))
	}
	return mean(xs[:q]), mean(xs[len(xs)-q:])
}

// slope is the least-squares slope of ys over xs (0 with fewer than two
// distinct xs).
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx, sy, sxx, sxy = sx+xs[i], sy+ys[i], sxx+xs[i]*xs[i], sxy+xs[i]*ys[i]
	}
	d := n*sxx - sx*sx
	if len(xs) < 2 || d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// p99Spread is the per-minute p99 in ms: min, median, max.
func (r *soakReport) p99Spread() (lo, med, hi float64) {
	var v []float64
	for _, m := range r.minutes {
		v = append(v, float64(m.p.p99)/float64(time.Millisecond))
	}
	if len(v) == 0 {
		return 0, 0, 0
	}
	return slices.Min(v), medianF(v), slices.Max(v)
}

func verdict(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return "**" + no + "**"
}

func (r *soakReport) markdown(w io.Writer) {
	m, o := r.machine, r.opts
	fmt.Fprintf(w, "## Portcullis soak, %s\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s, %d CPUs, Linux %s, %s, load average at start %s, at the end %s.\n\n", m.cpuModel, m.cpus, m.kernel, runtime.Version(), m.loadAvg, r.endAvg)
	store := "its embedded etcd (its RSS includes etcd's)"
	if o.soakStore == storeExternal {
		store = "an external etcd process (RSS of each reported apart)"
	}
	where := "CPUs not pinned (" + r.pin.why + ")"
	if r.pin.on() {
		etcdOn := ""
		if o.soakStore == storeExternal {
			etcdOn = " and etcd"
		}
		where = fmt.Sprintf("the server pinned to CPUs %s (GOMAXPROCS %d), the generator%s to CPUs %s (checked in /proc)", r.pin.server, r.gomaxprocs, etcdOn, r.pin.gen)
	}
	fmt.Fprintf(w, "One Portcullis forward-auth process on %s; %s; go generator, %d connections.\n\n", store, where, o.conns)

	fmt.Fprintf(w, "Peak: the closed loop for %s is the ceiling; then paced probes of %s from there down in steps of 10%%, "+
		"sustained = %.0f%% of the rate achieved with p99 ≤ %s (latency from when each request was due). "+
		"CPU in %% of one CPU; \"others\" is what other processes took of the server's CPUs (of all CPUs when not pinned):\n\n",
		o.soakProbe, o.soakProbe, 100*probeAchieved, o.soakPeakP99)
	fmt.Fprintln(w, "| run | achieved req/s | p50 ms | p99 ms | server CPU % | generator CPU % | others % | sustained |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---|")
	row := func(name string, p phase, u cpuUse, verdict string) {
		fmt.Fprintf(w, "| %s | %.0f | %s | %s | %.0f | %.0f | %.0f | %s |\n", name, p.rps(), ms(p.p50), ms(p.p99),
			pct(u.server, p.elapsed), pct(u.gen, p.elapsed), pct(u.others, p.elapsed), verdict)
	}
	row("closed loop (ceiling)", r.ceiling, r.ceilingCPU, "–")
	for _, p := range r.probes {
		row(fmt.Sprintf("paced at %.0f", p.rate), p.p, p.cpu, fmt.Sprint(p.sustained))
	}
	fmt.Fprintln(w)
	if r.peak == 0 {
		return
	}
	fmt.Fprintf(w, "Soak: %s paced at %.0f req/s (%.0f%% of the paced peak %.0f req/s), while the server writes through its authz service every %s "+
		"(a grant added, removed; an API token issued, revoked; %d write errors). Samples every %s: RSS from /proc, heap in use, goroutines and open files from its /metrics.\n\n",
		o.soak, r.rate, 100*o.soakLoad, r.peak, o.soakTrickle, r.trickleErr, o.soakInterval)

	if len(r.minutes) > 0 {
		fmt.Fprintln(w, "| minute | req/s | p50 ms | p99 ms | server CPU % | generator CPU % | etcd CPU % | others % |")
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|")
		for i, mn := range r.minutes {
			u, el := mn.cpu, mn.p.elapsed
			etcdCPU := "–" // inside the server
			if o.soakStore == storeExternal {
				etcdCPU = fmt.Sprintf("%.0f", pct(u.etcd, el))
			}
			fmt.Fprintf(w, "| %d | %.0f | %s | %s | %.0f | %.0f | %s | %.0f |\n", i+1, mn.p.rps(), ms(mn.p.p50), ms(mn.p.p99),
				pct(u.server, el), pct(u.gen, el), etcdCPU, pct(u.others, el))
		}
		lo, med, hi := r.p99Spread()
		var others, wall time.Duration
		for _, mn := range r.minutes {
			others, wall = others+mn.cpu.others, wall+mn.p.elapsed
		}
		if p := pct(others, wall); p > 10 {
			fmt.Fprintf(w, "\n**Other processes took %.0f%% of the server's CPUs over the soak**: latency and peak here reflect the neighbours as much as Portcullis; repeat on an idle machine before quoting them.\n", p)
		}
		fmt.Fprintf(w, "\n- p99 per minute: min %.2f ms, median %.2f ms, max %.2f ms; max/min ×%.2f, max/median ×%.2f: %s (stable: max/median ≤ %.1f).\n",
			lo, med, hi, hi/max(lo, 1e-9), hi/max(med, 1e-9), verdict(hi <= stableRatio*med, "stable", "not stable"), stableRatio)
	}
	if len(r.samples) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| at | heap in use MiB | GC heap goal MiB | Portcullis RSS MiB | etcd RSS MiB | goroutines | open fds |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
		var at, heap, goal, rs, es, gs, fs []float64
		for _, s := range r.samples {
			when := s.at.Round(time.Second).String()
			if s.idle {
				when += " (idle)"
			} else {
				at = append(at, s.at.Minutes())
				heap, goal = append(heap, float64(s.heap)/(1<<20)), append(goal, float64(s.heapGoal)/(1<<20))
				rs, es = append(rs, float64(s.rss)/(1<<20)), append(es, float64(s.etcdRSS)/(1<<20))
				gs, fs = append(gs, float64(s.goroutines)), append(fs, float64(s.openFDs))
			}
			etcdRSS := "–"
			if o.soakStore == storeExternal {
				etcdRSS = mib(s.etcdRSS)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %d | %d |\n", when, mib(s.heap), mib(s.heapGoal), mib(s.rss), etcdRSS, s.goroutines, s.openFDs)
		}
		fmt.Fprintf(w, "\nUnder load (%d samples), mean of the first quarter → mean of the last quarter, and the least-squares slope; flat: last ≤ ×%.2f of first.\n\n", len(at), flatRatio)
		series := []struct {
			name string
			v    []float64
			note string
		}{
			{"heap in use MiB", heap, " (a sawtooth between GCs: sampled at random points of it)"},
			{"GC heap goal MiB", goal, " (twice the heap live after the last GC at GOGC 100: the retained memory)"},
			{"Portcullis RSS MiB", rs, ""},
			{"etcd RSS MiB", es, " (the store, not Portcullis: informational)"},
			{"goroutines", gs, ""},
			{"open fds", fs, ""},
		}
		for _, x := range series {
			if x.name == "etcd RSS MiB" && o.soakStore != storeExternal {
				continue
			}
			a, b := drift(x.v)
			ok := b <= flatRatio*a
			fmt.Fprintf(w, "- %s: %.1f → %.1f (×%.2f), %+.2f per minute: %s%s\n", x.name, a, b, b/max(a, 1e-9), slope(at, x.v), verdict(ok, "flat", "growing"), x.note)
		}
		fmt.Fprintln(w)
	}
}

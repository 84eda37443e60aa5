package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// machineInfo describes where the figures were taken.
type machineInfo struct {
	cpuModel, kernel, loadAvg string
	cpus                      int
}

func readMachine() machineInfo {
	m := machineInfo{cpus: runtime.NumCPU(), cpuModel: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.cpuModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.loadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

// rps is requests per second of a phase.
func (p phase) rps() float64 {
	if p.elapsed <= 0 {
		return 0
	}
	return float64(p.requests) / p.elapsed.Seconds()
}

func (t *target) requests() int64 {
	var n int64
	for _, p := range t.phases {
		n += p.requests
	}
	return n
}

// rps is the target's throughput over all its rounds.
func (t *target) rps() float64 {
	var el time.Duration
	for _, p := range t.phases {
		el += p.elapsed
	}
	if el <= 0 {
		return 0
	}
	return float64(t.requests()) / el.Seconds()
}

// latency is the p50 and p99 over all rounds (merged histograms), or the
// median of the rounds' when the generator reports only percentiles (wrk).
func (t *target) latency() (p50, p99 time.Duration) {
	var h histogram
	merged := true
	for _, p := range t.phases {
		if p.hist == nil {
			merged = false
			break
		}
		h.merge(p.hist)
	}
	if merged && len(t.phases) > 0 {
		return h.quantile(0.50), h.quantile(0.99)
	}
	return time.Duration(median(t.phases, func(p phase) float64 { return float64(p.p50) })), time.Duration(median(t.phases, func(p phase) float64 { return float64(p.p99) }))
}

func median[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// perRequest is CPU time per completed request in microseconds.
func perRequest(cpu []time.Duration, requests int64) float64 {
	var sum time.Duration
	for _, c := range cpu {
		sum += c
	}
	if requests == 0 {
		return 0
	}
	return float64(sum.Microseconds()) / float64(requests)
}

func (t *target) genCPU() []time.Duration {
	out := make([]time.Duration, len(t.phases))
	for i, p := range t.phases {
		out[i] = p.genCPU
	}
	return out
}

// pairs returns f applied to the phases of a and b from the same round.
func pairs(a, b *target, f func(pa, pb phase) float64) []float64 {
	return pairsOf(a.phases, b.phases, f)
}

func pairsOf(a, b []phase, f func(pa, pb phase) float64) []float64 {
	n := min(len(a), len(b))
	out := make([]float64, n)
	for i := range n {
		out[i] = f(a[i], b[i])
	}
	return out
}

// pacedLatency is the p50 and p99 over all fixed-rate rounds.
func (t *target) pacedLatency() (p50, p99 time.Duration) {
	var h histogram
	for _, p := range t.paced {
		h.merge(p.hist)
	}
	return h.quantile(0.50), h.quantile(0.99)
}

func addedP99(pa, pb phase) float64 { return float64(pa.p99-pb.p99) / float64(time.Millisecond) }

func medianF(v []float64) float64 {
	return median(v, func(x float64) float64 { return x })
}

// ratio is one line of the ratio table.
type ratio struct {
	name     string
	perRound []float64
	overall  float64
	target   string
	met      *bool // nil: informational
	unit     string
}

func (r *report) ratios() []ratio {
	up, echo, fwd, std, px := r.target(keyUpstream), r.target(keyEcho), r.target(keyForward), r.target(keyStdProxy), r.target(keyProxy)
	if up == nil || echo == nil || fwd == nil || std == nil || px == nil || len(fwd.phases) == 0 {
		return nil
	}
	rpsRatio := func(pa, pb phase) float64 { return pa.rps() / pb.rps() }
	cpuRatio := func(a, b *target) float64 {
		return perRequest(a.cpu, a.requests()) / perRequest(b.cpu, b.requests())
	}
	cpuPerRound := func(a, b *target) []float64 {
		n := min(len(a.phases), len(b.phases))
		out := make([]float64, n)
		for i := range n {
			out[i] = perRequest(a.cpu[i:i+1], a.phases[i].requests) / perRequest(b.cpu[i:i+1], b.phases[i].requests)
		}
		return out
	}
	_, pxP99 := px.latency()
	_, stdP99 := std.latency()
	atLeast := func(v, min float64) *bool { ok := v >= min; return &ok }
	fwdEcho := pairs(fwd, echo, rpsRatio)
	pxStd := pairs(px, std, rpsRatio)
	out := []ratio{
		{name: "forward-auth / A bare echo, req/s", perRound: fwdEcho, overall: fwd.rps() / echo.rps(), target: "≥ 0.85", met: atLeast(medianF(fwdEcho), 0.85)},
		{name: "proxy / B tuned bare proxy, req/s", perRound: pxStd, overall: px.rps() / std.rps(), target: "≥ 0.90", met: atLeast(medianF(pxStd), 0.90)},
	}
	if len(px.paced) > 0 && len(std.paced) > 0 {
		added := pairsOf(px.paced, std.paced, addedP99)
		_, a := px.pacedLatency()
		_, b := std.pacedLatency()
		ok := medianF(added) <= 1
		out = append(out, ratio{name: fmt.Sprintf("proxy p99 − B p99 at %.0f req/s", r.rate), perRound: added, overall: float64(a-b) / float64(time.Millisecond), target: "≤ 1 ms", met: &ok, unit: " ms"})
	}
	if len(fwd.paced) > 0 && len(echo.paced) > 0 {
		added := pairsOf(fwd.paced, echo.paced, addedP99)
		_, a := fwd.pacedLatency()
		_, b := echo.pacedLatency()
		out = append(out, ratio{name: fmt.Sprintf("forward-auth p99 − A p99 at %.0f req/s", r.rate), perRound: added, overall: float64(a-b) / float64(time.Millisecond), target: "(latency)", unit: " ms"})
	}
	return append(out, []ratio{
		{name: "proxy p99 − B p99 at saturation (mostly queueing)", perRound: pairs(px, std, addedP99), overall: float64(pxP99-stdP99) / float64(time.Millisecond), target: "(queueing)", unit: " ms"},
		{name: "forward-auth / direct upstream, req/s", perRound: pairs(fwd, up, rpsRatio), overall: fwd.rps() / up.rps(), target: "(scale)"},
		{name: "proxy / direct upstream, req/s", perRound: pairs(px, up, rpsRatio), overall: px.rps() / up.rps(), target: "(scale)"},
		{name: "B tuned bare proxy / direct upstream, req/s", perRound: pairs(std, up, rpsRatio), overall: std.rps() / up.rps(), target: "(scale)"},
		{name: "forward-auth / A, server CPU µs per request", perRound: cpuPerRound(fwd, echo), overall: cpuRatio(fwd, echo), target: "(cost)"},
		{name: "proxy / B, server CPU µs per request", perRound: cpuPerRound(px, std), overall: cpuRatio(px, std), target: "(cost)"},
	}...)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// markdown writes the report.
func (r *report) markdown(w io.Writer) {
	o := r.opts
	m := r.machine
	fmt.Fprintf(w, "## Portcullis load harness, %s\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s, %d CPUs, Linux %s, load average at start %s; %s. "+
		"The machine is shared: absolute figures drift, compare the ratios (each taken within one round).\n\n",
		m.cpuModel, m.cpus, m.kernel, m.loadAvg, runtime.Version())
	fmt.Fprintf(w, "Load: generator `%s`, %d keep-alive connections, one request in flight on each; %d interleaved rounds of %s per target (order reversed every other round) after %s of warm-up. "+
		"Every server is its own process; CPU is utime+stime from /proc/<pid>/stat over the measured window, divided by the requests completed in it.\n\n",
		o.gen.name(), o.conns, o.rounds, o.duration/time.Duration(o.rounds), o.warmup)
	if o.minimalBaselines {
		fmt.Fprint(w, "Baselines A and B get a minimal request (no query, no Authorization header; `-baseline-request minimal`), not the Portcullis targets' request.\n\n")
	} else {
		fmt.Fprint(w, "Baselines A and B get byte for byte the request of the Portcullis target they are compared with (query and Authorization header included).\n\n")
	}

	if len(r.targets) > 0 && len(r.targets[0].phases) > 0 {
		fmt.Fprintln(w, "| target | req/s | req/s per round | p50 ms | p99 ms | server CPU µs/req | upstream CPU µs/req | load-gen CPU µs/req | server RSS MiB |")
		fmt.Fprintln(w, "|---|---:|---|---:|---:|---:|---:|---:|---:|")
		for _, t := range r.targets {
			rounds := make([]string, len(t.phases))
			for i, p := range t.phases {
				rounds[i] = fmt.Sprintf("%.0f", p.rps())
			}
			p50, p99 := t.latency()
			upCPU := "–"
			if t.upstream != nil {
				upCPU = fmt.Sprintf("%.1f", perRequest(t.upCPU, t.requests()))
			}
			fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %.1f | %s | %.1f | %s |\n", t.name, t.rps(), strings.Join(rounds, ", "), ms(p50), ms(p99),
				perRequest(t.cpu, t.requests()), upCPU, perRequest(t.genCPU(), t.requests()), mib(t.rss))
		}
		fmt.Fprintln(w)
	}

	if len(r.targets) > 0 && len(r.targets[0].paced) > 0 {
		fmt.Fprintf(w, "Latency below saturation: every target paced to %.0f req/s in all (go generator, same connections, latency counted from when each request was due):\n\n", r.rate)
		fmt.Fprintln(w, "| target | achieved req/s | p50 ms | p99 ms | p99 ms per round |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---|")
		for _, t := range r.targets {
			var n int64
			var el time.Duration
			rounds := make([]string, len(t.paced))
			for i, p := range t.paced {
				n += p.requests
				el += p.elapsed
				rounds[i] = ms(p.p99)
			}
			p50, p99 := t.pacedLatency()
			fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s |\n", t.name, float64(n)/el.Seconds(), ms(p50), ms(p99), strings.Join(rounds, ", "))
		}
		fmt.Fprintln(w)
	}

	if rs := r.ratios(); len(rs) > 0 {
		fmt.Fprintln(w, "| ratio | median of rounds | over all rounds | per round | target | verdict |")
		fmt.Fprintln(w, "|---|---:|---:|---|---|---|")
		for _, x := range rs {
			per := make([]string, len(x.perRound))
			for i, v := range x.perRound {
				per[i] = fmt.Sprintf("%.2f", v)
			}
			verdict := "–"
			if x.met != nil {
				verdict = "**missed**"
				if *x.met {
					verdict = "met"
				}
			}
			sign := ""
			if x.unit != "" && medianF(x.perRound) >= 0 {
				sign = "+"
			}
			fmt.Fprintf(w, "| %s | %s%.2f%s | %.2f%s | %s | %s | %s |\n", x.name, sign, medianF(x.perRound), x.unit, x.overall, x.unit, strings.Join(per, ", "), x.target, verdict)
		}
		fmt.Fprintln(w)
	}

	if len(r.checks) > 0 {
		failed := 0
		for _, c := range r.checks {
			if !c.ok() {
				failed++
				fmt.Fprintf(w, "- correctness check FAILED: %s: %s: got %d, want %d\n", c.target, c.what, c.got, c.want)
			}
		}
		fmt.Fprintf(w, "Correctness checks before the load: %d of %d passed (allowed requests get 200; no, unknown, foreign or insufficient credentials get 401/403). Under load every response was checked to be 200.\n\n", len(r.checks)-failed, len(r.checks))
	}

	if s := r.soak; s != nil && len(s.at) > 0 {
		r.soakMarkdown(w, s)
	}
}

func (r *report) soakMarkdown(w io.Writer, s *soakResult) {
	fmt.Fprintf(w, "### Soak: %s, forward-auth and proxy driven in alternating %s slices, %d requests\n\n", s.duration, s.interval, s.requests)
	fmt.Fprintln(w, "| t | forward-auth RSS MiB | proxy RSS MiB |")
	fmt.Fprintln(w, "|---:|---:|---:|")
	for i, at := range s.at {
		fmt.Fprintf(w, "| %s | %s | %s |\n", at.Round(time.Second), mib(s.fwd[i]), mib(s.px[i]))
	}
	// First against last minute; for a soak shorter than 3 minutes, the
	// first against the last third.
	win := min(time.Minute, s.duration/3)
	fmt.Fprintln(w)
	for _, x := range []struct {
		name string
		v    []int64
	}{{"forward-auth", s.fwd}, {"proxy", s.px}} {
		first, last := s.window(x.v, win)
		growth := (last - first) / first
		verdict := "flat"
		if growth > 0.10 {
			verdict = "**growing**"
		}
		fmt.Fprintf(w, "- %s: first %s average %.1f MiB, last %s average %.1f MiB (%+.1f%%): %s (flat: at most +10%%).\n",
			x.name, win, first/(1<<20), win, last/(1<<20), 100*growth, verdict)
	}
	fmt.Fprintln(w)
}

// window averages the samples in the first and in the last win.
func (s *soakResult) window(v []int64, win time.Duration) (first, last float64) {
	var nf, nl int
	end := s.at[len(s.at)-1]
	for i, at := range s.at {
		if at <= win || i == 0 {
			first += float64(v[i])
			nf++
		}
		if at >= end-win || i == len(s.at)-1 {
			last += float64(v[i])
			nl++
		}
	}
	return first / float64(nf), last / float64(nl)
}

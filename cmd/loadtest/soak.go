package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// soakSample is one reading of the Portcullis process during the soak.
type soakSample struct {
	at         time.Duration
	rss        int64
	goroutines int64 // go_goroutines from its /metrics
	openFDs    int64 // process_open_fds from its /metrics
	idle       bool  // taken before or after the load, not under it
}

// soakReport is what the soak mode measured.
type soakReport struct {
	started    time.Time
	machine    machineInfo
	opts       options
	peak       phase   // closed loop, before the soak
	rate       float64 // the soak's paced rate
	minutes    []phase // paced, one per minute (the last may be shorter)
	samples    []soakSample
	trickleErr int // "trickle write failed" lines in the server's log
	endAvg     string
}

// runSoak starts one Portcullis forward-auth server writing a trickle of
// grants and tokens through its own authz service, measures its peak
// throughput (closed loop, the go generator), then holds soakLoad of it
// for opts.soak, paced, in one-minute phases, sampling RSS, goroutines and
// open files every opts.soakInterval.
func runSoak(ctx context.Context, opts options) (*soakReport, error) {
	rep := &soakReport{started: time.Now(), machine: readMachine(), opts: opts}
	args := []string{"-kind", kindPortcullis, "-metrics"}
	if opts.soakTrickle > 0 {
		args = append(args, "-trickle", opts.soakTrickle.String())
	}
	px, err := startChild(ctx, keyForward, args...)
	if err != nil {
		return nil, err
	}
	defer px.stop()
	req := request{method: "GET", path: forwardPath + "?permission=" + url.QueryEscape(allowPermission), header: []string{"Authorization: Bearer " + px.token}}
	nop := func() {}
	if opts.warmup > 0 {
		if _, err := (goGen{}).run(ctx, px.addr, req, opts.conns, opts.warmup, nop, nop); err != nil {
			return rep, err
		}
	}
	progress("soak: peak throughput, %s closed loop", 10*time.Second)
	if rep.peak, err = (goGen{}).run(ctx, px.addr, req, opts.conns, 10*time.Second, nop, nop); err != nil {
		return rep, err
	}
	if rep.peak.non200 > 0 || rep.peak.errors > 0 || rep.peak.requests == 0 {
		return rep, fmt.Errorf("peak: %d requests, %d not 200, %d failed", rep.peak.requests, rep.peak.non200, rep.peak.errors)
	}
	rep.rate = opts.soakLoad * rep.peak.rps()

	sctx, stopSampling := context.WithCancel(ctx)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		sampErr error
	)
	begin := time.Now()
	sample := func(ctx context.Context, idle bool) {
		s := soakSample{at: time.Since(begin), idle: idle}
		var err error
		if s.rss, err = rss(px.pid()); err == nil {
			s.goroutines, s.openFDs, err = scrapeProcess(ctx, px.metrics)
		}
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
	progress("soak: %s at %.0f req/s (%.0f%% of the peak %.0f req/s), writes every %s", opts.soak, rep.rate, 100*opts.soakLoad, rep.peak.rps(), opts.soakTrickle)
	for time.Since(begin) < opts.soak {
		d := min(time.Minute, opts.soak-time.Since(begin))
		if d < time.Second {
			break
		}
		p, err := goGen{rate: rep.rate}.run(ctx, px.addr, req, opts.conns, d, nop, nop)
		if err != nil {
			return rep, err
		}
		rep.minutes = append(rep.minutes, p)
		progress("soak: minute %d: %.0f req/s, p99 %s ms", len(rep.minutes), p.rps(), ms(p.p99))
		if p.non200 > 0 || p.errors > 0 {
			return rep, fmt.Errorf("soak minute %d: %d not 200, %d failed\n%s", len(rep.minutes), p.non200, p.errors, px.log.String())
		}
	}
	stopSampling()
	wg.Wait()
	time.Sleep(time.Second) // let the closed connections go
	sample(ctx, true)       // the final reading, after the load
	rep.trickleErr = strings.Count(px.log.String(), "trickle write failed")
	rep.endAvg = readMachine().loadAvg
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

// scrapeProcess reads go_goroutines and process_open_fds from a /metrics
// listener (the Prometheus text format, one "name value" line each).
func scrapeProcess(ctx context.Context, addr string) (goroutines, fds int64, err error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("scrape metrics: %s", resp.Status)
	}
	found := 0
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var dst *int64
		switch name {
		case "go_goroutines":
			dst = &goroutines
		case "process_open_fds":
			dst = &fds
		default:
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return 0, 0, fmt.Errorf("metric %s: %q", name, value)
		}
		*dst = int64(f)
		found++
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("scrape metrics: go_goroutines or process_open_fds missing")
	}
	return goroutines, fds, nil
}

// drift compares the mean of the first and the last quarter of xs (at
// least one value each): last/first.
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

func (r *soakReport) markdown(w io.Writer) {
	m := r.machine
	fmt.Fprintf(w, "## Portcullis soak, %s\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s, %d CPUs, Linux %s, load average at start %s, at the end %s.\n\n", m.cpuModel, m.cpus, m.kernel, m.loadAvg, r.endAvg)
	fmt.Fprintf(w, "One Portcullis forward-auth process (embedded etcd), %d connections, go generator. Peak, closed loop for 10s: %.0f req/s "+
		"(p99 %s ms). Soak: %s paced at %.0f req/s (%.0f%% of peak, latency counted from when each request was due), "+
		"while the server writes through its authz service every %s (a grant added, removed; an API token issued, revoked; %d write errors). "+
		"RSS from /proc, goroutines and open files from its /metrics every %s.\n\n",
		r.opts.conns, r.peak.rps(), ms(r.peak.p99), r.opts.soak, r.rate, 100*r.opts.soakLoad, r.opts.soakTrickle, r.trickleErr, r.opts.soakInterval)
	if len(r.minutes) > 0 {
		fmt.Fprintln(w, "| minute | req/s | p50 ms | p99 ms |")
		fmt.Fprintln(w, "|---:|---:|---:|---:|")
		var p99s []float64
		for i, p := range r.minutes {
			fmt.Fprintf(w, "| %d | %.0f | %s | %s |\n", i+1, p.rps(), ms(p.p50), ms(p.p99))
			p99s = append(p99s, float64(p.p99)/float64(time.Millisecond))
		}
		lo, hi := p99s[0], p99s[0]
		for _, v := range p99s {
			lo, hi = min(lo, v), max(hi, v)
		}
		fmt.Fprintf(w, "\nPer-minute p99: min %.2f ms, median %.2f ms, max %.2f ms.\n\n", lo, medianF(p99s), hi)
	}
	if len(r.samples) > 0 {
		fmt.Fprintln(w, "| at | RSS MiB | goroutines | open fds |")
		fmt.Fprintln(w, "|---|---:|---:|---:|")
		var rs, gs, fs []float64
		for _, s := range r.samples {
			at := s.at.Round(time.Second).String()
			if s.idle {
				at += " (idle)"
			} else {
				rs, gs, fs = append(rs, float64(s.rss)/(1<<20)), append(gs, float64(s.goroutines)), append(fs, float64(s.openFDs))
			}
			fmt.Fprintf(w, "| %s | %s | %d | %d |\n", at, mib(s.rss), s.goroutines, s.openFDs)
		}
		f := func(name string, v []float64) {
			a, b := drift(v)
			fmt.Fprintf(w, "- %s under load: mean of the first quarter of samples %.1f, of the last quarter %.1f (×%.2f)\n", name, a, b, b/max(a, 1e-9))
		}
		fmt.Fprintln(w)
		f("RSS MiB", rs)
		f("goroutines", gs)
		f("open fds", fs)
		fmt.Fprintln(w)
	}
}

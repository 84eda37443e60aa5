package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

type options struct {
	duration     time.Duration
	rounds       int
	warmup       time.Duration
	conns        int
	gen          generator
	soak         time.Duration
	soakInterval time.Duration
	profileDir   string
	// latency: paced phases at latencyRate req/s (0: a quarter of the
	// tuned bare proxy's throughput), latency in all per target; 0 turns them off.
	latency     time.Duration
	latencyRate float64
	// minimalBaselines sends the bare baselines a request without the
	// query and the Authorization header, as runs before 2026-11-29 11:00
	// did (-baseline-request minimal), for comparing with those figures.
	minimalBaselines bool

	mode        string
	scale       scaleOptions
	soakLoad    float64       // soak mode: fraction of peak
	soakTrickle time.Duration // soak mode: write interval
	soakStore   string        // soak mode: storeExternal or storeEmbedded
	soakPin     pinSpec       // soak mode: CPUs of the server and of the generator
	soakProbe   time.Duration // soak mode: the closed-loop ceiling run and each paced probe
	soakPeakP99 time.Duration // soak mode: a paced probe with a higher p99 is not sustained
}

// child is one server process.
type child struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	log     *syncBuffer
	addr    string
	token   string
	metrics string        // the /metrics listener, when started with -metrics
	done    chan struct{} // closed when the process has exited
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// startChild runs this binary in serve-bench mode and waits for its ready
// line.
func startChild(ctx context.Context, name string, args ...string) (*child, error) {
	return startChildOn(ctx, nil, name, args...)
}

// startChildOn is startChild on the CPUs cpus (nil: wherever the
// scheduler likes), started through taskset and checked once it is ready.
func startChildOn(ctx context.Context, cpus cpuSet, name string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := tasksetCommand(cpus, exe, append([]string{serveBenchCmd}, args...)...)
	c := &child{name: name, cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = c.log
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(c.done)
	}()
	line := make(chan []byte, 1)
	go func() {
		b, _ := bufio.NewReader(stdout).ReadBytes('\n')
		line <- b
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case b := <-line:
		var r ready
		if err := json.Unmarshal(b, &r); err != nil || r.Addr == "" {
			c.stop()
			return nil, fmt.Errorf("%s did not start: %q\n%s", name, b, c.log.String())
		}
		c.addr, c.token, c.metrics = r.Addr, r.Token, r.Metrics
		if cpus != nil {
			if err := checkAffinity(c.pid(), cpus); err != nil {
				c.stop()
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		return c, nil
	case <-time.After(90 * time.Second):
		c.stop()
		return nil, fmt.Errorf("%s: not ready after 90s\n%s", name, c.log.String())
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
}

// stop closes the child's stdin (it shuts down cleanly, writing any CPU
// profile) and kills it if it has not exited after 15s.
func (c *child) stop() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 {
		return len(p), nil // enough to diagnose; never grow without bound
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// target is one thing the load drives.
type target struct {
	key, name string
	server    *child
	upstream  *child // the upstream the server forwards to, if any
	req       request

	phases []phase
	paced  []phase         // the fixed-rate latency phases
	cpu    []time.Duration // server CPU per phase
	upCPU  []time.Duration // upstream CPU per phase
	rss    int64           // server RSS after the last round
}

// Target keys.
const (
	keyUpstream = "upstream"
	keyEcho     = "echo"
	keyForward  = "forward"
	keyStdProxy = "stdproxy"
	keyProxy    = "proxy"
)

// report is what run measured.
type report struct {
	opts    options
	started time.Time
	machine machineInfo
	checks  []check
	targets []*target
	rate    float64 // of the paced phases
	soak    *soakResult
}

func (r *report) target(key string) *target {
	for _, t := range r.targets {
		if t.key == key {
			return t
		}
	}
	return nil
}

// run starts the servers, checks that denials deny, drives every target in
// interleaved rounds and, with opts.soak, runs the soak. It returns what it
// measured so far even with an error.
func run(ctx context.Context, opts options) (*report, error) {
	rep := &report{opts: opts, started: time.Now(), machine: readMachine()}
	profile := func(name string) []string {
		if opts.profileDir == "" {
			return nil
		}
		return []string{"-cpuprofile", filepath.Join(opts.profileDir, name+".pprof")}
	}
	if opts.profileDir != "" {
		if err := os.MkdirAll(opts.profileDir, 0o755); err != nil {
			return nil, err
		}
	}
	progress("starting servers")
	up, err := startChild(ctx, keyUpstream, "-kind", kindUpstream)
	if err != nil {
		return nil, err
	}
	children := []*child{up}
	defer func() {
		var wg sync.WaitGroup
		for _, c := range children {
			wg.Go(c.stop)
		}
		wg.Wait()
	}()
	upURL := "http://" + up.addr
	specs := []struct {
		key  string
		args []string
	}{
		{keyEcho, append([]string{"-kind", kindEcho}, profile(keyEcho)...)},
		{keyForward, append([]string{"-kind", kindPortcullis}, profile(keyForward)...)},
		{keyStdProxy, append([]string{"-kind", kindStdProxy, "-upstream", upURL}, profile(keyStdProxy)...)},
		{keyProxy, append([]string{"-kind", kindPortcullis, "-upstream", upURL}, profile(keyProxy)...)},
	}
	started := make([]*child, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		wg.Go(func() { started[i], errs[i] = startChild(ctx, s.key, s.args...) })
	}
	wg.Wait()
	for _, c := range started {
		if c != nil {
			children = append(children, c)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	echoC, fwdC, stdC, pxC := started[0], started[1], started[2], started[3]
	bearer := func(c *child) []string { return []string{"Authorization: Bearer " + c.token} }
	// Each baseline gets byte for byte the request of the Portcullis target
	// it is compared with (the token is meaningless to it): reading the
	// query and the Authorization header is the HTTP server's work, not
	// the decision's, so the ratio isolates what Portcullis adds.
	fwdReq := request{method: "GET", path: forwardPath + "?permission=" + url.QueryEscape(allowPermission), header: bearer(fwdC)}
	pxReq := request{method: "GET", path: proxyAllowPath, header: bearer(pxC)}
	echoReq, stdReq := fwdReq, pxReq
	if opts.minimalBaselines {
		echoReq, stdReq = request{method: "GET", path: forwardPath}, request{method: "GET", path: proxyAllowPath}
	}
	rep.targets = []*target{
		{key: keyUpstream, name: "direct upstream", server: up, req: request{method: "GET", path: "/"}},
		{key: keyEcho, name: "A: bare echo handler", server: echoC, req: echoReq},
		{key: keyForward, name: "Portcullis forward-auth", server: fwdC, req: fwdReq},
		{key: keyStdProxy, name: "B: tuned httputil.ReverseProxy", server: stdC, upstream: up, req: stdReq},
		{key: keyProxy, name: "Portcullis reverse proxy", server: pxC, upstream: up, req: pxReq},
	}

	rep.checks = checkDenials(ctx, rep)
	for _, c := range rep.checks {
		if !c.ok() {
			return rep, fmt.Errorf("correctness check failed: %s: got %d, want %d", c.what, c.got, c.want)
		}
	}

	per := opts.duration / time.Duration(opts.rounds)
	if opts.warmup > 0 {
		progress("warm-up, %s per target", opts.warmup)
		for _, t := range rep.targets {
			if _, err := opts.gen.run(ctx, t.server.addr, t.req, opts.conns, opts.warmup, func() {}, func() {}); err != nil {
				return rep, fmt.Errorf("warm-up %s: %w", t.name, err)
			}
		}
	}
	for r := range opts.rounds {
		order := slices.Clone(rep.targets)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, t := range order {
			progress("round %d/%d: %s, %s", r+1, opts.rounds, t.name, per)
			if err := measure(ctx, opts, t, per); err != nil {
				return rep, err
			}
		}
	}
	for _, t := range rep.targets {
		t.rss, _ = rss(t.server.pid())
	}
	if opts.latency > 0 {
		if err := pacedRounds(ctx, opts, rep); err != nil {
			return rep, err
		}
	}
	if opts.soak > 0 {
		s, err := soak(ctx, opts, rep.target(keyForward), rep.target(keyProxy))
		rep.soak = s
		if err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// measure runs one phase against t, reading the CPU counters of its server
// (and upstream) right around the measured window.
func measure(ctx context.Context, opts options, t *target, d time.Duration) error {
	var s0, s1, u0, u1 time.Duration
	read := func(s, u *time.Duration) func() {
		return func() {
			*s, _ = cpuTime(t.server.pid())
			if t.upstream != nil {
				*u, _ = cpuTime(t.upstream.pid())
			}
		}
	}
	p, err := opts.gen.run(ctx, t.server.addr, t.req, opts.conns, d, read(&s0, &u0), read(&s1, &u1))
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	if p.requests == 0 {
		return fmt.Errorf("%s: no request completed\n%s", t.name, t.server.log.String())
	}
	if p.non200 > 0 || p.errors > 0 {
		return fmt.Errorf("%s: %d responses were not 200 and %d requests failed under load\n%s", t.name, p.non200, p.errors, t.server.log.String())
	}
	t.phases = append(t.phases, p)
	t.cpu = append(t.cpu, s1-s0)
	t.upCPU = append(t.upCPU, u1-u0)
	return nil
}

// pacedRounds measures latency below saturation: every target at the same
// fixed rate, in interleaved rounds like the throughput rounds. At
// saturation a closed-loop load's latency is mostly queueing (64
// connections / throughput, Little's law); at a fixed rate it is what a
// request costs.
func pacedRounds(ctx context.Context, opts options, rep *report) error {
	rep.rate = opts.latencyRate
	if rep.rate <= 0 {
		// A quarter of the slowest baseline's capacity: far enough below
		// saturation that other tenants of a small shared machine do not
		// turn every p99 into a scheduling stall (at half, they did).
		rep.rate = max(100, math.Round(rep.target(keyStdProxy).rps()/4/100)*100)
	}
	gen := goGen{rate: rep.rate}
	per := opts.latency / time.Duration(opts.rounds)
	for r := range opts.rounds {
		order := slices.Clone(rep.targets)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, t := range order {
			progress("latency round %d/%d at %.0f req/s: %s, %s", r+1, opts.rounds, rep.rate, t.name, per)
			p, err := gen.run(ctx, t.server.addr, t.req, opts.conns, per, func() {}, func() {})
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			if p.requests == 0 || p.non200 > 0 || p.errors > 0 {
				return fmt.Errorf("%s at %.0f req/s: %d requests, %d not 200, %d failed", t.name, rep.rate, p.requests, p.non200, p.errors)
			}
			t.paced = append(t.paced, p)
		}
	}
	return nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadtest: "+format+"\n", args...)
}

// check is one correctness probe: denials must deny, allows must allow.
type check struct {
	target, what string
	want, got    int
}

func (c check) ok() bool { return c.want == c.got }

// checkDenials probes every target once outside the load: the allowed
// request the load sends is allowed, and missing, bad or insufficient
// credentials are refused.
func checkDenials(ctx context.Context, rep *report) []check {
	client := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer client.CloseIdleConnections()
	status := func(method, addr, path string, header ...string) int {
		req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, nil)
		if err != nil {
			return -1
		}
		for _, h := range header {
			name, value, _ := strings.Cut(h, ": ")
			req.Header.Add(name, value)
		}
		resp, err := client.Do(req)
		if err != nil {
			return -1
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	var out []check
	for _, t := range rep.targets {
		out = append(out, check{t.key, "the load's request is allowed", http.StatusOK, status(t.req.method, t.server.addr, t.req.path, t.req.header...)})
	}
	fwd, px := rep.target(keyForward), rep.target(keyProxy)
	tok := "Authorization: Bearer " + fwd.server.token
	allowPath := forwardPath + "?permission=" + url.QueryEscape(allowPermission)
	out = append(out,
		check{keyForward, "no credentials", http.StatusUnauthorized, status("GET", fwd.server.addr, allowPath)},
		check{keyForward, "unknown token", http.StatusUnauthorized, status("GET", fwd.server.addr, allowPath, "Authorization: Bearer pct_not-a-token")},
		check{keyForward, "another server's token", http.StatusUnauthorized, status("GET", fwd.server.addr, allowPath, "Authorization: Bearer "+px.server.token)},
		check{keyForward, "insufficient permission", http.StatusForbidden, status("GET", fwd.server.addr, forwardPath+"?permission="+url.QueryEscape(denyPermission), tok)},
	)
	ptok := "Authorization: Bearer " + px.server.token
	out = append(out,
		check{keyProxy, "no credentials", http.StatusUnauthorized, status("GET", px.server.addr, proxyAllowPath)},
		check{keyProxy, "unknown token", http.StatusUnauthorized, status("GET", px.server.addr, proxyAllowPath, "Authorization: Bearer pct_not-a-token")},
		check{keyProxy, "other project", http.StatusForbidden, status("GET", px.server.addr, proxyDenyPath, ptok)},
		check{keyProxy, "DELETE needs admin", http.StatusForbidden, status("DELETE", px.server.addr, proxyAllowPath, ptok)},
	)
	return out
}

// soakResult is Portcullis's RSS sampled through a long run.
type soakResult struct {
	duration time.Duration
	interval time.Duration
	at       []time.Duration
	fwd, px  []int64 // RSS samples of the forward-auth and proxy servers
	requests int64
}

// soak drives the two Portcullis servers in alternating slices of one
// sampling interval each and samples both RSS after every slice.
func soak(ctx context.Context, opts options, fwd, px *target) (*soakResult, error) {
	s := &soakResult{duration: opts.soak, interval: opts.soakInterval}
	progress("soak: %s, RSS every %s", opts.soak, opts.soakInterval)
	begin := time.Now()
	for i := 0; time.Since(begin) < opts.soak; i++ {
		t := fwd
		if i%2 == 1 {
			t = px
		}
		p, err := opts.gen.run(ctx, t.server.addr, t.req, opts.conns, opts.soakInterval, func() {}, func() {})
		if err != nil {
			return s, fmt.Errorf("soak %s: %w", t.name, err)
		}
		if p.non200 > 0 || p.errors > 0 {
			return s, fmt.Errorf("soak %s: %d non-200, %d errors", t.name, p.non200, p.errors)
		}
		s.requests += p.requests
		a, err1 := rss(fwd.server.pid())
		b, err2 := rss(px.server.pid())
		if err := errors.Join(err1, err2); err != nil {
			return s, err
		}
		s.at = append(s.at, time.Since(begin))
		s.fwd, s.px = append(s.fwd, a), append(s.px, b)
	}
	return s, nil
}

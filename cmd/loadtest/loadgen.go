package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// request is what the load sends to a target, over and over.
type request struct {
	method, path string
	header       []string // "Name: value"
}

// phase is one timed run of the load against one target.
type phase struct {
	requests int64 // responses completed inside the window
	non200   int64
	errors   int64
	elapsed  time.Duration
	hist     *histogram // go generator only
	p50, p99 time.Duration
	genCPU   time.Duration // CPU time of the load generator
}

// window is called at the start and the end of the measured window, so the
// caller can read the servers' CPU counters exactly around it.
type window func()

// generator drives conns keep-alive connections, one request in flight on
// each, for d.
type generator interface {
	run(ctx context.Context, addr string, req request, conns int, d time.Duration, start, stop window) (phase, error)
	name() string
}

// goGen is a load generator in this process: one goroutine per
// connection writing a prebuilt request and reading the response with
// http.ReadResponse, like wrk does. It is cheaper than net/http's client
// (no read and write loop goroutines per connection and no channel hand-off
// per request), which matters when it shares two cores with the server.
//
// With rate > 0 the connections are paced to rate requests per second in
// all, and a latency is counted from the time the request was due, not
// from when it was sent, so a server that falls behind is charged for the
// wait (no coordinated omission).
type goGen struct{ rate float64 }

func (goGen) name() string { return "go" }

func (g goGen) run(ctx context.Context, addr string, req request, conns int, d time.Duration, start, stop window) (phase, error) {
	raw := rawRequest(addr, req)
	var dialer net.Dialer
	workers := make([]worker, conns)
	defer func() {
		for i := range workers {
			workers[i].close()
		}
	}()
	for i := range workers {
		c, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return phase{}, fmt.Errorf("dial %s: %w", addr, err)
		}
		workers[i].conn = c
	}
	var (
		halt atomic.Bool
		wg   sync.WaitGroup
	)
	cpu0, _ := cpuTime(0)
	start()
	t0 := time.Now()
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var interval, offset time.Duration
			if g.rate > 0 {
				interval = time.Duration(float64(conns) / g.rate * float64(time.Second))
				offset = interval * time.Duration(i) / time.Duration(conns)
			}
			workers[i].work(ctx, &dialer, addr, raw, &halt, t0.Add(offset), interval)
		}()
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	halt.Store(true)
	elapsed := time.Since(t0)
	stop()
	cpu1, _ := cpuTime(0)
	// Requests still in flight are cut off, so nothing runs into the next
	// phase.
	for i := range workers {
		workers[i].interrupt()
	}
	wg.Wait()
	p := phase{elapsed: elapsed, hist: new(histogram), genCPU: cpu1 - cpu0}
	for i := range workers {
		w := &workers[i]
		p.requests += w.n
		p.non200 += w.non200
		p.errors += w.errors
		p.hist.merge(&w.hist)
	}
	p.p50, p.p99 = p.hist.quantile(0.50), p.hist.quantile(0.99)
	if ctx.Err() != nil {
		return p, ctx.Err()
	}
	return p, nil
}

// worker is one keep-alive connection and what it measured.
type worker struct {
	mu   sync.Mutex // guards conn: replaced on reconnect, interrupted at the end
	conn net.Conn

	n, non200, errors int64
	hist              histogram
}

func (w *worker) interrupt() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn != nil {
		_ = w.conn.SetDeadline(time.Now())
	}
}

func (w *worker) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

// redial replaces the connection after an error or a "Connection: close".
func (w *worker) redial(ctx context.Context, dialer *net.Dialer, addr string) (net.Conn, error) {
	w.close()
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conn = c
	return c, nil
}

// work sends requests until halt; it ends at halt, at an interrupt, or when
// the target cannot be reached any more. With interval > 0 it sends one
// request per interval from due on.
func (w *worker) work(ctx context.Context, dialer *net.Dialer, addr string, raw []byte, halt *atomic.Bool, due time.Time, interval time.Duration) {
	w.mu.Lock()
	c := w.conn
	w.mu.Unlock()
	br := bufio.NewReaderSize(c, 16<<10)
	for !halt.Load() {
		t0 := time.Now()
		if interval > 0 {
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
			t0 = due
			due = due.Add(interval)
		}
		resp, err := roundTrip(c, br, raw)
		if halt.Load() {
			return // completed after the window: not counted
		}
		if err == nil {
			w.hist.add(time.Since(t0))
			w.n++
			if resp.StatusCode != http.StatusOK {
				w.non200++
			}
			if !resp.Close {
				continue
			}
		} else {
			w.errors++
		}
		if c, err = w.redial(ctx, dialer, addr); err != nil {
			w.errors++
			return
		}
		br.Reset(c)
	}
}

func roundTrip(c net.Conn, br *bufio.Reader, raw []byte) (*http.Response, error) {
	if _, err := c.Write(raw); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, err
}

func rawRequest(addr string, req request) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: portcullis-loadtest\r\nAccept: */*\r\n", req.method, req.path, addr)
	for _, h := range req.header {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// histogram counts latencies: 1 µs buckets below 10 ms, 100 µs buckets
// below 1 s, then one overflow bucket.
type histogram [histBuckets]uint32

const (
	histFine    = 10000
	histBuckets = histFine + 9900 + 1
)

func (h *histogram) add(d time.Duration) {
	us := int(d / time.Microsecond)
	i := us
	if us >= histFine {
		i = min(histFine+(us-histFine)/100, histBuckets-1)
	}
	h[i]++
}

func (h *histogram) merge(o *histogram) {
	for i, n := range o {
		h[i] += n
	}
}

func (h *histogram) quantile(q float64) time.Duration {
	var total uint64
	for _, n := range h {
		total += uint64(n)
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q * float64(total))
	var seen uint64
	for i, n := range h {
		seen += uint64(n)
		if seen > rank {
			if i < histFine {
				return time.Duration(i) * time.Microsecond
			}
			return time.Duration(histFine+(i-histFine)*100) * time.Microsecond
		}
	}
	return time.Second
}

// wrkGen runs Debian's wrk (scripts/bench-deps.sh installs it): C and
// epoll, so it takes less of the two cores than any Go client.
type wrkGen struct{ threads int }

func (wrkGen) name() string { return "wrk" }

func (g wrkGen) run(ctx context.Context, addr string, req request, conns int, d time.Duration, start, stop window) (phase, error) {
	secs := max(1, int((d+time.Second/2)/time.Second))
	args := []string{"-t", strconv.Itoa(max(1, min(g.threads, conns))), "-c", strconv.Itoa(conns), "-d", strconv.Itoa(secs) + "s", "--latency", "--timeout", "10s"}
	for _, h := range req.header {
		args = append(args, "-H", h)
	}
	if req.method != http.MethodGet {
		return phase{}, errors.New("wrk: only GET is driven")
	}
	args = append(args, "http://"+addr+req.path)
	cmd := exec.CommandContext(ctx, "wrk", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start()
	t0 := time.Now()
	err := cmd.Run()
	elapsed := time.Since(t0)
	stop()
	if err != nil {
		return phase{}, fmt.Errorf("wrk: %w\n%s", err, out.String())
	}
	p, err := parseWrk(out.String())
	if err != nil {
		return p, fmt.Errorf("%w\n%s", err, out.String())
	}
	if p.elapsed == 0 {
		p.elapsed = elapsed
	}
	p.genCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return p, nil
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m)`)
	wrkLatency  = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func parseWrkDuration(num, unit string) time.Duration {
	f, _ := strconv.ParseFloat(num, 64)
	switch unit {
	case "us":
		return time.Duration(f * float64(time.Microsecond))
	case "ms":
		return time.Duration(f * float64(time.Millisecond))
	case "m":
		return time.Duration(f * float64(time.Minute))
	}
	return time.Duration(f * float64(time.Second))
}

// parseWrk reads wrk's --latency report.
func parseWrk(out string) (phase, error) {
	var p phase
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		return p, errors.New("wrk: no request count in its output")
	}
	p.requests, _ = strconv.ParseInt(m[1], 10, 64)
	p.elapsed = parseWrkDuration(m[2], m[3])
	for _, m := range wrkLatency.FindAllStringSubmatch(out, -1) {
		d := parseWrkDuration(m[2], m[3])
		if m[1] == "50" {
			p.p50 = d
		} else {
			p.p99 = d
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		p.non200, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			p.errors += n
		}
	}
	if !strings.Contains(out, "Latency Distribution") {
		return p, errors.New("wrk: no latency distribution (wrk without --latency support?)")
	}
	return p, nil
}

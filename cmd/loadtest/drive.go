package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// driveResult is what drive measured.
type driveResult struct {
	requests, errors int64
	codes            map[int]int64
	hist             *histogram
	elapsed          time.Duration
}

func (r driveResult) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.requests) / r.elapsed.Seconds()
}

// only reports whether every response had status code.
func (r driveResult) only(code int) bool {
	return r.errors == 0 && r.codes[code] == r.requests && r.requests > 0
}

// drive is the load generator for loads the single-request generators
// cannot express: many distinct requests (one token each) and several
// servers. conns keep-alive connections are spread round-robin over addrs;
// each takes the next request from one shared sequence. With once, every
// request is sent exactly once and drive ends when they are all answered
// (or at d); otherwise the sequence repeats until d. Latency is measured
// per request, closed loop (one request in flight per connection).
func drive(ctx context.Context, addrs []string, reqs []request, conns int, d time.Duration, once bool) (driveResult, error) {
	if len(reqs) == 0 || len(addrs) == 0 {
		return driveResult{}, fmt.Errorf("drive: nothing to send")
	}
	raws := make([][]byte, len(reqs))
	for i, r := range reqs {
		raws[i] = rawRequest("portcullis.test", r)
	}
	type connResult struct {
		n, errs int64
		codes   map[int]int64
		hist    histogram
	}
	results := make([]*connResult, conns)
	var (
		next   atomic.Int64
		halt   atomic.Bool
		wg     sync.WaitGroup
		dialer net.Dialer
		mu     sync.Mutex
		open   []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
	}
	t0 := time.Now()
	for i := range conns {
		res := &connResult{codes: map[int]int64{}}
		results[i] = res
		addr := addrs[i%len(addrs)]
		wg.Go(func() {
			var (
				c  net.Conn
				br *bufio.Reader
			)
			for !halt.Load() {
				if c == nil {
					var err error
					if c, err = dialer.DialContext(ctx, "tcp", addr); err != nil {
						res.errs++
						return
					}
					track(c)
					br = bufio.NewReaderSize(c, 16<<10)
				}
				k := next.Add(1) - 1
				if once && k >= int64(len(raws)) {
					return
				}
				t := time.Now()
				resp, err := roundTrip(c, br, raws[k%int64(len(raws))])
				if halt.Load() && !once {
					return // completed after the window: not counted
				}
				if err != nil {
					res.errs++
					c.Close()
					c = nil
					continue
				}
				res.hist.add(time.Since(t))
				res.n++
				res.codes[resp.StatusCode]++
				if resp.Close {
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Close()
			}
		})
	}
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(d):
	case <-ctx.Done():
	}
	halt.Store(true)
	elapsed := time.Since(t0)
	mu.Lock()
	for _, c := range open {
		_ = c.SetDeadline(time.Now())
	}
	mu.Unlock()
	<-finished
	out := driveResult{codes: map[int]int64{}, hist: new(histogram), elapsed: elapsed}
	for _, r := range results {
		out.requests += r.n
		out.errors += r.errs
		for k, v := range r.codes {
			out.codes[k] += v
		}
		out.hist.merge(&r.hist)
	}
	return out, ctx.Err()
}

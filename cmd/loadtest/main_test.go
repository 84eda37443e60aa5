package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be its own servers: the harness re-executes
// os.Executable() in serve-bench mode.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == serveBenchCmd {
		if err := serveBench(os.Args[2:]); err != nil {
			os.Stderr.WriteString("serve-bench: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestHarnessSmoke runs every target briefly so the harness does not rot:
// servers start, denials deny, every target serves, the report renders.
func TestHarnessSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five servers and two embedded etcds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts, err := parseFlags([]string{"-duration", "1s", "-rounds", "1", "-warmup", "100ms", "-conns", "8", "-latency-duration", "400ms"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.checks) == 0 {
		t.Fatal("no correctness checks ran")
	}
	denials := 0
	for _, c := range rep.checks {
		if !c.ok() {
			t.Errorf("%s: %s: got %d, want %d", c.target, c.what, c.got, c.want)
		}
		if c.want >= 400 {
			denials++
		}
	}
	if denials < 6 {
		t.Errorf("only %d denial checks", denials)
	}
	for _, tg := range rep.targets {
		if len(tg.phases) != 1 || tg.rps() <= 0 {
			t.Errorf("%s: no throughput (%d phases, %.0f req/s)", tg.name, len(tg.phases), tg.rps())
		}
		if len(tg.paced) != 1 || tg.paced[0].requests == 0 {
			t.Errorf("%s: no fixed-rate latency phase", tg.name)
		}
		if tg.rss <= 0 {
			t.Errorf("%s: no RSS read", tg.name)
		}
	}
	var out bytes.Buffer
	rep.markdown(&out)
	for _, want := range []string{"| Portcullis forward-auth |", "| Portcullis reverse proxy |", "forward-auth / A bare echo, req/s", "proxy p99 − B p99 at", "13 of 13 passed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParseWrk(t *testing.T) {
	out := `Running 5s test @ http://127.0.0.1:4000/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.31ms    2.10ms  40.12ms   95.00%
    Req/Sec    24.50k     1.20k   27.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    2.10ms
     99%   11.35ms
  243900 requests in 5.00s, 20.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:  48780.00
Transfer/sec:      4.00MB
`
	p, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if p.requests != 243900 || p.elapsed != 5*time.Second || p.p50 != 812*time.Microsecond || p.p99 != 11350*time.Microsecond || p.non200 != 3 || p.errors != 3 {
		t.Errorf("parsed %+v", p)
	}
}

func TestHistogramQuantile(t *testing.T) {
	var h histogram
	for i := 1; i <= 100; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	if got := h.quantile(0.50); got != 51*time.Millisecond {
		t.Errorf("p50 = %v", got)
	}
	if got := h.quantile(0.99); got != 100*time.Millisecond {
		t.Errorf("p99 = %v", got)
	}
	h.add(time.Hour)
	if got := h.quantile(1); got < time.Second-time.Millisecond {
		t.Errorf("overflow quantile = %v", got)
	}
}

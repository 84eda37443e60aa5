// Command loadtest measures Portcullis's sidecar on loopback against
// baselines measured in the same run: the direct upstream, a bare echo
// handler (baseline A) and the best plain standard-library reverse proxy
// (baseline B), next to Portcullis's forward-auth endpoint and its
// authorizing reverse proxy. Figures are ratios against the baselines,
// because absolute numbers on a shared machine drift.
//
// Every server is a child process (this binary in its hidden serve-bench
// mode), so that utime+stime from /proc/<pid>/stat is the CPU of that
// server alone; the load generator runs in this process (or is wrk). The
// targets are driven in interleaved rounds whose order alternates (A B C,
// C B A, ...), so drift of the machine hits every target alike.
//
//	go run ./cmd/loadtest -duration 20s
//	go run ./cmd/loadtest -duration 20s -gen wrk      # scripts/bench-deps.sh installs wrk
//	go run ./cmd/loadtest -duration 5s -soak 5m       # RSS of Portcullis under a long run
//	go run ./cmd/loadtest -mode scale                 # 1k, 100k, 1M grants on an external etcd
//	go run ./cmd/loadtest -mode soak -soak 10m        # 80% of the paced peak with a trickle of writes;
//	                                                  # server and generator on separate CPUs, external etcd
//
// The report, a Markdown table, goes to standard output; progress goes to
// standard error. Linux only (/proc).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveBenchCmd {
		if err := serveBench(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "serve-bench:", err)
			os.Exit(1)
		}
		return
	}
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch opts.mode {
	case modeScale:
		var rep *scaleReport
		rep, err = runScale(ctx, opts.scale)
		if rep != nil {
			rep.markdown(os.Stdout)
		}
	case modeSoak:
		var rep *soakReport
		rep, err = runSoak(ctx, opts)
		if rep != nil {
			rep.markdown(os.Stdout)
		}
	default:
		var rep *report
		rep, err = run(ctx, opts)
		if rep != nil {
			rep.markdown(os.Stdout)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// maxSoak bounds -soak: the mode is for minutes, not for days.
const maxSoak = 30 * time.Minute

// The modes of -mode.
const (
	modeCompare = "compare" // the table against the baselines (and -soak's RSS run after it)
	modeScale   = "scale"   // bulk-loaded store at growing sizes; side by side at the largest
	modeSoak    = "soak"    // -soak long at a fraction of peak, with a trickle of writes
)

// maxGrants bounds -scale-steps: ten million grants would take hours here.
const maxGrants = 5_000_000

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "measured time per target, split into -rounds interleaved rounds")
	fs.IntVar(&o.rounds, "rounds", 4, "interleaved rounds")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured load per target before the first round")
	fs.IntVar(&o.conns, "conns", 64, "keep-alive connections of the load generator")
	gen := fs.String("gen", "go", "load generator: go (in this process) or wrk (Debian's wrk on PATH)")
	threads := fs.Int("wrk-threads", 2, "wrk threads")
	fs.DurationVar(&o.soak, "soak", 0, "after the table, load Portcullis this long and sample its RSS every 10s (0: off; at most 30m)")
	fs.DurationVar(&o.soakInterval, "soak-interval", 10*time.Second, "RSS sampling interval of -soak")
	fs.DurationVar(&o.latency, "latency-duration", 10*time.Second, "per target, latency at a fixed rate below saturation (0: off)")
	fs.Float64Var(&o.latencyRate, "latency-rate", 0, "req/s of the fixed-rate latency rounds (0: a quarter of the tuned bare proxy's throughput)")
	fs.StringVar(&o.profileDir, "cpuprofile-dir", "", "servers write CPU profiles (<target>.pprof) here")
	baselineReq := fs.String("baseline-request", "same", "same (the bare baselines get byte for byte the request of the Portcullis target they are compared with) or minimal (no query, no Authorization header: the method of runs before 2026-11-29)")
	fs.StringVar(&o.mode, "mode", modeCompare, "compare (the table), scale (bulk-loaded store at growing sizes) or soak (-soak long at -soak-load of peak with a trickle of writes)")
	steps := fs.String("scale-steps", "1000,100000,1000000", "scale: grant counts to measure at (10 grants and 1 API token per user)")
	fs.IntVar(&o.scale.sample, "scale-sample", 5000, "scale: cold decisions per step (distinct tokens, each once)")
	fs.DurationVar(&o.scale.warm, "scale-warm", 5*time.Second, "scale: warm phase per step")
	fs.IntVar(&o.scale.conns, "scale-conns", 4, "scale: connections of the cold and warm phases")
	fs.IntVar(&o.scale.workers, "scale-workers", 64, "scale: concurrent writers of the bulk load")
	fs.DurationVar(&o.scale.compare, "scale-compare", 20*time.Second, "scale: side-by-side rounds at the last step, in all (0: off)")
	fs.Float64Var(&o.soakLoad, "soak-load", 0.8, "soak mode: fraction of the paced peak (see -soak-peak-p99) to hold")
	fs.DurationVar(&o.soakTrickle, "soak-trickle", 100*time.Millisecond, "soak mode: one write (grant added/removed, token issued/revoked) per interval (0: none)")
	fs.StringVar(&o.soakStore, "soak-store", storeExternal, "soak mode: external (an etcd process on PATH, so Portcullis's memory is its own) or embedded (etcd inside the server, as `portcullis serve` runs by default)")
	pin := fs.String("soak-pin", pinAuto, "soak mode: auto (with 2+ CPUs and taskset: server on the lower half of the CPUs, generator and etcd on the upper), off, or SERVER_CPUS:GENERATOR_CPUS such as 0:1")
	fs.DurationVar(&o.soakProbe, "soak-probe", 10*time.Second, "soak mode: length of the closed-loop ceiling run and of each paced probe that finds the peak")
	fs.DurationVar(&o.soakPeakP99, "soak-peak-p99", 20*time.Millisecond, "soak mode: the peak is the highest paced rate achieved with p99 at most this")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.scale.compareConn = o.conns
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var errs []error
	switch *baselineReq {
	case "same":
	case "minimal":
		o.minimalBaselines = true
	default:
		errs = append(errs, fmt.Errorf("-baseline-request %q: want same or minimal", *baselineReq))
	}
	switch o.mode {
	case modeCompare, modeScale:
	case modeSoak:
		if o.soak <= 0 {
			errs = append(errs, errors.New("-mode soak needs -soak"))
		}
	default:
		errs = append(errs, fmt.Errorf("-mode %q: want compare, scale or soak", o.mode))
	}
	for f := range strings.SplitSeq(*steps, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < grantsPerUser || n > maxGrants {
			errs = append(errs, fmt.Errorf("-scale-steps: %q is not a grant count in %d..%d", f, grantsPerUser, maxGrants))
			continue
		}
		if k := len(o.scale.steps); k > 0 && n <= o.scale.steps[k-1] {
			errs = append(errs, errors.New("-scale-steps must ascend"))
		}
		o.scale.steps = append(o.scale.steps, n)
	}
	if o.scale.sample < 1 || o.scale.conns < 1 || o.scale.workers < 1 || o.scale.warm <= 0 || o.scale.compare < 0 {
		errs = append(errs, errors.New("-scale-sample, -scale-conns, -scale-workers and -scale-warm must be positive, -scale-compare not negative"))
	}
	if o.soakLoad <= 0 || o.soakLoad > 1 {
		errs = append(errs, errors.New("-soak-load must be in (0, 1]"))
	}
	if o.soakStore != storeExternal && o.soakStore != storeEmbedded {
		errs = append(errs, fmt.Errorf("-soak-store %q: want %s or %s", o.soakStore, storeExternal, storeEmbedded))
	}
	var err error
	if o.soakPin, err = parsePinSpec(*pin); err != nil {
		errs = append(errs, err)
	}
	if o.soakProbe < time.Second || o.soakPeakP99 <= 0 {
		errs = append(errs, errors.New("-soak-probe must be at least 1s and -soak-peak-p99 positive"))
	}
	if o.soakTrickle < 0 || (o.soakTrickle > 0 && o.soakTrickle < 10*time.Millisecond) {
		errs = append(errs, errors.New("-soak-trickle must be 0 or at least 10ms"))
	}
	switch *gen {
	case "go":
		o.gen = goGen{}
	case "wrk":
		o.gen = wrkGen{threads: *threads}
	default:
		errs = append(errs, fmt.Errorf("-gen %q: want go or wrk", *gen))
	}
	if o.rounds < 1 {
		errs = append(errs, errors.New("-rounds must be at least 1"))
	}
	if o.duration <= 0 || o.duration/time.Duration(max(o.rounds, 1)) < 200*time.Millisecond {
		errs = append(errs, errors.New("-duration must give each round at least 200ms"))
	}
	if o.conns < 1 || o.conns > 4096 {
		errs = append(errs, errors.New("-conns must be in 1..4096"))
	}
	if o.soak < 0 || o.soak > maxSoak {
		errs = append(errs, fmt.Errorf("-soak must be in 0..%s", maxSoak))
	}
	if o.latency < 0 || (o.latency > 0 && o.latency/time.Duration(max(o.rounds, 1)) < 200*time.Millisecond) {
		errs = append(errs, errors.New("-latency-duration must be 0 or give each round at least 200ms"))
	}
	if o.latencyRate < 0 {
		errs = append(errs, errors.New("-latency-rate must not be negative"))
	}
	if o.soakInterval < time.Second {
		errs = append(errs, errors.New("-soak-interval must be at least 1s"))
	}
	return o, errors.Join(errs...)
}

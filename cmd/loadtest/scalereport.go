package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"
)

func (r driveResult) p(q float64) time.Duration {
	if r.hist == nil {
		return 0
	}
	return r.hist.quantile(q)
}

func (r *scaleReport) markdown(w io.Writer) {
	o, m := r.opts, r.machine
	fmt.Fprintf(w, "## Portcullis scale run, %s\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s, %d CPUs, Linux %s, load average at start %s; %s. The machine is shared: compare within the run.\n\n",
		m.cpuModel, m.cpus, m.kernel, m.loadAvg, runtime.Version())
	fmt.Fprintf(w, "Store: one external etcd process (`etcd` on PATH, fsync on), bulk-loaded by %d concurrent writers through "+
		"`etcdstore.Store.CreateUser` (a technical user, its login id and its %d grants with their reverse index, one transaction) and "+
		"`authz.Service.IssueToken` (one API token per user), then compacted. Each step measures a fresh Portcullis process on that etcd "+
		"through `GET /auth/forward?permission=…` with a bearer token, %d connections, closed loop: cold = %d distinct tokens, each "+
		"used once (token, subject and decision all miss the caches); warm = 1000 of those tokens again for %s. "+
		"Every allow must be a 200 and the denial probes must deny, or the run fails.\n\n",
		o.workers, grantsPerUser, o.conns, o.sample, o.warm)
	if len(r.steps) > 0 {
		fmt.Fprintln(w, "| grants | users | API tokens | load time | etcd db MiB (in use) | Portcullis RSS MiB | cold n | cold p50 ms | cold p99 ms | warm req/s | warm p50 ms | warm p99 ms | load avg |")
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
		for _, s := range r.steps {
			fmt.Fprintf(w, "| %d | %d | %d | %s | %s (%s) | %s | %d | %s | %s | %.0f | %s | %s | %s |\n",
				s.grants, s.users, s.tokens, s.load.Round(time.Second), mib(s.dbSize), mib(s.dbInUse), mib(s.rss),
				s.cold.requests, ms(s.cold.p(0.5)), ms(s.cold.p(0.99)), s.warm.rps(), ms(s.warm.p(0.5)), ms(s.warm.p(0.99)), s.loadAvg)
		}
		fmt.Fprintln(w)
		first, last := r.steps[0], r.steps[len(r.steps)-1]
		if len(r.steps) > 1 && first.cold.requests > 0 && last.cold.requests > 0 {
			ratio := func(a, b time.Duration) string {
				if a <= 0 {
					return "–"
				}
				return fmt.Sprintf("%.2f", float64(b)/float64(a))
			}
			fmt.Fprintf(w, "Largest against smallest step (%d/%d grants): cold p50 ×%s, cold p99 ×%s, warm p50 ×%s, warm p99 ×%s, RSS ×%.2f.\n\n",
				last.grants, first.grants, ratio(first.cold.p(0.5), last.cold.p(0.5)), ratio(first.cold.p(0.99), last.cold.p(0.99)),
				ratio(first.warm.p(0.5), last.warm.p(0.5)), ratio(first.warm.p(0.99), last.warm.p(0.99)), float64(last.rss)/float64(max(first.rss, 1)))
		}
	}
	if len(r.side) > 0 && len(r.side[0].rounds) > 0 {
		fmt.Fprintf(w, "Side by side at %d grants, interleaved rounds of %s each (order reversed every other round), %d connections, "+
			"load average after %s. Hit: 1000 tokens repeated; miss: all %d tokens in turn against caches of 1 MiB (authz's minimum); "+
			"3 replicas: three processes on the one etcd, connections spread over them, the hit load; the reverse proxy sends 1000 users' tokens to their own projects' paths. × baseline: the median over rounds of req/s divided by the baseline's in the same round (A for forward-auth, B for the proxy). CPU is the servers' utime+stime (all replicas); etcd reads/req is etcd's own count of ranges and transactions over the round (etcd_mvcc_range_total + etcd_mvcc_txn_total) per decision: the miss rate seen from the store.\n\n",
			r.steps[len(r.steps)-1].grants, o.compare/4, o.compareConn, r.sideAvg, r.steps[len(r.steps)-1].users)
		fmt.Fprintln(w, "| target | req/s | req/s per round | × baseline | p50 ms | p99 ms | server CPU µs/req | etcd reads/req |")
		fmt.Fprintln(w, "|---|---:|---|---:|---:|---:|---:|---:|")
		for _, t := range r.side {
			base := r.side[t.baseline]
			var n int64
			var el, cpu time.Duration
			merged := new(histogram)
			rounds := make([]string, len(t.rounds))
			var ratios []float64
			var kv int64
			for i, p := range t.rounds {
				if kv >= 0 && t.kv[i] >= 0 {
					kv += t.kv[i]
				} else {
					kv = -1
				}
				n += p.requests
				el += p.elapsed
				cpu += t.cpu[i]
				merged.merge(p.hist)
				rounds[i] = fmt.Sprintf("%.0f", p.rps())
				ratios = append(ratios, p.rps()/base.rounds[i].rps())
			}
			reads := "–"
			if kv >= 0 {
				reads = fmt.Sprintf("%.3f", float64(kv)/float64(max(n, 1)))
			}
			fmt.Fprintf(w, "| %s | %.0f | %s | %.2f | %s | %s | %.1f | %s |\n", t.name, float64(n)/el.Seconds(), strings.Join(rounds, ", "),
				medianF(ratios), ms(merged.quantile(0.5)), ms(merged.quantile(0.99)), float64(cpu/time.Microsecond)/float64(max(n, 1)), reads)
		}
		fmt.Fprintln(w)
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/store/etcdstore"
)

// scaleOptions configure the scale run (-mode scale).
type scaleOptions struct {
	steps       []int         // grant counts to measure at, ascending
	sample      int           // cold requests per step: distinct tokens, each used once
	warm        time.Duration // warm phase per step: a small set of tokens, repeated
	conns       int           // connections of the latency phases (few: latency, not queueing)
	workers     int           // concurrent writers of the bulk load
	compare     time.Duration // side-by-side throughput at the last step (0: off), split in 4 rounds
	compareConn int           // connections of the side-by-side rounds
}

// scaleStep is what one step measured.
type scaleStep struct {
	grants, users, tokens int64 // as counted in etcd (grant keys, user keys, token keys)
	load                  time.Duration
	dbSize, dbInUse       int64
	rss                   int64 // of the Portcullis process after the cold and warm phases
	cold, warm            driveResult
	denials               []check
	loadAvg               string
}

// sideResult is one target of the side-by-side rounds.
type sideResult struct {
	name    string
	servers []*child
	reqs    []request
	rounds  []driveResult
	cpu     []time.Duration // the servers' CPU per round
	kv      []int64         // etcd KV calls per round (-1: not readable)
	// baseline is the index of the target whose throughput in the same
	// round this one's is divided by.
	baseline int
}

// scaleReport is what the scale run measured.
type scaleReport struct {
	opts    scaleOptions
	started time.Time
	machine machineInfo
	steps   []scaleStep
	side    []*sideResult
	sideAvg string // load average after the side-by-side rounds
}

// Paths and permissions of the scale run.
const (
	scaleDenyPermission = "projects/scale-denied#read" // held by nobody
)

func forwardRequest(token, permission string) request {
	return request{method: "GET", path: forwardPath + "?permission=" + url.QueryEscape(permission),
		header: []string{"Authorization: Bearer " + token}}
}

// runScale starts an external etcd, bulk-loads it step by step and, at each
// step, starts a fresh Portcullis on it and measures cold and warm
// forward-auth decisions, its RSS and etcd's size. It returns what it
// measured so far even with an error.
func runScale(ctx context.Context, o scaleOptions) (*scaleReport, error) {
	rep := &scaleReport{opts: o, started: time.Now(), machine: readMachine()}
	progress("scale: starting etcd")
	etcd, err := startEtcd(ctx)
	if err != nil {
		return rep, err
	}
	defer etcd.stop()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: []string{etcd.endpoint}, Logger: quiet})
	if err != nil {
		return rep, err
	}
	defer st.Close()
	// The service only issues tokens here (Service.IssueToken → Store.CreateToken);
	// it needs no watch for that.
	svc, err := authz.New(ctx, st, authz.Config{BcryptCost: 10, Logger: quiet})
	if err != nil {
		return rep, err
	}
	defer svc.Close()
	loader := &bulkLoader{users: st, tokens: svc, workers: o.workers}
	cli := st.EtcdClient()
	count := func(prefix string) (int64, error) {
		r, err := cli.Get(ctx, st.Prefix()+prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		return r.Count, nil
	}
	for _, grants := range o.steps {
		users := max(1, grants/grantsPerUser)
		progress("scale: loading %d users with %d grants each and one API token each", users, grantsPerUser)
		t0 := time.Now()
		if err := loader.loadTo(ctx, users); err != nil {
			return rep, fmt.Errorf("bulk load: %w", err)
		}
		step := scaleStep{load: time.Since(t0)}
		// The size of the live data, not of the load's history: compact
		// as an operator's auto-compaction would (no defragmentation, so
		// the file keeps its high-water mark; in-use is the live part).
		// Physical compaction of a million revisions takes far longer
		// than the store's request timeout; the raw client waits for it.
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		rev, err := st.CurrentRevision(cctx)
		if err == nil {
			_, err = cli.Compact(cctx, int64(rev), clientv3.WithCompactPhysical())
		}
		cancel()
		if err != nil {
			return rep, fmt.Errorf("compact: %w", err)
		}
		var errs [3]error
		step.grants, errs[0] = count("grants/")
		step.users, errs[1] = count("users/")
		step.tokens, errs[2] = count("tokens/")
		if err := errors.Join(errs[:]...); err != nil {
			return rep, err
		}
		if step.dbSize, step.dbInUse, err = dbSize(ctx, cli, etcd.endpoint); err != nil {
			return rep, err
		}
		if err := measureStep(ctx, o, etcd.endpoint, loader.loaded, &step); err != nil {
			rep.steps = append(rep.steps, step)
			return rep, err
		}
		step.loadAvg = readMachine().loadAvg
		rep.steps = append(rep.steps, step)
	}
	if o.compare > 0 {
		if err := sideBySide(ctx, o, etcd, loader.loaded, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// measureStep starts a fresh Portcullis on the store and measures it: cold
// decisions (each token's first use, so the token, its subject and the
// decision all miss the caches), then warm ones (a set already verified,
// repeated), then denials. Every allow must be a 200: that is the check
// that the bulk-loaded data is what Portcullis reads.
func measureStep(ctx context.Context, o scaleOptions, endpoint string, users []loadedUser, step *scaleStep) error {
	px, err := startChild(ctx, "portcullis", "-kind", kindPortcullis, "-etcd", endpoint)
	if err != nil {
		return err
	}
	defer px.stop()
	order := rand.Perm(len(users))
	sample := order[:min(o.sample, len(order))]
	cold := make([]request, len(sample))
	for i, k := range sample {
		cold[i] = forwardRequest(users[k].token, users[k].project+"#read")
	}
	progress("scale: %d cold decisions", len(cold))
	if step.cold, err = drive(ctx, []string{px.addr}, cold, o.conns, 5*time.Minute, true); err != nil {
		return err
	}
	if !step.cold.only(http.StatusOK) || step.cold.requests != int64(len(cold)) {
		return fmt.Errorf("cold decisions: %d of %d answered, status codes %v, %d errors: the loaded data does not verify\n%s",
			step.cold.requests, len(cold), step.cold.codes, step.cold.errors, px.log.String())
	}
	warm := cold[:min(len(cold), 1000)]
	progress("scale: warm decisions over %d tokens for %s", len(warm), o.warm)
	if step.warm, err = drive(ctx, []string{px.addr}, warm, o.conns, o.warm, false); err != nil {
		return err
	}
	if !step.warm.only(http.StatusOK) {
		return fmt.Errorf("warm decisions: status codes %v, %d errors", step.warm.codes, step.warm.errors)
	}
	step.rss, _ = rss(px.pid())

	// Denials: the same tokens without the permission, and a token
	// nobody issued.
	probe := func(what string, want int, reqs []request) {
		r, _ := drive(ctx, []string{px.addr}, reqs, 1, time.Minute, true)
		got := -1
		if r.only(want) {
			got = want
		} else {
			for code := range r.codes {
				if code != want {
					got = code
				}
			}
		}
		step.denials = append(step.denials, check{"forward", what, want, got})
	}
	var deny []request
	for _, k := range sample[:min(20, len(sample))] {
		deny = append(deny, forwardRequest(users[k].token, scaleDenyPermission))
	}
	probe("loaded tokens, permission not held", http.StatusForbidden, deny)
	probe("a token nobody issued", http.StatusUnauthorized, []request{forwardRequest("pct_not-a-token", users[0].project+"#read")})
	probe("no token", http.StatusUnauthorized, []request{{method: "GET", path: forwardPath + "?permission=" + url.QueryEscape(users[0].project+"#read")}})
	for _, c := range step.denials {
		if !c.ok() {
			return fmt.Errorf("denial check %q: got %d, want %d", c.what, c.got, c.want)
		}
	}
	return nil
}

// sideBySide compares, on the loaded store, in interleaved rounds: the
// bare echo handler, forward-auth on the cache-hit path, forward-auth on
// the cache-miss path (every loaded token in turn against caches of 1 MiB,
// authz's minimum, so most decisions read etcd), three replicas on the one
// etcd sharing the hit-path load, and the tuned standard-library reverse
// proxy next to Portcullis's reverse proxy.
func sideBySide(ctx context.Context, o scaleOptions, etcd *etcdProcess, users []loadedUser, rep *scaleReport) error {
	progress("scale: side by side, %s", o.compare)
	var all []*child
	defer func() {
		for _, c := range all {
			c.stop()
		}
	}()
	up, err := startChild(ctx, keyUpstream, "-kind", kindUpstream)
	if err != nil {
		return err
	}
	all = append(all, up)
	upURL := "http://" + up.addr
	fwdArgs := []string{"-kind", kindPortcullis, "-etcd", etcd.endpoint}
	order := rand.Perm(len(users))
	var hot, hotProxy []request
	for _, k := range order[:min(1000, len(order))] {
		u := users[k]
		hot = append(hot, forwardRequest(u.token, u.project+"#read"))
		hotProxy = append(hotProxy, request{method: "GET", path: "/" + u.project + "/services/s1/items", header: []string{"Authorization: Bearer " + u.token}})
	}
	everyone := make([]request, len(order))
	for i, k := range order {
		everyone[i] = forwardRequest(users[k].token, users[k].project+"#read")
	}
	specs := []struct {
		name     string
		args     []string
		n        int
		reqs     []request
		baseline int // index of the target the ratio is taken against
	}{
		{"A: bare echo handler", []string{"-kind", kindEcho}, 1, hot, 0}, // the same requests as the forward-auth rows
		{"forward-auth, cache hit, 1 replica", fwdArgs, 1, hot, 0},
		{"forward-auth, cache miss, 1 replica", append(slices.Clone(fwdArgs), "-cache-max-cost", fmt.Sprint(1<<20)), 1, everyone, 0},
		{"forward-auth, cache hit, 3 replicas", fwdArgs, 3, hot, 0},
		{"B: tuned httputil.ReverseProxy", []string{"-kind", kindStdProxy, "-upstream", upURL}, 1, hotProxy, 4},
		{"reverse proxy, cache hit, 1 replica", append(slices.Clone(fwdArgs), "-upstream", upURL), 1, hotProxy, 4},
	}
	for _, s := range specs {
		t := &sideResult{name: s.name, reqs: s.reqs, baseline: s.baseline}
		for range s.n {
			c, err := startChild(ctx, s.name, s.args...)
			if err != nil {
				return err
			}
			all = append(all, c)
			t.servers = append(t.servers, c)
		}
		rep.side = append(rep.side, t)
	}
	addrs := func(t *sideResult) []string {
		var out []string
		for _, c := range t.servers {
			out = append(out, c.addr)
		}
		return out
	}
	cpu := func(t *sideResult) time.Duration {
		var sum time.Duration
		for _, c := range t.servers {
			d, _ := cpuTime(c.pid())
			sum += d
		}
		return sum
	}
	for _, t := range rep.side {
		progress("scale: warm-up %s", t.name)
		if _, err := drive(ctx, addrs(t), t.reqs, o.compareConn, 3*time.Second, false); err != nil {
			return err
		}
	}
	const rounds = 4
	per := o.compare / rounds
	for r := range rounds {
		ts := slices.Clone(rep.side)
		if r%2 == 1 {
			slices.Reverse(ts)
		}
		for _, t := range ts {
			progress("scale: side by side round %d/%d: %s", r+1, rounds, t.name)
			c0 := cpu(t)
			kv0, kvErr0 := etcd.kvCalls(ctx)
			res, err := drive(ctx, addrs(t), t.reqs, o.compareConn, per, false)
			if err != nil {
				return err
			}
			kv1, kvErr1 := etcd.kvCalls(ctx)
			if kvErr0 != nil || kvErr1 != nil {
				kv1, kv0 = -1, 0
			}
			t.kv = append(t.kv, kv1-kv0)
			if !res.only(http.StatusOK) {
				return fmt.Errorf("%s: status codes %v, %d errors", t.name, res.codes, res.errors)
			}
			t.rounds = append(t.rounds, res)
			t.cpu = append(t.cpu, cpu(t)-c0)
		}
	}
	rep.sideAvg = readMachine().loadAvg
	return nil
}

package metrics_test

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/metrics"
	"github.com/portcullis/portcullis/store/etcdstore"
)

// TestObserversAllocateNothing: Verified runs on every decision and
// EtcdRequest on every store call; neither may allocate.
func TestObserversAllocateNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, s := metrics.NewAuthz(reg), metrics.NewStore(reg)
	err := errors.New("boom")
	if n := testing.AllocsPerRun(1000, func() {
		a.Verified(authz.CacheHit, time.Microsecond)
		a.Verified(authz.CacheStale, time.Millisecond)
		s.EtcdRequest(etcdstore.OpTxnRead, time.Millisecond, nil)
		s.EtcdRequest(etcdstore.OpGet, time.Millisecond, err)
	}); n != 0 {
		t.Errorf("observers allocate %v times per call", n)
	}
	if got := gathered(t, reg)[`portcullis_etcd_request_errors_total{op="get"}`]; got != 1001 {
		t.Errorf("etcd errors{op=get} = %v, want 1001 (AllocsPerRun runs once more to warm up)", got)
	}
}

// TestRevocationPropagation revokes a token and sees the propagation
// histogram count it, while a grant added (no revocation) only moves the
// watch lag histogram.
func TestRevocationPropagation(t *testing.T) {
	s := newStack(t, "")
	ctx := t.Context()
	u, _, err := s.svc.CreateUser(ctx, authz.UserInput{Username: randomValue()}, false)
	if err != nil {
		t.Fatal(err)
	}
	tok, info, _, err := s.svc.IssueToken(ctx, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.svc.VerifyAccess(ctx, tok, "", authz.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	count := func(name string) uint64 {
		fams, err := s.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() == name {
				return f.GetMetric()[0].GetHistogram().GetSampleCount()
			}
		}
		t.Fatalf("no %s", name)
		return 0
	}
	waitFor := func(name string, above uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for count(name) <= above {
			if time.Now().After(deadline) {
				t.Fatalf("%s stayed at %d", name, above)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	lag, revocations := count("portcullis_watch_event_lag_seconds"), count("portcullis_revocation_propagation_seconds")
	if _, err := s.svc.AddPermission(ctx, "users/"+u.ID, "apps#read"); err != nil {
		t.Fatal(err)
	}
	waitFor("portcullis_watch_event_lag_seconds", lag)
	if got := count("portcullis_revocation_propagation_seconds"); got != revocations {
		t.Errorf("adding a grant counted as a revocation (%d → %d)", revocations, got)
	}

	acc, err := s.svc.VerifyAccess(ctx, tok, "", authz.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.svc.RevokeTokenByID(ctx, &acc, info.ID); err != nil {
		t.Fatal(err)
	}
	waitFor("portcullis_revocation_propagation_seconds", revocations)
	if _, err := s.svc.VerifyAccess(ctx, tok, "", authz.VerifyOptions{}); !errors.Is(err, authz.ErrUnauthenticated) {
		t.Fatalf("revoked token verified: %v", err)
	}
}

// TestCacheAndWatchCollector reads the caches and the watch at scrape time.
func TestCacheAndWatchCollector(t *testing.T) {
	s := newStack(t, "")
	ctx := t.Context()
	u, _, err := s.svc.CreateUser(ctx, authz.UserInput{Username: randomValue()}, false)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, _, err := s.svc.IssueToken(ctx, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}})
	if err != nil {
		t.Fatal(err)
	}
	var results []authz.CacheResult
	for range 2 {
		acc, err := s.svc.VerifyAccess(ctx, tok, "users/"+u.ID+"#read", authz.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, acc.Cache)
		s.svc.Flush() // the second lookup finds nothing: a miss again
	}
	if results[0] != authz.CacheMiss || results[1] != authz.CacheMiss {
		t.Errorf("cache results %v, want two misses", results)
	}
	// Now cached; wait for ristretto to apply the Set.
	deadline := time.Now().Add(5 * time.Second)
	for {
		acc, err := s.svc.VerifyAccess(ctx, tok, "users/"+u.ID+"#read", authz.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if acc.Cache == authz.CacheHit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never a cache hit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := map[string]float64{
		`portcullis_cache_entries{cache="decisions"}`:      1,
		`portcullis_cache_cost_bytes{cache="decisions"}`:   1,
		`portcullis_cache_hits_total{cache="decisions"}`:   1,
		`portcullis_cache_misses_total{cache="decisions"}`: 2,
		`portcullis_watch_healthy`:                         1,
		`portcullis_watch_applied_revision`:                1,
	}
	got := gathered(t, s.reg)
	for k, min := range want {
		if got[k] < min {
			t.Errorf("%s = %v, want >= %v", k, got[k], min)
		}
	}
	if got[`portcullis_cache_max_cost_bytes{cache="decisions"}`] != 4<<20 {
		t.Errorf("max cost: %v", got[`portcullis_cache_max_cost_bytes{cache="decisions"}`])
	}
}

// gathered flattens counters and gauges to "name{label="value"}" → value.
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			k := f.GetName()
			if len(m.GetLabel()) > 0 {
				k += "{"
				for i, l := range m.GetLabel() {
					if i > 0 {
						k += ","
					}
					k += l.GetName() + `="` + l.GetValue() + `"`
				}
				k += "}"
			}
			switch {
			case m.Counter != nil:
				out[k] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[k] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// BenchmarkVerifyObserver is what metrics add to every VerifyAccess: one
// clock read (the start time replaces the read the cache's expiry check
// makes anyway) and one histogram observation.
func BenchmarkVerifyObserver(b *testing.B) {
	a := metrics.NewAuthz(prometheus.NewRegistry())
	start := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		a.Verified(authz.CacheHit, time.Since(start))
	}
}

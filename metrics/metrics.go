// Package metrics turns the observer hooks of authz and etcdstore into
// Prometheus collectors. authz and the store know nothing of Prometheus;
// the binary creates a registry, builds these collectors on it and passes
// them down as observers. The HTTP layer's own metrics (decisions,
// upstream, token endpoint) live in package proxy.
//
// Every label takes values from a small fixed set: never a token, user,
// address or path.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/metrics/striped"
	"github.com/portcullis/portcullis/store/etcdstore"
)

const namespace = "portcullis"

// Buckets for decision latencies, from a few microseconds (cache hits)
// to a second (a slow store).
var verifyBuckets = []float64{.000005, .00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}

// Buckets for network round trips and propagation.
var networkBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Authz records an authz.Service's measurements. It is the
// authz.Observer to put in authz.Config.Observer.
type Authz struct {
	// verify is indexed by authz.CacheResult; resolved once, so that the
	// decision path never builds a label, and striped, as every decision
	// on every core records one.
	verify      [3]*striped.Histogram
	watchLag    prometheus.Histogram
	propagation prometheus.Histogram
}

var _ authz.Observer = (*Authz)(nil)

// NewAuthz registers the authz observer's metrics on reg.
func NewAuthz(reg prometheus.Registerer) *Authz {
	verify := striped.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace,
		Name:      "verify_duration_seconds",
		Help:      "Duration of token verifications (verify_access), by how the decision cache served them: hit, miss or stale.",
		Buckets:   verifyBuckets,
	}, []string{"cache"})
	a := &Authz{
		watchLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "watch_event_lag_seconds",
			Help:      "Time from the commit of a store write (writer's clock) to this replica having invalidated its caches for it (local clock), for every write carrying a commit time.",
			Buckets:   networkBuckets,
		}),
		propagation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "revocation_propagation_seconds",
			Help:      "Time from the commit of a revocation (token, grant, user or client deleted, session revoked; writer's clock) to this replica having evicted what depended on it (local clock).",
			Buckets:   networkBuckets,
		}),
	}
	for _, r := range []authz.CacheResult{authz.CacheMiss, authz.CacheHit, authz.CacheStale} {
		a.verify[r] = verify.With(r.String())
	}
	reg.MustRegister(verify, a.watchLag, a.propagation)
	return a
}

// Verified implements authz.Observer without allocating.
func (a *Authz) Verified(r authz.CacheResult, took time.Duration) {
	if int(r) < len(a.verify) {
		a.verify[r].Observe(took)
	}
}

// ChangeApplied implements authz.Observer.
func (a *Authz) ChangeApplied(_ authz.ChangeKind, revocation bool, lag time.Duration) {
	a.watchLag.Observe(lag.Seconds())
	if revocation {
		a.propagation.Observe(lag.Seconds())
	}
}

// Store records the duration of etcd requests. It is the
// etcdstore.Observer to put in etcdstore.Config.Observer.
type Store struct {
	durations map[string]prometheus.Observer
	errors    map[string]prometheus.Counter
}

var _ etcdstore.Observer = (*Store)(nil)

// NewStore registers the store metrics on reg.
func NewStore(reg prometheus.Registerer) *Store {
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace,
		Name:      "etcd_request_duration_seconds",
		Help:      "Duration of requests to etcd, by operation (get, range, put, delete, txn_read, txn_write, lease_grant, watch_open, compact), failed ones included.",
		Buckets:   networkBuckets,
	}, []string{"op"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "etcd_request_errors_total",
		Help:      "Requests to etcd that failed (unreachable, timed out, refused, cancelled), by operation.",
	}, []string{"op"})
	s := &Store{durations: map[string]prometheus.Observer{}, errors: map[string]prometheus.Counter{}}
	for _, op := range etcdstore.Ops {
		s.durations[op] = dur.WithLabelValues(op)
		s.errors[op] = errs.WithLabelValues(op)
	}
	reg.MustRegister(dur, errs)
	return s
}

// EtcdRequest implements etcdstore.Observer. Operations outside
// etcdstore.Ops (none today) are not recorded rather than given a label
// nobody declared.
func (s *Store) EtcdRequest(op string, took time.Duration, err error) {
	if o, ok := s.durations[op]; ok {
		o.Observe(took.Seconds())
		if err != nil {
			s.errors[op].Inc()
		}
	}
}

// Service reads an authz.Service's caches and store watch at scrape
// time: nothing is counted on the request path.
type Service interface {
	CacheStats() []authz.CacheStats
	WatchStatus() authz.WatchStatus
}

// serviceCollector is the scrape-time collector over a Service.
type serviceCollector struct {
	svc Service

	cacheCost, cacheMaxCost, cacheEntries  *prometheus.Desc
	cacheHits, cacheMisses, cacheEvictions *prometheus.Desc
	watchHealthy, watchRestarts, watchRev  *prometheus.Desc
	watchLastChange                        *prometheus.Desc
}

// RegisterService registers a collector of svc's cache and watch state on reg.
func RegisterService(reg prometheus.Registerer, svc Service) {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	reg.MustRegister(&serviceCollector{
		svc:             svc,
		cacheCost:       d("cache_cost_bytes", "Approximate bytes held by each cache (the sum of its entries' costs).", "cache"),
		cacheMaxCost:    d("cache_max_cost_bytes", "The bound of each cache, in approximate bytes.", "cache"),
		cacheEntries:    d("cache_entries", "Entries held by each cache.", "cache"),
		cacheHits:       d("cache_hits_total", "Lookups that found an entry, by cache.", "cache"),
		cacheMisses:     d("cache_misses_total", "Lookups that found no entry, by cache.", "cache"),
		cacheEvictions:  d("cache_evictions_total", "Entries removed from each cache by its cost bound, expiry or invalidation (full flushes not counted).", "cache"),
		watchHealthy:    d("watch_healthy", "1 while the store watch is current (cached decisions are used), 0 while it is down or catching up (every decision reads the store)."),
		watchRestarts:   d("watch_restarts_total", "Times the store watch failed and was restarted."),
		watchRev:        d("watch_applied_revision", "The newest store revision whose changes are applied to the caches."),
		watchLastChange: d("watch_last_change_timestamp_seconds", "Unix time at which the last store change was applied to the caches (0: none yet)."),
	})
}

func (c *serviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.cacheCost, c.cacheMaxCost, c.cacheEntries, c.cacheHits, c.cacheMisses, c.cacheEvictions,
		c.watchHealthy, c.watchRestarts, c.watchRev, c.watchLastChange} {
		ch <- d
	}
}

func (c *serviceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.svc.CacheStats() {
		ch <- prometheus.MustNewConstMetric(c.cacheCost, prometheus.GaugeValue, float64(st.Cost), st.Name)
		ch <- prometheus.MustNewConstMetric(c.cacheMaxCost, prometheus.GaugeValue, float64(st.MaxCost), st.Name)
		ch <- prometheus.MustNewConstMetric(c.cacheEntries, prometheus.GaugeValue, float64(st.Entries), st.Name)
		ch <- prometheus.MustNewConstMetric(c.cacheHits, prometheus.CounterValue, float64(st.Hits), st.Name)
		ch <- prometheus.MustNewConstMetric(c.cacheMisses, prometheus.CounterValue, float64(st.Misses), st.Name)
		ch <- prometheus.MustNewConstMetric(c.cacheEvictions, prometheus.CounterValue, float64(st.Evictions), st.Name)
	}
	w := c.svc.WatchStatus()
	healthy := 0.0
	if w.Healthy {
		healthy = 1
	}
	last := 0.0
	if !w.LastChange.IsZero() {
		last = float64(w.LastChange.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(c.watchHealthy, prometheus.GaugeValue, healthy)
	ch <- prometheus.MustNewConstMetric(c.watchRestarts, prometheus.CounterValue, float64(w.Restarts))
	ch <- prometheus.MustNewConstMetric(c.watchRev, prometheus.GaugeValue, float64(w.Revision))
	ch <- prometheus.MustNewConstMetric(c.watchLastChange, prometheus.GaugeValue, last)
}

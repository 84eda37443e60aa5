// Package cache puts a bounded, concurrent, cost-aware cache (ristretto v2)
// behind a small interface owned by Portcullis, so callers do not depend on
// ristretto's API and tests can reason about one contract.
package cache

import (
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// Key is what a Cache can be keyed by.
type Key interface{ uint64 | string }

// Cache is a bounded concurrent cache.
//
// Set is best-effort: the cache may drop a value at once (admission policy,
// contention) or evict it at any later time, so callers must treat every Get
// miss as normal and never rely on a value being present after Set. A value
// becomes visible to Get only after it has been processed asynchronously;
// tests that read back what they set call Wait first.
//
// With uint64 keys the cache does not detect hash collisions between keys:
// callers must store the full key in the value and compare it on Get.
type Cache[K Key, V any] interface {
	Get(key K) (V, bool)
	// Set stores value with cost (counted against the cache's MaxCost) until
	// ttl passes (ttl <= 0: no expiry). It reports whether the value was
	// accepted for admission, not whether it will be found.
	Set(key K, value V, cost int64, ttl time.Duration) bool
	Del(key K)
	// Clear drops every value.
	Clear()
	// Wait blocks until every Set before it has been applied.
	Wait()
	Stats() Stats
	Close()
}

// Stats are cumulative counters since the cache was created (Clear does
// not reset them), and the cache's current occupation.
type Stats struct {
	// Evictions counts values removed by the cost bound, by expiry or by
	// Del; Clear is not counted.
	Hits, Misses, Evictions uint64
	// Cost is the sum of the costs of the values held now.
	Cost int64
	// Entries is the number of values held now.
	Entries int64
}

// Config sizes a cache.
type Config struct {
	// MaxCost bounds the total cost of values held; with cost = approximate
	// bytes, it bounds memory.
	MaxCost int64
	// ExpectedItems sizes ristretto's admission counters (about 10x the
	// number of items expected when full).
	ExpectedItems int64
}

// Ristretto is a Cache backed by ristretto v2.
type Ristretto[K Key, V any] struct {
	c *ristretto.Cache[K, V]
	// ristretto resets its counters on Clear; base keeps what they had
	// counted before, so the totals never go backwards.
	mu   sync.Mutex
	base Stats
}

var _ Cache[string, int] = (*Ristretto[string, int])(nil)

// New returns a Ristretto cache bounded by cfg.MaxCost.
func New[K Key, V any](cfg Config) (*Ristretto[K, V], error) {
	if cfg.MaxCost <= 0 {
		return nil, fmt.Errorf("cache: MaxCost must be positive, got %d", cfg.MaxCost)
	}
	if cfg.ExpectedItems <= 0 {
		// Entries cost a few hundred bytes each; ristretto allocates its
		// admission counters up front, so overestimating the item count
		// costs resident memory on every replica.
		cfg.ExpectedItems = cfg.MaxCost / 256
	}
	if cfg.ExpectedItems < 1000 {
		cfg.ExpectedItems = 1000
	}
	c, err := ristretto.NewCache(&ristretto.Config[K, V]{
		NumCounters: cfg.ExpectedItems * 10,
		MaxCost:     cfg.MaxCost,
		BufferItems: 64,
		Metrics:     true,
		// Costs are given explicitly by callers; do not add ristretto's
		// internal per-item overhead estimate on top.
		IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &Ristretto[K, V]{c: c}, nil
}

// Get returns the value for key, if held and not expired.
func (r *Ristretto[K, V]) Get(key K) (V, bool) { return r.c.Get(key) }

// Set offers value to the cache; see Cache.Set.
func (r *Ristretto[K, V]) Set(key K, value V, cost int64, ttl time.Duration) bool {
	if ttl > 0 {
		return r.c.SetWithTTL(key, value, cost, ttl)
	}
	return r.c.Set(key, value, cost)
}

// Del removes key.
func (r *Ristretto[K, V]) Del(key K) { r.c.Del(key) }

// Clear removes every value.
func (r *Ristretto[K, V]) Clear() {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.c.Metrics
	r.base.Hits += m.Hits()
	r.base.Misses += m.Misses()
	r.base.Evictions += m.KeysEvicted()
	r.c.Clear()
}

// Wait waits for pending Sets to be applied.
func (r *Ristretto[K, V]) Wait() { r.c.Wait() }

// Close stops the cache's goroutines; the cache must not be used afterwards.
func (r *Ristretto[K, V]) Close() { r.c.Close() }

// Stats returns the cache's counters. It is a few atomic loads.
func (r *Ristretto[K, V]) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.c.Metrics
	return Stats{
		Hits:      r.base.Hits + m.Hits(),
		Misses:    r.base.Misses + m.Misses(),
		Evictions: r.base.Evictions + m.KeysEvicted(),
		Cost:      int64(m.CostAdded() - m.CostEvicted()),
		Entries:   int64(m.KeysAdded() - m.KeysEvicted()),
	}
}

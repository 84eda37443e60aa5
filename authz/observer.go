package authz

import (
	"time"

	"github.com/portcullis/portcullis/authz/cache"
)

// CacheResult says how the decision cache served one VerifyAccess.
type CacheResult uint8

// How a decision was served.
const (
	// CacheMiss: no cached decision (or the cache was bypassed); decided
	// from the store and the lower caches.
	CacheMiss CacheResult = iota
	// CacheHit: served from a cached decision.
	CacheHit
	// CacheStale: a cached decision was found but was no longer valid
	// (something it depends on changed, it expired, or it was older than
	// the revision asked for); decided again.
	CacheStale
)

// String is the metric label of r.
func (r CacheResult) String() string {
	switch r {
	case CacheHit:
		return "hit"
	case CacheStale:
		return "stale"
	}
	return "miss"
}

// Observer receives a Service's measurements, for metrics. authz knows
// nothing of Prometheus: the binary wires an Observer that does.
//
// Verified is called on the decision hot path: implementations must not
// allocate, block or take contended locks, and must be safe for concurrent
// use.
type Observer interface {
	// Verified is called once per VerifyAccess with how the decision cache
	// served it and how long the call took.
	Verified(result CacheResult, took time.Duration)
	// ChangeApplied is called from the store watch once a change whose
	// commit time the store reported has been applied, i.e. every cached
	// entry depending on it is invalid. lag is the time from the commit
	// (the writer's clock) to now (this replica's clock). revocation says
	// the change took access away (see Change.Revocation).
	ChangeApplied(kind ChangeKind, revocation bool, lag time.Duration)
}

// String names k for logs and metric labels.
func (k ChangeKind) String() string {
	switch k {
	case ChangeProgress:
		return "progress"
	case ChangeGrant:
		return "grant"
	case ChangeToken:
		return "token"
	case ChangeSession:
		return "session"
	case ChangeUser:
		return "user"
	case ChangeClient:
		return "client"
	case ChangeSigningKey:
		return "signing_key"
	}
	return "unknown"
}

// CacheStats describe one of the Service's caches.
type CacheStats struct {
	// Name is a fixed, short name ("decisions", "tokens", …).
	Name string
	// MaxCost is the cache's bound, in approximate bytes.
	MaxCost int64
	cache.Stats
}

// CacheStats reads the counters of every cache. It is cheap (atomic
// loads) and meant to be called at scrape time.
func (s *Service) CacheStats() []CacheStats {
	return []CacheStats{
		{Name: "decisions", MaxCost: s.cfg.CacheMaxCost, Stats: s.decisions.Stats()},
		{Name: "tokens", MaxCost: s.cfg.CacheMaxCost, Stats: s.tokens.Stats()},
		{Name: "subjects", MaxCost: s.cfg.CacheMaxCost, Stats: s.subjects.Stats()},
		{Name: "resources", MaxCost: s.cfg.CacheMaxCost, Stats: s.resources.Stats()},
		{Name: "clients", MaxCost: clientsCacheCost, Stats: s.clients.Stats()},
		{Name: "assertions", MaxCost: assertionsCacheCost, Stats: s.assertions.Stats()},
	}
}

// The fixed bounds of the small caches.
const (
	clientsCacheCost    = 1 << 20
	assertionsCacheCost = 4 << 20
)

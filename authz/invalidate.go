package authz

import (
	"context"
	"errors"
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Cache invalidation works by generations rather than by enumerating keys:
// every object a cached entry was derived from (a resource's grants, a user
// record, a token, a session, a client) hashes to one of genSlots counters.
// An entry records the counters of everything it depends on, captured
// before the store read it came from; a change to any of those objects
// bumps its counter and so invalidates, in O(1), exactly the entries that
// depend on it (a role change reaches every subject holding the role) plus,
// rarely, unrelated entries sharing a slot. A flush bumps the epoch, which
// every entry also records.
const genSlots = 1 << 16

type slotKind uint64

const (
	slotGrant slotKind = iota + 1
	slotUser
	slotToken
	slotSession
	slotClient
)

// dep is one dependency of a cached entry: a slot and the generation it had
// when the entry's data was read.
type dep struct {
	slot uint32
	gen  uint64
}

type generations struct {
	seed  maphash.Seed
	epoch atomic.Uint64
	slots [genSlots]atomic.Uint64
	// changes counts bumps and flushes: store reads started while it had
	// one value may be shared only by callers that saw the same value
	// (see Service.coalesce).
	changes atomic.Uint64
}

func (g *generations) slot(kind slotKind, key string) uint32 {
	h := maphash.String(g.seed, key) ^ (uint64(kind) * 0x9E3779B97F4A7C15)
	return uint32(h & (genSlots - 1))
}

// capture returns the current generation of the object; call it before
// reading the object from the store.
func (g *generations) capture(kind slotKind, key string) dep {
	i := g.slot(kind, key)
	return dep{slot: i, gen: g.slots[i].Load()}
}

func (g *generations) bump(kind slotKind, key string) {
	g.slots[g.slot(kind, key)].Add(1)
	g.changes.Add(1)
}

// valid reports whether nothing the entry depends on changed since it was read.
func (g *generations) valid(epoch uint64, deps []dep) bool {
	if g.epoch.Load() != epoch {
		return false
	}
	for _, d := range deps {
		if g.slots[d.slot].Load() != d.gen {
			return false
		}
	}
	return true
}

// watchState tracks whether the store watch is current. Cached entries are
// only trusted while it is: a replica whose watch is down reads the store.
type watchState struct {
	healthy   atomic.Bool
	applied   atomic.Int64 // newest revision whose invalidations are applied
	lastEvent atomic.Int64 // unix nanoseconds of the last change applied
	restarts  atomic.Uint64
	ready     chan struct{}
	readyOnce sync.Once
	keysDirty chan struct{}
}

func (w *watchState) init() {
	w.ready = make(chan struct{})
	w.keysDirty = make(chan struct{}, 1)
}

// WatchStatus describes the store watch, for health checks and metrics.
type WatchStatus struct {
	Healthy    bool
	Revision   Revision  // newest revision applied to the caches
	Restarts   uint64    // watch restarts since start
	LastChange time.Time // when the last change was applied (zero if none)
}

// WatchStatus reports the state of the store watch.
func (s *Service) WatchStatus() WatchStatus {
	st := WatchStatus{
		Healthy:  s.watch.healthy.Load(),
		Revision: s.watch.applied.Load(),
		Restarts: s.watch.restarts.Load(),
	}
	if n := s.watch.lastEvent.Load(); n != 0 {
		st.LastChange = time.Unix(0, n)
	}
	return st
}

// Ready is closed once the store watch is established and current for the
// first time, i.e. once cached decisions can be served.
func (s *Service) Ready() <-chan struct{} { return s.watch.ready }

// Flush drops every cached entry. It is what the watch does when it may
// have missed changes; operators can call it too.
func (s *Service) Flush() {
	s.gens.epoch.Add(1)
	s.gens.changes.Add(1)
	s.tokens.Clear()
	s.subjects.Clear()
	s.resources.Clear()
	s.decisions.Clear()
	s.hot.clear()
	s.clients.Clear()
}

// Run keeps the caches consistent with the store until ctx ends, then
// returns nil. It follows the store's watch from the revision it last saw,
// invalidating what each change affects; when the watch fails it retries
// with backoff forever (caches are bypassed meanwhile), and when changes may
// have been missed (compaction) it flushes every cache before resuming.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.reloadKeysOnChange(ctx)
	}()

	const minBackoff, maxBackoff = 50 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	var after Revision
	for {
		if after == 0 {
			rev, err := s.store.CurrentRevision(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				s.log.Warn("store watch: cannot read current revision", "err", err, "retry_in", backoff)
				if !sleepCtx(ctx, jitter(backoff)) {
					return nil
				}
				backoff = min(backoff*2, maxBackoff)
				continue
			}
			// Whatever is cached may predate changes we will never see.
			s.Flush()
			after = rev
		}
		started := time.Now()
		err := s.store.Watch(ctx, after, func(c Change) {
			s.apply(c)
			if c.Revision > after {
				after = c.Revision
			}
		})
		s.watch.healthy.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		s.watch.restarts.Add(1)
		if errors.Is(err, ErrCompacted) {
			s.log.Warn("store watch: revision compacted, flushing caches", "after", after)
			after = 0
		} else {
			s.log.Warn("store watch failed, caches bypassed until it resumes", "err", err, "after", after, "retry_in", backoff)
		}
		if time.Since(started) > 10*time.Second {
			backoff = minBackoff
		}
		if !sleepCtx(ctx, jitter(backoff)) {
			return nil
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// apply invalidates what one change affects.
func (s *Service) apply(c Change) {
	switch c.Kind {
	case ChangeProgress:
		// A progress notification at revision R means every change up to R
		// has been delivered: the caches are current from here on.
		s.watch.applied.Store(max(s.watch.applied.Load(), c.Revision))
		if !s.watch.healthy.Swap(true) {
			s.watch.readyOnce.Do(func() { close(s.watch.ready) })
		}
		return
	case ChangeGrant:
		s.gens.bump(slotGrant, c.Key)
	case ChangeUser:
		s.gens.bump(slotUser, c.Key)
	case ChangeToken:
		s.gens.bump(slotToken, c.Key)
	case ChangeSession:
		s.gens.bump(slotSession, c.Key)
	case ChangeClient:
		s.gens.bump(slotClient, c.Key)
	case ChangeSigningKey:
		select {
		case s.watch.keysDirty <- struct{}{}:
		default:
		}
	}
	// Revision c.Revision may hold more changes (one transaction, several
	// objects) still to come: only the revisions before it are complete.
	// The store reports a progress at c.Revision once it has delivered
	// them all. (apply runs on the watch goroutine alone.)
	s.watch.applied.Store(max(s.watch.applied.Load(), c.Revision-1))
	now := time.Now()
	s.watch.lastEvent.Store(now.UnixNano())
	if s.obs != nil && !c.CommittedAt.IsZero() {
		// The writer's clock against ours: skew between replicas shows up
		// here, and a negative difference means at least that much skew.
		s.obs.ChangeApplied(c.Kind, c.Revocation, max(now.Sub(c.CommittedAt), 0))
	}
}

// cacheUsable reports whether cached entries may be served for a request
// that demands at least revision atLeast (0: any). An entry read at entryRev
// is current up to the watch's applied revision as long as its
// dependencies are unchanged, so it is fresh enough when either reaches atLeast.
func (s *Service) cacheUsable(entryRev, atLeast Revision) bool {
	if !s.watch.healthy.Load() {
		return false
	}
	return atLeast == 0 || entryRev >= atLeast || s.watch.applied.Load() >= atLeast
}

func (s *Service) reloadKeysOnChange(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.watch.keysDirty:
			if err := s.keys.reload(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("reload signing keys", "err", err)
			}
		}
	}
}

func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// jitterTTL spreads expiries by ±10% so entries cached together do not all
// expire together.
func jitterTTL(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

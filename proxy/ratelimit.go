package proxy

import (
	"hash/maphash"
	"sync"
	"time"
)

// RateLimit is a token bucket: Rate requests per second on average, up to
// Burst at once. A zero Rate switches the limit off.
type RateLimit struct {
	Rate  float64
	Burst int
}

// limiter holds one token bucket per key (a subject or a client address),
// sharded to keep lock contention off the decision path. Idle buckets are
// dropped once full again, so memory follows the active key set.
type limiter struct {
	rate   float64
	burst  float64
	now    func() time.Time
	seed   maphash.Seed
	shards [64]limiterShard
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(l RateLimit, now func() time.Time) *limiter {
	if l.Rate <= 0 {
		return nil
	}
	if l.Burst < 1 {
		l.Burst = max(1, int(l.Rate))
	}
	lim := &limiter{rate: l.Rate, burst: float64(l.Burst), now: now, seed: maphash.MakeSeed()}
	for i := range lim.shards {
		lim.shards[i].buckets = map[string]*bucket{}
	}
	return lim
}

// take spends one token for key; it returns 0 when allowed, else how long
// until a token is available.
func (l *limiter) take(key string) time.Duration {
	if l == nil {
		return 0
	}
	sh := l.shard(key)
	now := l.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if now.Sub(sh.sweep) > time.Minute {
		l.sweepShard(sh, now)
	}
	b := sh.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		sh.buckets[key] = b
	}
	b.tokens = l.level(b, now)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return l.until(b.tokens)
}

func (l *limiter) shard(key string) *limiterShard {
	return &l.shards[maphash.String(l.seed, key)%uint64(len(l.shards))]
}

// level is b's token count at now, refilled since its last use.
func (l *limiter) level(b *bucket, now time.Time) float64 {
	return min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
}

// until is how long a bucket holding tokens (< 1) waits for a whole one.
func (l *limiter) until(tokens float64) time.Duration {
	return time.Duration((1 - tokens) / l.rate * float64(time.Second))
}

// sweepShard forgets buckets that have refilled: they behave exactly like
// new ones.
func (l *limiter) sweepShard(sh *limiterShard, now time.Time) {
	sh.sweep = now
	for k, b := range sh.buckets {
		if l.level(b, now) >= l.burst {
			delete(sh.buckets, k)
		}
	}
}

type limits struct {
	subject, client *limiter
}

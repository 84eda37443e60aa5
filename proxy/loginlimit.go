package proxy

import (
	"strconv"
	"time"
)

// DefaultLoginFailureRateLimit bounds failed password sign-ins per client
// address on one replica: 30 at once, then one every 10 seconds.
var DefaultLoginFailureRateLimit = RateLimit{Rate: 0.1, Burst: 30}

// reserve spends a token of key for a sign-in attempt before its password
// is checked, so that guesses sent at once cannot all pass a check made
// before any of them failed; it returns 0 when allowed, else how long
// until a token is available. An attempt that turns out not to be a
// wrong guess gives its token back with refund: only failures spend the
// budget, so a busy office behind one address is not locked out by its
// own sign-ins.
func (l *limiter) reserve(key string) time.Duration { return l.take(key) }

// refund gives back the token that reserve spent for key.
func (l *limiter) refund(key string) {
	if l == nil {
		return
	}
	sh := l.shard(key)
	now := l.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// No bucket: it refilled and was swept, and is full anyway.
	if b := sh.buckets[key]; b != nil {
		b.tokens = min(l.burst, l.level(b, now)+1)
		b.last = now
	}
}

func retryAfter(d time.Duration) string { return strconv.Itoa(max(1, retrySeconds(d))) }

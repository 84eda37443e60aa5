package proxy

import (
	"hash/maphash"
	"strconv"
	"time"
)

// DefaultLoginFailureRateLimit bounds failed password sign-ins per client
// address on one replica: 30 at once, then one every 10 seconds.
var DefaultLoginFailureRateLimit = RateLimit{Rate: 0.1, Burst: 30}

// wait says how long until key could spend a token, without spending one.
// The login throttle uses it with fail: only failures spend tokens, so a
// busy office behind one address is not locked out by its own sign-ins.
func (l *limiter) wait(key string) time.Duration {
	if l == nil {
		return 0
	}
	sh := &l.shards[maphash.String(l.seed, key)%uint64(len(l.shards))]
	now := l.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.buckets[key]
	if b == nil {
		return 0
	}
	tokens := min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	if tokens >= 1 {
		return 0
	}
	return time.Duration((1 - tokens) / l.rate * float64(time.Second))
}

// fail spends a token of key for a failed attempt.
func (l *limiter) fail(key string) {
	if l != nil {
		l.take(key)
	}
}

func retryAfter(d time.Duration) string { return strconv.Itoa(max(1, retrySeconds(d))) }

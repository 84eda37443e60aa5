package proxy

import (
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
	sh := l.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.buckets[key]
	if b == nil {
		return 0
	}
	if tokens := l.level(b, l.now()); tokens < 1 {
		return l.until(tokens)
	}
	return 0
}

// fail spends a token of key for a failed attempt.
func (l *limiter) fail(key string) {
	if l != nil {
		l.take(key)
	}
}

func retryAfter(d time.Duration) string { return strconv.Itoa(max(1, retrySeconds(d))) }

package proxy

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/authz"
)

// TestDecisionMetricsAllocateNothing: counting a decision is on the
// forward-auth hot path; it must not build labels or allocate.
func TestDecisionMetricsAllocateNothing(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	if n := testing.AllocsPerRun(1000, func() {
		m.decided(DialectTraefik, http.StatusOK, cacheHit)
		m.decided(DialectEnvoyGRPC, http.StatusForbidden, cacheLabelOf(authz.CacheStale))
		m.decided(DialectAPI, http.StatusServiceUnavailable, cacheNone)
		m.upstreamDone(502, time.Millisecond)
	}); n != 0 {
		t.Errorf("recording a decision allocates %v times", n)
	}
}

func TestDecisionOutcomes(t *testing.T) {
	for _, tt := range []struct {
		status int
		want   string
	}{
		{200, "allow"}, {401, "unauthenticated"}, {403, "deny"}, {400, "deny"}, {429, "deny"},
		{500, "error"}, {503, "error"},
	} {
		if got := outcomes[outcomeOf(tt.status)]; got != tt.want {
			t.Errorf("status %d: outcome %q, want %q", tt.status, got, tt.want)
		}
	}
	for _, d := range dialects {
		if dialects[dialectIndex(d)] != d {
			t.Errorf("dialect %q indexes %q", d, dialects[dialectIndex(d)])
		}
	}
}

func TestTokenOutcomes(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, "issued"},
		{&authz.OAuthError{Code: "invalid_grant"}, "invalid_grant"},
		{&oauthResponseError{status: 429, oe: &authz.OAuthError{Code: "temporarily_unavailable"}}, "throttled"},
		{&authz.ThrottledError{}, "throttled"},
		{&authz.OAuthError{Code: "made_up_by_someone"}, "error"},
		{errors.New("store down"), "error"},
	} {
		if got := tokenOutcome(tt.err); got != tt.want {
			t.Errorf("%v: %q, want %q", tt.err, got, tt.want)
		}
	}
}

// BenchmarkDecisionMetrics is what metrics add to every forward-auth
// decision in this package: one pre-resolved counter increment.
func BenchmarkDecisionMetrics(b *testing.B) {
	m := newMetrics(prometheus.NewRegistry())
	b.ReportAllocs()
	for b.Loop() {
		m.decided(DialectTraefik, http.StatusOK, cacheHit)
	}
}

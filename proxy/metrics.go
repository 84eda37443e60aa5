package proxy

import (
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/metrics/striped"
)

// metrics are the HTTP layer's Prometheus collectors. Labels are bounded
// sets only: never a token, user, address or raw path. Every series on
// the decision path is resolved once here into arrays indexed by small
// enums, so recording a decision builds no label and allocates nothing.
type metrics struct {
	shadowDisagreements *prometheus.CounterVec

	// decisions[dialect][outcome][cache]: striped, as every request on
	// every core counts one.
	decisions [numDialects][numOutcomes][numCacheLabels]*striped.Counter
	// upstream[status class]: 1xx … 5xx, and transport errors.
	upstream [numUpstreamClasses]prometheus.Observer
	// tokens: grant type × outcome, resolved lazily (not a hot path).
	tokens    *prometheus.CounterVec
	throttled [numThrottles]prometheus.Counter
}

// dialects are the decision metric's dialect label values, by index.
var dialects = [...]Dialect{DialectTraefik, DialectNginx, DialectEnvoyHTTP, DialectEnvoyGRPC, DialectProxy, DialectAPI}

const numDialects = len(dialects)

func dialectIndex(d Dialect) int {
	switch d {
	case DialectTraefik:
		return 0
	case DialectNginx:
		return 1
	case DialectEnvoyHTTP:
		return 2
	case DialectEnvoyGRPC:
		return 3
	case DialectProxy:
		return 4
	}
	return 5
}

// Decision outcomes.
const (
	outcomeAllow = iota
	outcomeDeny
	outcomeUnauthenticated
	outcomeError
	numOutcomes
)

var outcomes = [numOutcomes]string{"allow", "deny", "unauthenticated", "error"}

// outcomeOf maps a decision's HTTP status to its outcome: 200 allow, 401
// unauthenticated, 5xx error, every other refusal (403, 400, 429) deny.
func outcomeOf(status int) int {
	switch {
	case status == http.StatusOK:
		return outcomeAllow
	case status == http.StatusUnauthorized:
		return outcomeUnauthenticated
	case status >= 500:
		return outcomeError
	}
	return outcomeDeny
}

// cacheLabel says how the decision cache served a decision; cacheNone
// when no token was verified (public route, no credential, bad request).
type cacheLabel uint8

const (
	cacheNone cacheLabel = iota
	cacheHit
	cacheMiss
	cacheStale
	numCacheLabels
)

var cacheLabels = [numCacheLabels]string{"none", "hit", "miss", "stale"}

func cacheLabelOf(r authz.CacheResult) cacheLabel {
	switch r {
	case authz.CacheHit:
		return cacheHit
	case authz.CacheStale:
		return cacheStale
	}
	return cacheMiss
}

const (
	upstreamError      = 0 // no response: refused, timed out, reset
	numUpstreamClasses = 6
)

var upstreamClasses = [numUpstreamClasses]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}

// Login throttles.
const (
	throttleAddress = iota // this replica's per-address limit on failed sign-ins
	throttleAccount        // the per-account budget shared by all replicas (authz)
	numThrottles
)

// tokenGrantTypes are the grant_type label values; anything else is "other".
var tokenGrantTypes = []string{authz.GrantPassword, authz.GrantRefreshToken, authz.GrantClientCredentials, authz.GrantAuthorizationCode, "other"}

// tokenOutcomes are the outcome label values of the token endpoint: issued,
// or the RFC 6749 error code (a known set; anything else is "error").
var tokenOutcomes = []string{"issued", "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
	"unsupported_grant_type", "invalid_scope", "throttled", "error"}

// Buckets for upstream responses: a millisecond to a minute.
var upstreamBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		shadowDisagreements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "portcullis",
			Name:      "shadow_route_disagreements_total",
			Help:      "Requests the shadow route rules would have decided differently from the active ones, by what the shadow rules would have done.",
		}, []string{"shadow"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "portcullis",
			Name:      "token_requests_total",
			Help:      "Requests to the OAuth2 token endpoint, by grant type and outcome (issued, or the OAuth2 error code).",
		}, []string{"grant_type", "outcome"}),
	}
	decisions := striped.NewCounterVec(prometheus.CounterOpts{
		Namespace: "portcullis",
		Name:      "decisions_total",
		Help:      "Authorization decisions, by outcome (allow, deny, unauthenticated, error), dialect (traefik, nginx, envoy-http, envoy-grpc, proxy, api) and decision cache result (hit, miss, stale; none when no token was verified).",
	}, []string{"outcome", "dialect", "cache"})
	for d, dialect := range dialects {
		for o, outcome := range outcomes {
			for c, cache := range cacheLabels {
				m.decisions[d][o][c] = decisions.With(outcome, string(dialect), cache)
			}
		}
	}
	upstream := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "portcullis",
		Name:      "upstream_request_duration_seconds",
		Help:      "Time from sending a proxied request upstream to its response headers (or failure), by status class (1xx-5xx, error: no response).",
		Buckets:   upstreamBuckets,
	}, []string{"class"})
	for i, class := range upstreamClasses {
		m.upstream[i] = upstream.WithLabelValues(class)
	}
	throttled := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "portcullis",
		Name:      "login_throttled_total",
		Help:      "Password sign-ins refused by a throttle: limit=address (this replica's per-address limit on failures) or account (the per-account failure budget shared by all replicas).",
	}, []string{"limit"})
	for _, kind := range []string{"would_allow", "would_deny"} {
		m.shadowDisagreements.WithLabelValues(kind)
	}
	m.throttled[throttleAddress] = throttled.WithLabelValues("address")
	m.throttled[throttleAccount] = throttled.WithLabelValues("account")
	for _, g := range tokenGrantTypes {
		for _, o := range tokenOutcomes {
			m.tokens.WithLabelValues(g, o)
		}
	}
	if reg != nil {
		reg.MustRegister(m.shadowDisagreements, decisions, upstream, m.tokens, throttled)
	}
	return m
}

// decided counts one decision. It allocates nothing.
func (m *metrics) decided(d Dialect, status int, c cacheLabel) {
	m.decisions[dialectIndex(d)][outcomeOf(status)][c].Inc()
}

// upstreamDone records a proxied request's upstream latency; status 0
// means no response.
func (m *metrics) upstreamDone(status int, took time.Duration) {
	class := upstreamError
	if status >= 100 && status < 600 {
		class = status / 100
	}
	m.upstream[class].Observe(took.Seconds())
}

// tokenRequest counts one token endpoint request.
func (m *metrics) tokenRequest(grantType string, err error) {
	g := "other"
	for _, known := range tokenGrantTypes {
		if grantType == known {
			g = known
		}
	}
	m.tokens.WithLabelValues(g, tokenOutcome(err)).Inc()
}

func tokenOutcome(err error) string {
	if err == nil {
		return "issued"
	}
	if errors.Is(err, authz.ErrThrottled) {
		return "throttled"
	}
	var oe *authz.OAuthError
	var ore *oauthResponseError
	code := ""
	switch {
	case errors.As(err, &ore):
		code = ore.oe.Code
	case errors.As(err, &oe):
		code = oe.Code
	}
	if code == "temporarily_unavailable" {
		return "throttled"
	}
	for _, known := range tokenOutcomes {
		if code == known {
			return known
		}
	}
	return "error"
}

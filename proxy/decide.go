package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy/rules"
)

// Dialect names who asked for a decision; it is a metric label and decides
// how a denial is phrased (nginx must never see a 3xx).
type Dialect string

// The decision engine's callers.
const (
	DialectTraefik   Dialect = "traefik"
	DialectNginx     Dialect = "nginx"
	DialectEnvoyHTTP Dialect = "envoy-http"
	DialectEnvoyGRPC Dialect = "envoy-grpc"
	DialectProxy     Dialect = "proxy"
	// DialectAPI is Portcullis's own endpoints: the REST verify endpoint
	// in the decision metrics, every API, OAuth2 and page request in the
	// access log.
	DialectAPI Dialect = "api"
)

// Attempt is one request to decide, as reconstructed by a dialect: only
// from trusted forwarded headers, or from the connection itself.
type Attempt struct {
	Dialect Dialect
	Method  string
	Scheme  string // "http" or "https"
	Host    string // may carry a port
	// Target is the raw request target, "/path?query", still
	// percent-encoded.
	Target string
	// Header holds the client's headers: credentials and rule headers.
	Header   http.Header
	ClientIP string
	// Permission, when set, replaces the route rules (the forward-auth
	// URL's ?permission=, as in contaxy's nginx configuration).
	Permission string
	// permissionCanonical: Permission was canonicalised where it was
	// read (forward-auth's query parameter), so required skips that.
	permissionCanonical bool
	// Assertion asks for a signed identity assertion on allow.
	Assertion bool
	// RequestID is the id a proxy in front gave the request (access log).
	RequestID string
}

// Identity is what an allowed request's upstream learns about the caller.
type Identity struct {
	Subject, UserID, Username, Email, Permission, Assertion string
}

// The identity headers. Clients can never set them: forward-auth tells the
// proxy to overwrite them, and the reverse proxy strips every alias.
const (
	HeaderSubject    = "X-Auth-Subject"
	HeaderUserID     = "X-Auth-User-Id"
	HeaderUsername   = "X-Auth-Username"
	HeaderEmail      = "X-Auth-Email"
	HeaderPermission = "X-Auth-Permission"
	HeaderAssertion  = "X-Auth-Assertion"
	HeaderLoginURL   = "X-Auth-Login-Url"
)

// identityHeader is one identity header and its value.
type identityHeader struct{ name, value string }

// headers lists every identity header, empty values included, so that
// proxies which copy named headers overwrite (and so erase) spoofed ones.
// An array rather than a callback: the forward-auth hot path loops over it
// without allocating a closure.
func (id *Identity) headers() [6]identityHeader {
	return [6]identityHeader{
		{HeaderSubject, id.Subject},
		{HeaderUserID, id.UserID},
		{HeaderUsername, id.Username},
		{HeaderEmail, id.Email},
		{HeaderPermission, id.Permission},
		{HeaderAssertion, id.Assertion},
	}
}

// each calls fn for every identity header, as headers lists them.
func (id *Identity) each(fn func(name, value string)) {
	for _, h := range id.headers() {
		fn(h.name, h.value)
	}
}

// credentialSource says where a token was found, so it can be removed
// before the request goes upstream.
type credentialSource uint8

const (
	fromAuthorization credentialSource = 1 << iota
	fromHeader
	fromCookie
	fromQuery
)

// Verdict is the engine's answer.
type Verdict struct {
	// Status is 200 (allow), 400, 401, 403, 429 or 503.
	Status int
	// Err explains a non-200 Status.
	Err error
	// Public is set when a public rule let the request through.
	Public   bool
	Rule     string
	Identity Identity
	// Path and RawQuery are the normalised target; the reverse proxy
	// sends exactly these upstream.
	Path     rules.Path
	RawQuery string
	Upstream *url.URL
	// source says where the credential was, for stripping it.
	source credentialSource
	// RetryAfter is set with 429, in seconds.
	RetryAfter int
	// LoginURL is where a browser signs in (with 401).
	LoginURL string
	// invalidToken: a credential was presented but not accepted.
	invalidToken bool
	// cache says how the decision cache served the verification, for metrics.
	cache cacheLabel
	// subject is the verified caller, also on denials (access log).
	subject string
	// normalized: Path holds the normalised target (access log).
	normalized bool
}

// Allowed reports an allow.
func (v *Verdict) Allowed() bool { return v.Status == http.StatusOK }

// Decide runs one request through the route rules and verify_access. It
// is the single decision engine behind every dialect, and counts the
// decision in portcullis_decisions_total.
func (s *Server) Decide(ctx context.Context, a Attempt) Verdict {
	ctx, span := s.startDecision(ctx, &a)
	v := s.decide(ctx, &a)
	if v.Status == http.StatusUnauthorized {
		v.LoginURL = s.loginURL(&a)
	}
	s.metrics.decided(a.Dialect, v.Status, v.cache)
	endDecision(span, &v)
	return v
}

func (s *Server) decide(ctx context.Context, a *Attempt) Verdict {
	var v Verdict
	fail := func(status int, err error) Verdict {
		v.Status, v.Err = status, err
		return v
	}
	for name := range a.Header {
		if strings.IndexByte(name, '_') >= 0 && !strings.EqualFold(name, tokenHeader) {
			return fail(http.StatusBadRequest, badRequest(fmt.Sprintf("header %q: underscores in header names are refused (proxies disagree on them)", name)))
		}
	}
	if a.Permission == "" {
		if err := checkMethodOverride(a.Header, a.Method); err != nil {
			return fail(http.StatusBadRequest, err)
		}
	}
	rawPath, rawQuery, err := rules.SplitTarget(a.Target)
	if err != nil {
		return fail(http.StatusBadRequest, badRequest(err.Error()))
	}
	v.RawQuery = rawQuery
	if v.Path, err = rules.NormalizePath(rawPath, s.cfg.PathOptions); err != nil {
		return fail(http.StatusBadRequest, badRequest(err.Error()))
	}
	v.normalized = true

	permission, status, err := s.required(a, &v)
	if err != nil {
		return fail(status, err)
	}
	if v.Public {
		// Unchecked, but still found, so that it never reaches the
		// upstream.
		_, v.source, _ = s.attemptCredential(a, rawQuery)
		v.Status = http.StatusOK
		s.shadow(ctx, a, &v, nil, true)
		return v
	}

	if s.limits != nil {
		if wait := s.limits.client.take(a.ClientIP); wait > 0 {
			v.RetryAfter = retrySeconds(wait)
			return fail(http.StatusTooManyRequests, errRateLimited)
		}
	}
	tok, src, err := s.attemptCredential(a, rawQuery)
	if err != nil {
		return fail(http.StatusBadRequest, err)
	}
	v.source = src
	if tok == "" {
		s.shadow(ctx, a, &v, nil, false)
		return fail(http.StatusUnauthorized, fmt.Errorf("%w: no credentials", authz.ErrUnauthenticated))
	}
	acc, err := s.svc.VerifyAccess(ctx, tok, permission, authz.VerifyOptions{})
	v.cache = cacheLabelOf(acc.Cache)
	v.subject = acc.Subject
	if err != nil && !errors.Is(err, authz.ErrPermissionDenied) {
		v.invalidToken = errors.Is(err, authz.ErrUnauthenticated)
		status, _ := s.classify(err)
		return fail(status, err)
	}
	if s.shadows != nil {
		s.shadow(ctx, a, &v, &acc, err == nil)
	}
	if err != nil {
		return fail(http.StatusForbidden, err)
	}
	if s.limits != nil {
		if wait := s.limits.subject.take(acc.Subject); wait > 0 {
			v.RetryAfter = retrySeconds(wait)
			return fail(http.StatusTooManyRequests, errRateLimited)
		}
	}
	v.Status = http.StatusOK
	v.Identity = Identity{Subject: acc.Subject, Username: acc.Username, Email: acc.Email, Permission: permission}
	if id, ok := strings.CutPrefix(acc.Subject, "users/"); ok {
		v.Identity.UserID = id
	}
	if a.Assertion || s.cfg.Assertion.Always {
		aud := s.cfg.Assertion.Audience
		if aud == "" {
			aud = rules.HostOnly(a.Host)
		}
		tok, err := s.svc.Assertion(ctx, acc, permission, aud, s.cfg.Assertion.TTL)
		if err != nil {
			status, _ := s.classify(err)
			if status < 500 {
				status = http.StatusInternalServerError
			}
			return fail(status, fmt.Errorf("identity assertion: %w", err))
		}
		v.Identity.Assertion = tok
	}
	return v
}

// methodOverrideHeaders are the headers web frameworks read as "treat this
// request as another method" (Express's method-override, Google APIs,
// Symfony and others). The level is judged on the request's own method,
// so an override the upstream might honour would turn a write into an
// admin delete.
var methodOverrideHeaders = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// checkMethodOverride refuses a request whose method-override headers name
// another method than its own; naming its own method changes nothing.
func checkMethodOverride(h http.Header, method string) error {
	for _, name := range methodOverrideHeaders {
		for _, v := range h[name] {
			if !strings.EqualFold(strings.TrimSpace(v), method) {
				return badRequest(name + " names another method than the request's; the permission is judged on the request's own method")
			}
		}
	}
	return nil
}

var errRateLimited = &problemError{status: http.StatusTooManyRequests, msg: "rate limit exceeded; retry later"}

func retrySeconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

// required finds the permission a request needs from the override or the
// rules; it sets v.Public, v.Rule and v.Upstream.
func (s *Server) required(a *Attempt, v *Verdict) (string, int, error) {
	if a.Permission != "" {
		v.Rule = "permission-parameter"
		if a.permissionCanonical {
			return a.Permission, 0, nil
		}
		p, err := s.canonicalPermissions.canonical(a.Permission)
		if err != nil {
			return "", http.StatusBadRequest, badRequest("permission parameter: " + err.Error())
		}
		return p, 0, nil
	}
	if a.Method == "" {
		return "", http.StatusBadRequest, badRequest("the original request method is unknown (send X-Forwarded-Method or X-Original-Method from the proxy)")
	}
	m, err := s.cfg.Routes.Match(rules.Request{Method: a.Method, Host: rules.HostOnly(a.Host), Path: v.Path, Header: a.Header})
	if err != nil {
		return "", http.StatusBadRequest, badRequest(err.Error())
	}
	v.Rule, v.Upstream = m.Rule, m.Upstream
	switch m.Outcome {
	case rules.Public:
		v.Public = true
		return "", 0, nil
	case rules.Protected:
		return m.Permission, 0, nil
	}
	v.Rule = "no-match"
	if s.cfg.Unmatched == UnmatchedAuthenticated {
		// Any valid credential; verify_access with no permission.
		return "", 0, nil
	}
	return "", http.StatusForbidden, &problemError{status: http.StatusForbidden, msg: "permission denied", expl: "no route rule matches this request"}
}

// What happens to requests no rule matches.
const (
	UnmatchedDeny          = "deny"
	UnmatchedAuthenticated = "authenticated"
)

// attemptCredential finds the token in the client's headers, cookies and,
// when allowed, the original query string.
func (s *Server) attemptCredential(a *Attempt, rawQuery string) (string, credentialSource, error) {
	var query url.Values
	if s.cfg.AllowQueryToken && strings.Contains(rawQuery, tokenQuery) {
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			return "", 0, badRequest("malformed query string")
		}
		query = q
	}
	return extractCredential(a.Header, query)
}

// loginURL is where a browser without credentials signs in, with the
// original URL as return target when that target is an allowed one.
func (s *Server) loginURL(a *Attempt) string {
	base := s.cfg.LoginURL
	if base == "" {
		return ""
	}
	if a.Host == "" || (a.Scheme != "http" && a.Scheme != "https") || a.Method != http.MethodGet {
		return base
	}
	target := a.Target
	if path, query, ok := strings.Cut(target, "?"); ok {
		// A token in the query must not travel on in the return target.
		target = path
		if q := stripQueryToken(query); q != "" {
			target += "?" + q
		}
	}
	back := a.Scheme + "://" + a.Host + target
	if !s.redirectAllowed(back) {
		return base
	}
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return base + sep + "rd=" + url.QueryEscape(back)
}

// redirectAllowed accepts a same-origin path ("/x", not "//x" or "/\x")
// or an absolute http(s) URL on an allowed host (or a subdomain of a
// ".suffix" entry).
func (s *Server) redirectAllowed(target string) bool {
	if target == "" || strings.ContainsAny(target, "\\\x00\r\n\t") {
		return false
	}
	for i := 0; i < len(target); i++ {
		if target[i] < 0x20 || target[i] == 0x7f {
			return false
		}
	}
	if strings.HasPrefix(target, "/") {
		return !strings.HasPrefix(target, "//")
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.User != nil || u.Host == "" {
		return false
	}
	host := strings.ToLower(u.Hostname())
	for _, allowed := range s.cfg.AllowedRedirectHosts {
		allowed = strings.ToLower(allowed)
		if host == allowed || (strings.HasPrefix(allowed, ".") && strings.HasSuffix(host, allowed)) {
			return true
		}
	}
	return false
}

// permissionCache remembers the canonical form of permission parameters.
// They come from the proxies' configuration, so a handful of strings
// repeat on every request; unescaping, parsing and re-printing them each
// time was a measurable share of a forward-auth decision. Anyone can call
// the endpoint with other values, so each map stops growing at a bound and
// further values are parsed each time.
type permissionCache struct {
	plain   boundedStrings // as given → canonical
	escaped boundedStrings // query-escaped → canonical
}

// canonical parses a permission given as is.
func (c *permissionCache) canonical(raw string) (string, error) {
	if p, ok := c.plain.load(raw); ok {
		return p, nil
	}
	p, err := authz.ParsePermission(raw)
	if err != nil {
		return "", err
	}
	canonical := p.String()
	c.plain.store(raw, canonical)
	return canonical, nil
}

// fromQuery parses a query-escaped permission parameter.
func (c *permissionCache) fromQuery(escaped string) (string, error) {
	if p, ok := c.escaped.load(escaped); ok {
		return p, nil
	}
	raw, err := url.QueryUnescape(escaped)
	if err != nil {
		return "", errors.New("malformed escape")
	}
	canonical, err := c.canonical(raw)
	if err != nil {
		return "", err
	}
	c.escaped.store(escaped, canonical)
	return canonical, nil
}

// boundedStrings is a concurrent string map that stops growing at
// maxCachedPermissions entries.
type boundedStrings struct {
	m    sync.Map
	size atomic.Int32
}

const maxCachedPermissions = 1024

func (b *boundedStrings) load(k string) (string, bool) {
	v, ok := b.m.Load(k)
	if !ok {
		return "", false
	}
	return v.(string), true
}

func (b *boundedStrings) store(k, v string) {
	if b.size.Load() >= maxCachedPermissions {
		return
	}
	if _, loaded := b.m.LoadOrStore(k, v); !loaded {
		b.size.Add(1)
	}
}

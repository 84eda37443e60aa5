package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// ProxyConfig tunes the authorizing reverse proxy.
type ProxyConfig struct {
	// DialTimeout bounds connecting to the upstream. Default 5s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds waiting for the upstream's response
	// headers (504 after it). Default 60s.
	ResponseHeaderTimeout time.Duration
	// IdleConnTimeout closes pooled upstream connections. Default 90s.
	IdleConnTimeout time.Duration
	// MaxIdleConnsPerHost keeps this many upstream connections warm.
	// Default 256: the standard library's 2 churns sockets under load.
	MaxIdleConnsPerHost int
	// MaxBodyBytes bounds proxied request bodies (413); 0: no limit.
	MaxBodyBytes int64
	// RewriteHost sends the upstream's host as Host instead of the
	// client's.
	RewriteHost bool
}

func (c *ProxyConfig) setDefaults() {
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.ResponseHeaderTimeout <= 0 {
		c.ResponseHeaderTimeout = 60 * time.Second
	}
	if c.IdleConnTimeout <= 0 {
		c.IdleConnTimeout = 90 * time.Second
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = 256
	}
}

// bufferPool recycles the 32 KiB copy buffers of proxied bodies.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

type verdictKey struct{}

// newReverseProxy builds the one httputil.ReverseProxy all upstreams share.
func (s *Server) newReverseProxy() *httputil.ReverseProxy {
	cfg := s.cfg.Proxy
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		// Never an environment proxy: the upstream is local to us.
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		MaxIdleConns:          4 * cfg.MaxIdleConnsPerHost,
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	var rt http.RoundTripper = transport
	if s.tracer != nil {
		rt = &tracingTransport{next: transport, tracer: s.tracer}
	}
	return &httputil.ReverseProxy{
		Rewrite:        s.rewrite,
		Transport:      rt,
		BufferPool:     &bufferPool{},
		ErrorHandler:   s.proxyError,
		ModifyResponse: s.upstreamResponded,
		ErrorLog:       nil,
	}
}

// serveProxy authorizes a request for the upstream and forwards it.
func (s *Server) serveProxy(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var span trace.Span // nil unless tracing is on
	if s.tracer != nil {
		r, span = s.startProxySpan(r)
	}
	a := s.connectionAttempt(r, DialectProxy)
	a.ClientIP = s.cfg.TrustedProxies.clientIP(r)
	trusted := s.cfg.TrustedProxies.trusted(r)
	if r.TLS == nil && trusted {
		if p, ok, _ := singleHeader(r.Header, "X-Forwarded-Proto"); ok && (p == "https" || p == "http") {
			a.Scheme = p
		}
	}
	if err := checkUpgrade(r); err != nil {
		v := Verdict{Status: http.StatusBadRequest, Err: err}
		s.metrics.decided(a.Dialect, v.Status, cacheNone)
		s.proxyDone(span, &a, &v, s.writeDenial(w, r, &a, &v), start)
		return
	}
	v := s.Decide(r.Context(), a)
	if !v.Allowed() {
		s.proxyDone(span, &a, &v, s.writeDenial(w, r, &a, &v), start)
		return
	}
	if v.Upstream == nil {
		v.Upstream = s.cfg.Upstream
	}
	if lim := s.cfg.Proxy.MaxBodyBytes; lim > 0 && r.Body != nil {
		if r.ContentLength > lim {
			tooLarge := v
			tooLarge.Status, tooLarge.Err = http.StatusRequestEntityTooLarge, &problemError{status: http.StatusRequestEntityTooLarge, msg: "request body too large"}
			s.proxyDone(span, &a, &tooLarge, s.writeDenial(w, r, &a, &tooLarge), start)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, lim)
	}
	px := &proxied{v: v, a: a, trusted: trusted}
	s.reverse.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), verdictKey{}, px)))
	s.proxyDone(span, &a, &v, px.status, start)
}

// proxyDone ends a proxied request: its access line and, with tracing,
// its span.
func (s *Server) proxyDone(span trace.Span, a *Attempt, v *Verdict, status int, start time.Time) {
	s.LogDecision(a, v, status, start)
	if span != nil {
		endHTTPSpan(span, status)
	}
}

type proxied struct {
	v       Verdict
	a       Attempt
	trusted bool
	// sent is when the request left for the upstream (set in rewrite).
	sent time.Time
	// status is what the client was answered: the upstream's status, or
	// proxyError's.
	status int
}

// upstreamResponded records the upstream's latency and status class
// (ReverseProxy.ModifyResponse) and the status for the access log.
func (s *Server) upstreamResponded(resp *http.Response) error {
	if px, ok := resp.Request.Context().Value(verdictKey{}).(*proxied); ok {
		px.status = resp.StatusCode
		if !px.sent.IsZero() {
			s.metrics.upstreamDone(resp.StatusCode, time.Since(px.sent))
		}
	}
	return nil
}

// checkUpgrade lets WebSocket upgrades through (they are authorized like
// any request, before the 101) and refuses every other upgrade, h2c
// included: a tunnel we cannot see into would bypass per-request checks.
func checkUpgrade(r *http.Request) error {
	if r.Header.Get("Http2-Settings") != "" || strings.EqualFold(r.Header.Get("Upgrade"), "h2c") {
		return badRequest("h2c upgrades are not supported")
	}
	up := r.Header.Values("Upgrade")
	if len(up) == 0 {
		return nil
	}
	if len(up) > 1 || !strings.EqualFold(strings.TrimSpace(up[0]), "websocket") {
		return badRequest("only WebSocket upgrades are supported")
	}
	return nil
}

// rewrite builds the upstream request: the normalised path the rules saw,
// no credential, no client-sent identity or forwarding headers, ours set.
func (s *Server) rewrite(pr *httputil.ProxyRequest) {
	px := pr.In.Context().Value(verdictKey{}).(*proxied)
	px.sent = time.Now()
	v, target := &px.v, px.v.Upstream
	out := pr.Out
	out.URL.Scheme, out.URL.Host = target.Scheme, target.Host
	base := strings.TrimSuffix(target.EscapedPath(), "/")
	escaped := base + v.Path.String()
	decoded, err := url.PathUnescape(escaped)
	if err != nil {
		decoded = escaped
	}
	out.URL.Path, out.URL.RawPath = decoded, escaped
	out.URL.RawQuery = stripQueryToken(v.RawQuery)
	if s.cfg.Proxy.RewriteHost {
		out.Host = target.Host
	} else {
		out.Host = pr.In.Host
	}

	h := out.Header
	for name := range h {
		if isForbiddenUpstreamHeader(name) {
			delete(h, name)
		}
	}
	delete(h, "Ct_token")
	if v.source&fromAuthorization != 0 {
		delete(h, "Authorization")
	}
	if v.source&fromCookie != 0 || tokenCookiePresent(h) {
		if rest := withoutTokenCookie(h); rest != "" {
			h.Set("Cookie", rest)
		} else {
			delete(h, "Cookie")
		}
	}
	vals := make([]string, 0, 6)
	for _, ih := range v.Identity.headers() {
		if ih.value != "" {
			vals = append(vals, ih.value)
			h[ih.name] = vals[len(vals)-1:]
		}
	}
	clientIP := px.a.ClientIP
	if prior := pr.In.Header.Values("X-Forwarded-For"); px.trusted && len(prior) > 0 {
		h.Set("X-Forwarded-For", strings.Join(prior, ", ")+", "+peerAddr(pr.In).String())
	} else {
		h.Set("X-Forwarded-For", clientIP)
	}
	h.Set("X-Forwarded-Host", pr.In.Host)
	h.Set("X-Forwarded-Proto", px.a.Scheme)
	h.Set("X-Real-Ip", clientIP)
}

func tokenCookiePresent(h http.Header) bool {
	_, n := tokenCookieValue(h)
	return n > 0
}

// isForbiddenUpstreamHeader matches headers only Portcullis may set
// upstream: identity headers under any alias ("X_Auth_User",
// "x.auth.subject", any case) and forwarding headers from the client.
func isForbiddenUpstreamHeader(name string) bool {
	return headerNameHasPrefix(name, "x-auth-") || headerNameHasPrefix(name, "x-forwarded-") || headerNameHasPrefix(name, "x-original-") ||
		headerNameIs(name, "forwarded") || headerNameIs(name, "x-real-ip") || headerNameIs(name, "ct-token")
}

// headerNameHasPrefix reports whether name starts with lower, a lower-case
// name, reading '_' and '.' in name as '-' and ignoring ASCII case. It runs
// for every header of every proxied request, so it compares in place
// rather than building the folded name.
func headerNameHasPrefix(name, lower string) bool {
	if len(name) < len(lower) {
		return false
	}
	for i := 0; i < len(lower); i++ {
		c := name[i]
		switch {
		case c == '_' || c == '.':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// headerNameIs is headerNameHasPrefix for the whole name.
func headerNameIs(name, lower string) bool {
	return len(name) == len(lower) && headerNameHasPrefix(name, lower)
}

// stripQueryToken removes ct_token from a raw query, leaving the rest
// byte for byte.
func stripQueryToken(raw string) string {
	if !strings.Contains(raw, tokenQuery) {
		return raw
	}
	parts := strings.Split(raw, "&")
	kept := parts[:0]
	for _, p := range parts {
		name, _, _ := strings.Cut(p, "=")
		if dec, err := url.QueryUnescape(name); err == nil && dec == tokenQuery {
			continue
		}
		kept = append(kept, p)
	}
	return strings.Join(kept, "&")
}

// proxyError answers upstream failures: 504 on timeouts, 502 otherwise.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := http.StatusBadGateway, "upstream unavailable"
	clientGone := errors.Is(err, context.Canceled) && r.Context().Err() != nil
	px, _ := r.Context().Value(verdictKey{}).(*proxied)
	if px != nil && !px.sent.IsZero() && !clientGone {
		s.metrics.upstreamDone(0, time.Since(px.sent))
	}
	defer func() {
		if px != nil {
			px.status = status
		}
	}()
	var ne net.Error
	var mbe *http.MaxBytesError
	switch {
	case clientGone:
		// The client went away; nobody is listening.
		status = 499
		w.WriteHeader(status)
		return
	case errors.As(err, &mbe):
		status, msg = http.StatusRequestEntityTooLarge, "request body too large"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		status, msg = http.StatusGatewayTimeout, "upstream timed out"
	}
	s.log.Warn("upstream request failed", "status", status, "method", r.Method, "host", r.Host, "err", err.Error())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Code: status, Message: msg})
}

package proxy

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/proxy/rules"
)

// envoyPrefix is where Envoy's HTTP ext_authz service sends requests:
// path_prefix + the original path, with the original method.
const envoyPrefix = "/auth/forward/envoy"

// forwardAuth serves Traefik's ForwardAuth and nginx's auth_request
// (including ingress-nginx) on one endpoint. ServeHTTP calls serveForward
// directly; the echo route exists for the route list and OpenAPI.
func (s *Server) forwardAuth(c echo.Context) error {
	s.serveForward(c.Response(), c.Request())
	return nil
}

// forwardEnvoy is forwardAuth for Envoy's HTTP ext_authz.
func (s *Server) forwardEnvoy(c echo.Context) error {
	req := c.Request()
	s.serveEnvoy(c.Response(), req, strings.TrimPrefix(req.RequestURI, envoyPrefix))
	return nil
}

// serveForward decides a Traefik or nginx forward-auth request. The
// original request is rebuilt from X-Original-* (nginx) or X-Forwarded-*
// (Traefik) headers, believed only from trusted proxies.
func (s *Server) serveForward(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	a, err := s.forwardAttempt(req)
	if err != nil {
		v := Verdict{Status: http.StatusBadRequest, Err: err}
		s.metrics.decided(a.Dialect, v.Status, cacheNone)
		s.LogDecision(&a, &v, s.writeDenial(w, req, &a, &v), start)
		return
	}
	v := s.Decide(req.Context(), a)
	s.LogDecision(&a, &v, s.writeVerdict(w, req, &a, &v), start)
}

// serveEnvoy decides an Envoy HTTP ext_authz request: the original
// method, the original target after our prefix, the original Host.
func (s *Server) serveEnvoy(w http.ResponseWriter, req *http.Request, target string) {
	start := time.Now()
	a := s.connectionAttempt(req, DialectEnvoyHTTP)
	a.Target = target
	if a.Target == "" || a.Target[0] == '?' {
		a.Target = "/" + a.Target
	}
	if s.cfg.TrustedProxies.trusted(req) {
		p, ok, err := singleHeader(req.Header, "X-Forwarded-Proto")
		if err != nil {
			v := Verdict{Status: http.StatusBadRequest, Err: err}
			s.metrics.decided(a.Dialect, v.Status, cacheNone)
			s.LogDecision(&a, &v, s.writeDenial(w, req, &a, &v), start)
			return
		}
		if ok {
			a.Scheme = strings.ToLower(p)
		}
	}
	// No permission override here: the query belongs to the original
	// request and any header could have come from the client. Envoy users
	// map requests with route rules (or gRPC context_extensions).
	v := s.Decide(req.Context(), a)
	s.LogDecision(&a, &v, s.writeVerdict(w, req, &a, &v), start)
}

// forwardParams reads the forward-auth URL's own parameters (permission,
// assertion) by scanning the raw query: url.Values would build a map on
// every decision. Other parameters are ignored, as before.
func forwardParams(raw string, a *Attempt, perms *permissionCache) error {
	seen := false
	for part := range strings.SplitSeq(raw, "&") {
		name, value, _ := strings.Cut(part, "=")
		switch name {
		case "permission":
			if seen {
				return badRequest("query parameter permission given more than once")
			}
			seen = true
			p, err := perms.fromQuery(value)
			if err != nil {
				return badRequest("permission parameter: " + err.Error())
			}
			a.Permission, a.permissionCanonical = p, true
		case "assertion":
			a.Assertion = value == "true"
		}
	}
	return nil
}

// connectionAttempt describes req as the connection itself says it.
func (s *Server) connectionAttempt(req *http.Request, d Dialect) Attempt {
	a := Attempt{
		Dialect: d,
		Method:  req.Method,
		Scheme:  "http",
		Host:    req.Host,
		Target:  req.RequestURI,
		Header:  req.Header,
	}
	if req.TLS != nil {
		a.Scheme = "https"
	}
	if id := req.Header[requestIDHeader]; len(id) > 0 {
		a.RequestID = id[0]
	}
	// The client address costs a parse and an allocation: only the
	// per-client rate limit and the reverse proxy need it.
	if s.limits != nil && s.limits.client != nil {
		a.ClientIP = s.cfg.TrustedProxies.clientIP(req)
	}
	return a
}

// forwardAttempt rebuilds the original request for /auth/forward.
func (s *Server) forwardAttempt(req *http.Request) (Attempt, error) {
	a := s.connectionAttempt(req, DialectTraefik)
	if req.URL.RawQuery != "" {
		if err := forwardParams(req.URL.RawQuery, &a, &s.canonicalPermissions); err != nil {
			return a, err
		}
	}
	if !s.cfg.TrustedProxies.trusted(req) {
		// Judged on what the connection says: forwarded headers from
		// anyone else are not believed.
		return a, nil
	}
	h := req.Header
	origURL, hasURL, err := singleHeader(h, "X-Original-Url")
	if err != nil {
		return a, err
	}
	origURI, hasURI, err := singleHeader(h, "X-Original-Uri")
	if err != nil {
		return a, err
	}
	fwdURI, hasFwdURI, err := singleHeader(h, "X-Forwarded-Uri")
	if err != nil {
		return a, err
	}
	fwdMethod, hasMethod, err := singleHeader(h, "X-Forwarded-Method")
	if err != nil {
		return a, err
	}
	if hasURL || hasURI {
		a.Dialect = DialectNginx
		a.Method, _, err = singleHeader(h, "X-Original-Method")
		if err != nil {
			return a, err
		}
		if hasURL {
			scheme, host, target, ok := rules.SplitURL(origURL)
			if !ok {
				return a, badRequest("X-Original-URL: want an absolute http(s) URL")
			}
			a.Scheme, a.Host, a.Target = scheme, host, target
		} else {
			a.Target = origURI
			if fh, ok, err := singleHeader(h, "X-Forwarded-Host"); err != nil {
				return a, err
			} else if ok {
				a.Host = fh
			}
			for _, name := range []string{"X-Forwarded-Proto", "X-Scheme"} {
				if p, ok, err := singleHeader(h, name); err != nil {
					return a, err
				} else if ok {
					a.Scheme = strings.ToLower(p)
					break
				}
			}
		}
		// Proxies pass client headers through (nginx's subrequest, Traefik
		// without authRequestHeaders), so a second description of the
		// request may be the client's: when two disagree, which one the
		// proxy acted on is unknowable. Refuse rather than guess.
		if (hasURI && origURI != a.Target) || (hasFwdURI && fwdURI != a.Target) || (hasMethod && fwdMethod != a.Method) {
			return a, badRequest("conflicting descriptions of the original request (X-Original-URL, X-Original-URI, X-Forwarded-Uri or the methods disagree)")
		}
		return a, nil
	}
	if !hasFwdURI && !hasMethod {
		return a, nil
	}
	if !hasFwdURI {
		return a, badRequest("X-Forwarded-Method without X-Forwarded-Uri")
	}
	a.Method, a.Target = fwdMethod, fwdURI
	if fh, ok, err := singleHeader(h, "X-Forwarded-Host"); err != nil {
		return a, err
	} else if ok {
		a.Host = fh
	}
	if p, ok, err := singleHeader(h, "X-Forwarded-Proto"); err != nil {
		return a, err
	} else if ok {
		a.Scheme = strings.ToLower(p)
	}
	return a, nil
}

// writeVerdict answers a forward-auth request. Allow is always exactly 200
// (Envoy treats any other 2xx as a denial); nginx never gets a 3xx (it
// would turn it into a 500). It returns the status written.
func (s *Server) writeVerdict(w http.ResponseWriter, req *http.Request, a *Attempt, v *Verdict) int {
	h := w.Header()
	if v.Allowed() {
		// Envoy adds the headers it gets and leaves the client's others in
		// place, so it needs every identity header, empty ones erasing
		// spoofed values. Traefik (authResponseHeaders) and nginx
		// (auth_request_set + proxy_set_header) drop each listed header
		// from the upstream request whether or not we send it: empty ones
		// would only cost bytes on both sides.
		all := a.Dialect == DialectEnvoyHTTP
		vals := make([]string, 0, 6)
		for _, ih := range v.Identity.headers() {
			if ih.value == "" && !all {
				continue
			}
			vals = append(vals, ih.value)
			h[ih.name] = vals[len(vals)-1:]
		}
		s.upstreamCredentialHeaders(h, a, v)
		w.WriteHeader(http.StatusOK)
		return http.StatusOK
	}
	return s.writeDenial(w, req, a, v)
}

// upstreamCredentialHeaders tells the proxy how to take our credential off
// the upstream request. Envoy removes the headers we name. Traefik
// (authResponseHeaders) and nginx (auth_request_set) replace the headers
// we return: Authorization and Cookie come back without our token.
func (s *Server) upstreamCredentialHeaders(h http.Header, a *Attempt, v *Verdict) {
	if a.Dialect == DialectEnvoyHTTP {
		r := v.CredentialRemoval(a)
		if r.Cookie != "" {
			h.Set("Cookie", r.Cookie)
		}
		h.Set("X-Envoy-Auth-Headers-To-Remove", strings.Join(r.Headers, ", "))
		return
	}
	// Direct map reads: the names are canonical already.
	if auth := a.Header["Authorization"]; len(auth) > 0 && auth[0] != "" && v.source&fromAuthorization == 0 {
		h["Authorization"] = auth[:1]
	}
	// One Cookie line: nginx's $upstream_http_cookie sees only the first.
	if rest := withoutTokenCookie(a.Header); rest != "" {
		h.Set("Cookie", rest)
	}
}

// writeDenial answers a denied request: problem JSON, WWW-Authenticate on
// 401 (RFC 6750), the login URL for browsers, Retry-After on 429. It
// returns the status written.
func (s *Server) writeDenial(w http.ResponseWriter, req *http.Request, a *Attempt, v *Verdict) int {
	h := w.Header()
	status, p := s.classify(v.Err)
	if v.Status != 0 {
		status = v.Status
		p.Code = status
	}
	switch status {
	case http.StatusUnauthorized:
		www := `Bearer realm="portcullis"`
		if v.invalidToken {
			www += `, error="invalid_token"`
		}
		h.Set("WWW-Authenticate", www)
		if v.LoginURL != "" {
			h.Set(HeaderLoginURL, v.LoginURL)
			h.Set("Location", v.LoginURL)
			if s.cfg.LoginRedirect && a.Dialect != DialectNginx && wantsHTML(a.Header) && a.Method == http.MethodGet {
				w.WriteHeader(http.StatusFound)
				return http.StatusFound
			}
		}
	case http.StatusTooManyRequests:
		h.Set("Retry-After", strconv.Itoa(max(1, v.RetryAfter)))
	}
	if status >= 500 || status == http.StatusBadRequest {
		lvl := slog.LevelDebug
		if status >= 500 {
			lvl = slog.LevelError
		}
		s.log.Log(req.Context(), lvl, "decision failed", "status", status, "dialect", string(a.Dialect),
			"method", a.Method, "host", a.Host, "path", v.Path.String(), "err", v.Err.Error())
	}
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if req.Method != http.MethodHead {
		_ = json.NewEncoder(w).Encode(p)
	}
	return status
}

// wantsHTML reports whether the client is a browser navigating.
func wantsHTML(h http.Header) bool {
	return strings.Contains(h.Get("Accept"), "text/html")
}

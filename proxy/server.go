// Package proxy is everything HTTP in Portcullis: the echo server, the
// contaxy-compatible REST API, the OAuth2 endpoints and the AuthZEN API.
// It calls authz for every decision and never touches the store itself.
package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy/accesslog"
	"github.com/portcullis/portcullis/proxy/rules"
)

// Config tunes the HTTP API.
type Config struct {
	// AllowQueryToken accepts the ct_token query parameter (contaxy; off by
	// default because URLs end up in logs and Referer headers).
	AllowQueryToken bool
	// MaxBodyBytes bounds request bodies; larger ones get 413. Default 1 MiB.
	MaxBodyBytes int64
	// OpenRegistration lets anyone create a user with POST /users.
	OpenRegistration bool
	// SecureCookies forces the Secure attribute on cookies even for plain
	// HTTP requests (set it when TLS ends in front of Portcullis).
	SecureCookies bool
	Logger        *slog.Logger

	// Routes map requests to permissions for forward-auth and the proxy.
	// Nil: no rules (every request is unmatched).
	Routes *rules.Table
	// ShadowRoutes are evaluated beside Routes and only reported.
	ShadowRoutes *rules.Table
	// Unmatched decides requests no rule matches: UnmatchedDeny (default)
	// or UnmatchedAuthenticated (any valid credential).
	Unmatched string
	// PathOptions tune request-target normalisation.
	PathOptions rules.PathOptions
	// TrustedProxies may set X-Forwarded-*, X-Original-* and Forwarded.
	TrustedProxies TrustedProxies
	// LoginURL is where browsers without credentials are sent to sign in;
	// "" leaves the login hint out.
	LoginURL string
	// LoginRedirect answers such browsers with a 302 in the Traefik,
	// Envoy and proxy dialects (never nginx), instead of a 401 with a
	// Location hint.
	LoginRedirect bool
	// AllowedRedirectHosts may be return targets after sign-in (exact
	// names, or ".suffix" for subdomains).
	AllowedRedirectHosts []string
	// Upstream, when set, turns on the reverse proxy for every request
	// that is not one of Portcullis's own endpoints.
	Upstream *url.URL
	// APIPrefix moves Portcullis's own endpoints under a path prefix
	// (e.g. "/.portcullis") so they cannot collide with the app's paths.
	APIPrefix string
	Proxy     ProxyConfig
	// Assertion configures signed identity assertions for upstreams.
	Assertion AssertionConfig
	// SubjectRateLimit and ClientRateLimit throttle decisions per subject
	// and per client address (429 with Retry-After).
	SubjectRateLimit, ClientRateLimit RateLimit
	// PublicURL is the absolute URL under which clients reach Portcullis's
	// endpoints (API prefix included), e.g. "https://auth.example.com". It
	// is the OAuth2 issuer in the metadata, and the origin that browser
	// form posts must come from. Empty: taken from each request (Host, or
	// X-Forwarded-Host/-Proto from a trusted proxy).
	PublicURL string
	// LoginFailureRateLimit throttles failed password sign-ins per client
	// address on this replica (the per-account budget, shared by all
	// replicas, is authz's). Zero: DefaultLoginFailureRateLimit; a
	// negative Rate switches it off.
	LoginFailureRateLimit RateLimit
	// Registerer receives the server's metrics; nil: not registered.
	Registerer prometheus.Registerer
	// AccessLog receives one line per request; nil: no access log.
	AccessLog *accesslog.Logger
	// AuditLog receives one record per administrative change; nil: none.
	AuditLog *slog.Logger
	// Tracer traces decisions, API requests and upstream calls, and
	// propagates W3C trace context upstream; nil: no tracing, at no cost.
	Tracer trace.Tracer
	// OIDCProviders are the external OpenID Connect providers the sign-in
	// page offers (docs/sso.md).
	OIDCProviders []OIDCProvider
	// DisablePasswordLogin hides the password form and refuses
	// POST /auth/login, so that people sign in only through a provider.
	DisablePasswordLogin bool
}

// AssertionConfig configures the X-Auth-Assertion JWT.
type AssertionConfig struct {
	// Always adds the assertion to every allow (else only when the
	// forward-auth URL asks with ?assertion=true).
	Always bool
	// Audience of the assertion; default: the original request's host.
	Audience string
	// TTL is its lifetime. Default 1 minute.
	TTL time.Duration
}

// Server is the HTTP face of Portcullis. It is an http.Handler.
type Server struct {
	cfg     Config
	svc     *authz.Service
	log     *slog.Logger
	echo    *echo.Echo
	shadows *rules.Table
	limits  *limits
	// loginLimiter counts failed password sign-ins per client address.
	loginLimiter *limiter
	metrics      *metrics
	reverse      *httputil.ReverseProxy
	// canonicalPermissions caches canonical ?permission= values.
	canonicalPermissions permissionCache
	access               *accesslog.Logger
	audit                *slog.Logger
	tracer               trace.Tracer
	// sso holds the external sign-in providers by id.
	sso          map[string]*ssoProvider
	ssoCallbacks *prometheus.CounterVec
	ssoStarts    *limiter
}

// RevisionHeader carries the store revision a write committed at; clients
// pass it back as at_least_revision to read their own writes.
const RevisionHeader = "X-Portcullis-Revision"

// New builds the server and registers every route.
func New(svc *authz.Service, cfg Config) *Server {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Routes == nil {
		cfg.Routes, _ = rules.Compile(nil)
	}
	if cfg.Unmatched == "" {
		cfg.Unmatched = UnmatchedDeny
	}
	if cfg.Assertion.TTL <= 0 {
		cfg.Assertion.TTL = time.Minute
	}
	cfg.APIPrefix = strings.TrimSuffix(cfg.APIPrefix, "/")
	cfg.Proxy.setDefaults()
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	// The client address: the connection's, or from forwarded headers
	// when the peer is a configured trusted proxy.
	e.IPExtractor = cfg.TrustedProxies.IPExtractor()
	s := &Server{cfg: cfg, svc: svc, log: cfg.Logger, echo: e, shadows: cfg.ShadowRoutes, access: cfg.AccessLog, audit: cfg.AuditLog, tracer: cfg.Tracer}
	if cfg.SubjectRateLimit.Rate > 0 || cfg.ClientRateLimit.Rate > 0 {
		s.limits = &limits{subject: newLimiter(cfg.SubjectRateLimit, time.Now), client: newLimiter(cfg.ClientRateLimit, time.Now)}
	}
	if cfg.LoginFailureRateLimit == (RateLimit{}) {
		cfg.LoginFailureRateLimit = DefaultLoginFailureRateLimit
	}
	s.loginLimiter = newLimiter(cfg.LoginFailureRateLimit, time.Now)
	s.cfg.PublicURL = strings.TrimSuffix(cfg.PublicURL, "/")
	s.metrics = newMetrics(cfg.Registerer)
	s.sso = newSSOProviders(cfg.OIDCProviders)
	s.ssoCallbacks = newSSOMetrics(cfg.Registerer, cfg.OIDCProviders)
	s.ssoStarts = newLimiter(ssoStartLimit, time.Now)
	if cfg.Upstream != nil {
		s.reverse = s.newReverseProxy()
	}
	e.HTTPErrorHandler = s.handleError
	e.Use(withScope)
	if s.access != nil {
		e.Use(s.logAPI)
	}
	if s.tracer != nil {
		e.Use(s.traceAPI)
	}
	e.Use(s.limitBody, s.refuseCrossSite)
	s.routes()
	return s
}

// ServeHTTP serves Portcullis's own endpoints and, when an upstream is
// configured, authorizes and proxies everything else. Forward-auth
// requests, the hot path, skip echo's routing and middleware.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(r.TransferEncoding) > 0 && r.ProtoMajor == 1 {
		// net/http lets Transfer-Encoding override a Content-Length sent
		// beside it and drops the Content-Length before we see it. A proxy
		// in front that went by the Content-Length would take the rest of
		// the chunked body for a request of its own: RFC 9112 §6.1 has
		// the server close the connection after answering, so nothing
		// pipelined behind a chunked body is read as another request.
		w.Header().Set("Connection", "close")
	}
	apiPath, uri := r.URL.Path, r.RequestURI
	if s.cfg.APIPrefix != "" {
		rest, ok := cutPathPrefix(apiPath, s.cfg.APIPrefix)
		if !ok && apiPath == metadataPath+s.cfg.APIPrefix {
			// RFC 8414 §3.1: the metadata of an issuer with a path
			// component is at the well-known URI with the path appended.
			rest, uri = metadataPath, metadataPath
		} else if !ok {
			if s.reverse != nil {
				s.serveProxy(w, r)
				return
			}
			s.echo.ServeHTTP(w, r)
			return
		}
		apiPath = rest
		uri, _ = strings.CutPrefix(uri, s.cfg.APIPrefix)
	} else if s.reverse != nil && !ownPath(apiPath) {
		s.serveProxy(w, r)
		return
	}
	switch {
	case apiPath == "/auth/forward" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		s.serveForward(w, r)
		return
	case strings.HasPrefix(apiPath, envoyPrefix+"/") && envoyMethods[r.Method]:
		s.serveEnvoy(w, r, strings.TrimPrefix(uri, envoyPrefix))
		return
	}
	if apiPath != r.URL.Path {
		r2 := new(http.Request)
		*r2 = *r
		u := *r.URL
		u.Path, u.RawPath = apiPath, ""
		r2.URL = &u
		r2.RequestURI = uri
		r = r2
	}
	s.echo.ServeHTTP(w, r)
}

// envoyMethods are the methods the Envoy HTTP dialect serves; others
// (WebDAV) are served by the gRPC dialect only.
var envoyMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true, http.MethodTrace: true,
}

// ownPaths are Portcullis's endpoints when no API prefix is set; in proxy
// mode the app cannot use them.
var ownPaths = []string{"/auth", "/users", "/access/v1", "/openapi.json", "/.well-known"}

func ownPath(p string) bool {
	for _, own := range ownPaths {
		if _, ok := cutPathPrefix(p, own); ok {
			return true
		}
	}
	return false
}

// cutPathPrefix matches prefix at a segment boundary: "/auth" matches
// "/auth" and "/auth/x", not "/author".
func cutPathPrefix(p, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(p, prefix)
	if !ok || (rest != "" && rest[0] != '/') {
		return "", false
	}
	if rest == "" {
		rest = "/"
	}
	return rest, true
}

// Routes lists the registered routes as "METHOD PATH", for the OpenAPI drift test.
func (s *Server) Routes() []string {
	var out []string
	for _, r := range s.echo.Routes() {
		if r.Method == echo.RouteNotFound {
			continue
		}
		out = append(out, r.Method+" "+r.Path)
	}
	return out
}

func (s *Server) routes() {
	e := s.echo
	e.GET("/openapi.json", s.openAPI)

	e.GET("/auth/tokens", s.listTokens)
	e.POST("/auth/tokens", s.createToken)
	e.DELETE("/auth/tokens/:id", s.deleteToken)
	e.POST("/auth/tokens/verify", s.verify)

	e.GET("/auth/permissions", s.listPermissions)
	e.POST("/auth/permissions", s.addPermission)
	e.DELETE("/auth/permissions", s.removePermission)
	e.GET("/auth/resources", s.listResources)

	e.POST("/auth/oauth/token", s.token)
	e.POST("/auth/oauth/revoke", s.revoke)
	e.POST("/auth/oauth/introspect", s.introspect)
	e.GET("/auth/oauth/authorize", s.page(s.authorize))
	e.POST("/auth/oauth/authorize", s.page(s.authorize))
	e.GET(metadataPath, s.serverMetadata)
	e.GET("/.well-known/openid-configuration", s.serverMetadata)
	e.GET("/.well-known/jwks.json", s.jwks)
	e.POST("/auth/keys/rotate", s.rotateSigningKey)

	e.POST("/auth/clients", s.createClient)
	e.GET("/auth/clients", s.listClients)
	e.GET("/auth/clients/:id", s.getClient)
	e.DELETE("/auth/clients/:id", s.deleteClient)

	e.GET("/auth/login-page", s.page(s.loginPage))
	e.GET("/auth/login", s.page(s.loginGet))
	e.POST("/auth/login", s.page(s.login))
	e.GET("/auth/logout", s.page(s.logout))
	e.POST("/auth/logout", s.page(s.logout))
	e.GET("/auth/account", s.page(s.account))
	e.POST("/auth/account/tokens", s.page(s.createAccountToken))
	e.POST("/auth/account/tokens/:id/revoke", s.page(s.revokeAccountToken))
	e.GET("/auth/static/:file", s.static)
	e.GET("/auth/oauth/enabled", s.oauthEnabled)
	e.GET("/auth/oauth/login/:provider", s.page(s.ssoLogin))
	e.GET("/auth/oauth/callback", s.page(s.ssoCallback))

	e.GET("/users", s.listUsers)
	e.POST("/users", s.createUser)
	e.GET("/users/me", s.me)
	e.GET("/users/:id", s.getUser)
	e.PATCH("/users/:id", s.updateUser)
	e.DELETE("/users/:id", s.deleteUser)
	// contaxy's custom method: PUT /users/{id}:change-password. echo's
	// router keeps ":change-password" in the id parameter.
	e.PUT("/users/:id", s.changePassword)
	e.GET("/users/:id/token", s.userToken)

	e.GET("/auth/forward", s.forwardAuth)
	e.HEAD("/auth/forward", s.forwardAuth)
	// Envoy's HTTP ext_authz keeps the original method. Methods outside
	// this list (WebDAV) are served by the gRPC dialect only.
	envoy := make([]string, 0, len(envoyMethods))
	for m := range envoyMethods {
		envoy = append(envoy, m)
	}
	e.Match(envoy, envoyPrefix+"/*", s.forwardEnvoy)

	e.POST("/access/v1/evaluation", s.evaluation)
	e.POST("/access/v1/evaluations", s.evaluations)
	e.GET("/.well-known/authzen-configuration", s.authzenMetadata)
}

// limitBody bounds request bodies; reading past the limit fails with
// *http.MaxBytesError, which the error handler turns into 413.
func (s *Server) limitBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if req.ContentLength > s.cfg.MaxBodyBytes {
			return &problemError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body larger than %d bytes", s.cfg.MaxBodyBytes)}
		}
		if req.Body != nil {
			req.Body = http.MaxBytesReader(c.Response(), req.Body, s.cfg.MaxBodyBytes)
		}
		return next(c)
	}
}

// setRevision reports the revision a write committed at.
func setRevision(c echo.Context, rev authz.Revision) {
	if rev > 0 {
		c.Response().Header().Set(RevisionHeader, strconv.FormatInt(rev, 10))
	}
}

// queryBool parses contaxy's booleans: true/True/false/False (and 1/0).
func queryBool(c echo.Context, name string, def bool) (bool, error) {
	v := c.QueryParam(name)
	switch v {
	case "":
		return def, nil
	case "true", "True", "TRUE", "1":
		return true, nil
	case "false", "False", "FALSE", "0":
		return false, nil
	}
	return false, badRequest(fmt.Sprintf("query parameter %s: %q is not a boolean (true or false)", name, v))
}

// queryOne returns a query parameter given at most once.
func queryOne(c echo.Context, name string) (string, error) {
	vs := c.QueryParams()[name]
	if len(vs) > 1 {
		return "", badRequest("query parameter " + name + " given more than once")
	}
	if len(vs) == 0 {
		return "", nil
	}
	return vs[0], nil
}

func queryRequired(c echo.Context, name string) (string, error) {
	v, err := queryOne(c, name)
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(v) == "" {
		return "", badRequest("query parameter " + name + " is required")
	}
	return v, nil
}

// readJSONString reads a body that is a single JSON string (contaxy sends
// tokens and passwords that way). An empty body returns ok=false.
func readJSONString(c echo.Context) (string, bool, error) {
	body, err := io.ReadAll(c.Request().Body)
	if err != nil {
		return "", false, err
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return "", false, nil
	}
	var s string
	if err := decodeStrict(body, &s); err != nil {
		return "", false, badRequest("body must be a JSON string")
	}
	return s, true, nil
}

var errTrailing = errors.New("trailing data after JSON value")

package proxy_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/rules"
)

// sidecarRules are the route rules of the forward-auth and proxy tests.
var sidecarRules = []rules.Rule{
	{Name: "public", Path: "/public/**", Public: true},
	{Name: "cors", Path: "/api/**", Methods: []string{"OPTIONS"}, CORSPreflight: true, Permission: "api#{level}"},
	{Name: "services", Host: "api.example.com", Path: "/projects/{project}/services/{service}/**", Permission: "projects/{project}/services/{service}#{level}"},
	{Name: "project", Path: "/projects/{project}/**", Permission: "projects/{project}#{level}"},
}

// sidecar is one authz service with an API user, shared by the servers a
// test builds over it with different configurations.
type sidecar struct {
	t      *testing.T
	svc    *authz.Service
	userID string
	token  string // API token of alice: projects/p1#write
}

func newSidecar(t *testing.T) *sidecar {
	t.Helper()
	svc := newService(t)
	u, _, err := svc.CreateUser(bg, authz.UserInput{Username: "alice", Email: "alice@example.com", Password: "alicepassword"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AddPermission(bg, "users/"+u.ID, "projects/p1#write"); err != nil {
		t.Fatal(err)
	}
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}})
	if err != nil {
		t.Fatal(err)
	}
	return &sidecar{t: t, svc: svc, userID: u.ID, token: tok}
}

// server starts a Portcullis HTTP server with cfg (rules default to
// sidecarRules, trusted proxies to loopback).
func (sc *sidecar) server(cfg proxy.Config) string {
	sc.t.Helper()
	if cfg.Routes == nil {
		tbl, err := rules.Compile(sidecarRules)
		if err != nil {
			sc.t.Fatal(err)
		}
		cfg.Routes = tbl
	}
	if cfg.TrustedProxies == nil {
		cfg.TrustedProxies, _ = proxy.ParseTrustedProxies([]string{"127.0.0.0/8", "::1"})
	}
	srv := httptest.NewServer(proxy.New(sc.svc, cfg))
	sc.t.Cleanup(srv.Close)
	return srv.URL
}

// send sends a request built by newRequest and closes the body.
func send(t *testing.T, method, u string, headers ...string) *http.Response {
	t.Helper()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(newRequest(t, method, u, nil, headers...))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// newRequest builds a request with headers given as "Name: value" pairs;
// a name given twice is sent twice, "Host" sets the Host.
func newRequest(t *testing.T, method, u string, body io.Reader, headers ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ": ")
		if name == "Host" {
			req.Host = value
			continue
		}
		req.Header[name] = append(req.Header[name], value)
	}
	return req
}

func TestForwardAuthDialects(t *testing.T) {
	sc := newSidecar(t)
	base := sc.server(proxy.Config{LoginURL: "https://auth.example.com/auth/login-page", AllowedRedirectHosts: []string{"api.example.com"}})
	bearer := "Authorization: Bearer " + sc.token
	traefik := func(method, host, uri string) []string {
		return []string{"X-Forwarded-Method: " + method, "X-Forwarded-Proto: https", "X-Forwarded-Host: " + host, "X-Forwarded-Uri: " + uri, "X-Forwarded-For: 203.0.113.7"}
	}
	with := func(a []string, more ...string) []string { return append(append([]string{}, a...), more...) }

	cases := []struct {
		name    string
		method  string
		path    string
		headers []string
		status  int
		check   func(*testing.T, *http.Response)
	}{
		{name: "traefik read", path: "/auth/forward", headers: with(traefik("GET", "api.example.com", "/projects/p1/services/s1/x?q=1"), bearer), status: 200,
			check: func(t *testing.T, r *http.Response) {
				want := map[string]string{"X-Auth-Subject": "users/" + sc.userID, "X-Auth-User-Id": sc.userID, "X-Auth-Username": "alice", "X-Auth-Email": "alice@example.com", "X-Auth-Permission": "projects/p1/services/s1#read"}
				for k, v := range want {
					if got := r.Header.Get(k); got != v {
						t.Errorf("%s = %q, want %q", k, got, v)
					}
				}
				if r.Header.Get("Authorization") != "" {
					t.Errorf("our token echoed back for the upstream: %q", r.Header.Get("Authorization"))
				}
				// Traefik and nginx drop every listed header from the
				// upstream request anyway: no empty ones on the wire.
				if v, ok := r.Header["X-Auth-Assertion"]; ok {
					t.Errorf("empty X-Auth-Assertion sent to Traefik: %q", v)
				}
			}},
		{name: "traefik write", path: "/auth/forward", headers: with(traefik("POST", "api.example.com", "/projects/p1/services/s1"), bearer), status: 200},
		{name: "traefik admin denied", path: "/auth/forward", headers: with(traefik("DELETE", "api.example.com", "/projects/p1/services/s1"), bearer), status: 403},
		{name: "other project denied", path: "/auth/forward", headers: with(traefik("GET", "api.example.com", "/projects/p2/services/s1"), bearer), status: 403},
		{name: "boundary p1x denied", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1x/a"), bearer), status: 403},
		{name: "dot segments resolved before matching", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1/../p2/a"), bearer), status: 403},
		{name: "encoded dots resolved", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p2/%2e%2e/p1/a"), bearer), status: 200},
		{name: "encoded slash refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1%2F..%2Fp2/a"), bearer), status: 400},
		{name: "backslash refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1\\..\\p2/a"), bearer), status: 400},
		{name: "double encoding refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1%252F..%252Fp2/a"), bearer), status: 400},
		{name: "raw hash refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1/a#x"), bearer), status: 400},
		{name: "semicolon refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1;x=1/a"), bearer), status: 400},
		{name: "separator in capture refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1:x/a"), bearer), status: 400},
		{name: "duplicate forwarded uri refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1/a"), bearer, "X-Forwarded-Uri: /public/x"), status: 400},
		{name: "overlong forwarded uri refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1/"+strings.Repeat("a", 9000)), bearer), status: 400},
		{name: "underscore header refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1/a"), bearer, "X_Auth_Subject: users/root"), status: 400},
		{name: "method without uri refused", path: "/auth/forward", headers: []string{"X-Forwarded-Method: GET", bearer}, status: 400},
		{name: "query never matched", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p2/a?/public/x"), bearer), status: 403},
		{name: "public without credentials", path: "/auth/forward", headers: traefik("GET", "x.example.com", "/public/a/b"), status: 200,
			check: func(t *testing.T, r *http.Response) {
				// Traefik deletes each authResponseHeaders name from the
				// upstream request before copying ours, so a spoofed
				// X-Auth-Subject goes without an empty one from us (the
				// Traefik integration test checks the upstream's view).
				if vs, ok := r.Header["X-Auth-Subject"]; ok {
					t.Errorf("public allow carries X-Auth-Subject %q", vs)
				}
			}},
		{name: "no rule denies", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/elsewhere"), bearer), status: 403},
		{name: "no credentials", path: "/auth/forward", headers: with(traefik("GET", "api.example.com", "/projects/p1/services/s1"), "Accept: text/html"), status: 401,
			check: func(t *testing.T, r *http.Response) {
				if got := r.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") || strings.Contains(got, "invalid_token") {
					t.Errorf("WWW-Authenticate = %q", got)
				}
				want := "https://auth.example.com/auth/login-page?rd=" + url.QueryEscape("https://api.example.com/projects/p1/services/s1")
				if r.Header.Get("X-Auth-Login-Url") != want || r.Header.Get("Location") != want {
					t.Errorf("login hint %q / %q, want %q", r.Header.Get("X-Auth-Login-Url"), r.Header.Get("Location"), want)
				}
			}},
		{name: "return target never carries a query token", path: "/auth/forward", headers: traefik("GET", "api.example.com", "/projects/p1/services/s1?a=1&ct_token=secret&b=2"), status: 401,
			check: func(t *testing.T, r *http.Response) {
				want := "https://auth.example.com/auth/login-page?rd=" + url.QueryEscape("https://api.example.com/projects/p1/services/s1?a=1&b=2")
				if got := r.Header.Get("X-Auth-Login-Url"); got != want {
					t.Errorf("login hint %q, want %q", got, want)
				}
			}},
		{name: "return target on a foreign host is dropped", path: "/auth/forward", headers: traefik("GET", "evil.example.net", "/projects/p1/a"), status: 401,
			check: func(t *testing.T, r *http.Response) {
				if got := r.Header.Get("X-Auth-Login-Url"); got != "https://auth.example.com/auth/login-page" {
					t.Errorf("login hint %q", got)
				}
			}},
		{name: "bad token", path: "/auth/forward", headers: with(traefik("GET", "api.example.com", "/projects/p1/services/s1"), "Authorization: Bearer pct_nope"), status: 401,
			check: func(t *testing.T, r *http.Response) {
				if !strings.Contains(r.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
					t.Errorf("WWW-Authenticate = %q", r.Header.Get("WWW-Authenticate"))
				}
			}},
		{name: "two credentials", path: "/auth/forward", headers: with(traefik("GET", "api.example.com", "/projects/p1/services/s1"), bearer, "Cookie: ct_token=other"), status: 400},
		{name: "cookie credential, other cookies kept", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1/a"), "Cookie: theme=dark; ct_token="+sc.token+"; lang=en"), status: 200,
			check: func(t *testing.T, r *http.Response) {
				if got := r.Header.Get("Cookie"); got != "theme=dark; lang=en" {
					t.Errorf("Cookie for the upstream = %q", got)
				}
			}},
		{name: "app authorization kept", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p1/a"), "ct_token: "+sc.token, "Authorization: Basic YTpi"), status: 200,
			check: func(t *testing.T, r *http.Response) {
				if got := r.Header.Get("Authorization"); got != "Basic YTpi" {
					t.Errorf("Authorization for the upstream = %q", got)
				}
			}},
		{name: "permission parameter", path: "/auth/forward?permission=" + url.QueryEscape("projects/p1#write"), headers: []string{bearer}, status: 200,
			check: func(t *testing.T, r *http.Response) {
				if r.Header.Get("X-Auth-Permission") != "projects/p1#write" {
					t.Errorf("X-Auth-Permission = %q", r.Header.Get("X-Auth-Permission"))
				}
			}},
		{name: "permission parameter denied", path: "/auth/forward?permission=" + url.QueryEscape("projects/p1#admin"), headers: []string{bearer}, status: 403},
		{name: "permission parameter malformed", path: "/auth/forward?permission=" + url.QueryEscape("projects/../x#read"), headers: []string{bearer}, status: 400},
		{name: "cors preflight without credentials", path: "/auth/forward", headers: with(traefik("OPTIONS", "x.example.com", "/api/things"), "Origin: https://app.example.com", "Access-Control-Request-Method: PUT"), status: 200},
		{name: "options without preflight headers needs credentials", path: "/auth/forward", headers: with(traefik("OPTIONS", "x.example.com", "/api/things"), "Origin: https://app.example.com"), status: 401},
		{name: "nginx ingress X-Original-URL", path: "/auth/forward", headers: []string{"X-Original-Url: https://api.example.com/projects/p1/services/s1/x", "X-Original-Method: POST", "X-Sent-From: nginx-ingress-controller", bearer}, status: 200,
			check: func(t *testing.T, r *http.Response) {
				if r.Header.Get("X-Auth-Permission") != "projects/p1/services/s1#write" {
					t.Errorf("X-Auth-Permission = %q", r.Header.Get("X-Auth-Permission"))
				}
			}},
		{name: "nginx X-Original-URI with host", path: "/auth/forward", headers: []string{"X-Original-Uri: /projects/p1/services/s1", "X-Original-Method: GET", "X-Forwarded-Host: api.example.com", bearer}, status: 200},
		{name: "client X-Original-URL beside Traefik's headers refused", path: "/auth/forward", headers: with(traefik("GET", "x.example.com", "/projects/p2/a"), "X-Original-Url: http://x.example.com/public/x", "X-Original-Method: GET"), status: 400},
		{name: "X-Original-URL and X-Original-URI disagree", path: "/auth/forward", headers: []string{"X-Original-Url: http://x.example.com/public/x", "X-Original-Uri: /projects/p2/a", "X-Original-Method: GET"}, status: 400},
		{name: "ingress-nginx URL and URI agree", path: "/auth/forward", headers: []string{"X-Original-Url: http://x.example.com/projects/p1/a?q=1", "X-Original-Uri: /projects/p1/a?q=1", "X-Original-Method: GET", bearer}, status: 200},
		{name: "nginx without method refused", path: "/auth/forward", headers: []string{"X-Original-Uri: /projects/p1/a", bearer}, status: 400},
		{name: "nginx bad URL", path: "/auth/forward", headers: []string{"X-Original-Url: javascript:alert(1)", "X-Original-Method: GET", bearer}, status: 400},
		{name: "nginx never gets a redirect", path: "/auth/forward", headers: []string{"X-Original-Url: https://api.example.com/projects/p1/services/s1", "X-Original-Method: GET", "Accept: text/html"}, status: 401},
		{name: "envoy http", method: "POST", path: "/auth/forward/envoy/projects/p1/services/s1/x", headers: []string{"Host: api.example.com", "Cookie: ct_token=" + sc.token}, status: 200,
			check: func(t *testing.T, r *http.Response) {
				if got := r.Header.Get("X-Envoy-Auth-Headers-To-Remove"); got != "ct_token, cookie" {
					t.Errorf("headers to remove = %q", got)
				}
				if r.Header.Get("X-Auth-Permission") != "projects/p1/services/s1#write" {
					t.Errorf("X-Auth-Permission = %q", r.Header.Get("X-Auth-Permission"))
				}
			}},
		{name: "envoy http bearer", path: "/auth/forward/envoy/projects/p1/a?x=1", headers: []string{bearer}, status: 200,
			check: func(t *testing.T, r *http.Response) {
				if got := r.Header.Get("X-Envoy-Auth-Headers-To-Remove"); got != "ct_token, authorization" {
					t.Errorf("headers to remove = %q", got)
				}
				// Envoy leaves client headers it gets no value for: the
				// empty one erases a spoofed assertion.
				if v, ok := r.Header["X-Auth-Assertion"]; !ok || len(v) != 1 || v[0] != "" {
					t.Errorf("X-Auth-Assertion = %q (present %v), want one empty value", v, ok)
				}
			}},
		{name: "envoy http denied", method: "DELETE", path: "/auth/forward/envoy/projects/p1/a", headers: []string{bearer}, status: 403},
		{name: "envoy http ambiguous", path: "/auth/forward/envoy/projects/p1/..%2f..%2fx", headers: []string{bearer}, status: 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = "GET"
			}
			r := send(t, method, base+c.path, c.headers...)
			if r.StatusCode != c.status {
				t.Fatalf("status %d, want %d (headers %v)", r.StatusCode, c.status, r.Header)
			}
			if c.check != nil {
				c.check(t, r)
			}
		})
	}
}

func TestForwardHeadersFromUntrustedPeersAreIgnored(t *testing.T) {
	sc := newSidecar(t)
	none := proxy.TrustedProxies{}
	base := sc.server(proxy.Config{TrustedProxies: none})
	// Believed, this would be a public path; from an untrusted peer the
	// request is judged as what it is: GET /auth/forward, which no rule
	// matches.
	r := send(t, "GET", base+"/auth/forward", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /public/x", "X-Forwarded-Host: x.example.com")
	if r.StatusCode != 403 {
		t.Fatalf("status %d, want 403", r.StatusCode)
	}
	r = send(t, "GET", base+"/auth/forward", "X-Original-Url: http://x.example.com/public/x", "X-Original-Method: GET")
	if r.StatusCode != 403 {
		t.Fatalf("status %d, want 403", r.StatusCode)
	}
}

func TestForwardLoginRedirect(t *testing.T) {
	sc := newSidecar(t)
	base := sc.server(proxy.Config{LoginURL: "/auth/login-page", LoginRedirect: true})
	r := send(t, "GET", base+"/auth/forward", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /projects/p1/a", "X-Forwarded-Host: x.example.com", "X-Forwarded-Proto: https", "Accept: text/html,application/xhtml+xml")
	if r.StatusCode != 302 || r.Header.Get("Location") != "/auth/login-page" {
		t.Fatalf("browser via Traefik: %d %q", r.StatusCode, r.Header.Get("Location"))
	}
	r = send(t, "GET", base+"/auth/forward", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /projects/p1/a", "Accept: application/json")
	if r.StatusCode != 401 {
		t.Fatalf("API client via Traefik: %d", r.StatusCode)
	}
	r = send(t, "GET", base+"/auth/forward", "X-Original-Uri: /projects/p1/a", "X-Original-Method: GET", "Accept: text/html")
	if r.StatusCode != 401 || r.Header.Get("Location") == "" {
		t.Fatalf("browser via nginx: %d %q", r.StatusCode, r.Header.Get("Location"))
	}
}

func TestForwardRateLimits(t *testing.T) {
	sc := newSidecar(t)
	base := sc.server(proxy.Config{SubjectRateLimit: proxy.RateLimit{Rate: 0.5, Burst: 2}})
	uri := base + "/auth/forward?permission=" + url.QueryEscape("projects/p1#read")
	for i := 0; i < 2; i++ {
		if r := send(t, "GET", uri, "ct_token: "+sc.token); r.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, r.StatusCode)
		}
	}
	r := send(t, "GET", uri, "ct_token: "+sc.token)
	if r.StatusCode != 429 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("third request: %d Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}

	base = sc.server(proxy.Config{ClientRateLimit: proxy.RateLimit{Rate: 0.5, Burst: 1}})
	uri = base + "/auth/forward?permission=" + url.QueryEscape("projects/p1#read")
	if r := send(t, "GET", uri, "X-Forwarded-For: 198.51.100.1", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /", "ct_token: "+sc.token); r.StatusCode != 200 {
		t.Fatalf("first client: %d", r.StatusCode)
	}
	if r := send(t, "GET", uri, "X-Forwarded-For: 198.51.100.1", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /", "ct_token: "+sc.token); r.StatusCode != 429 {
		t.Fatalf("same client again: %d", r.StatusCode)
	}
	if r := send(t, "GET", uri, "X-Forwarded-For: 198.51.100.2", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /", "ct_token: "+sc.token); r.StatusCode != 200 {
		t.Fatalf("another client behind the same proxy: %d", r.StatusCode)
	}
}

func TestForwardRevocationIsImmediate(t *testing.T) {
	sc := newSidecar(t)
	base := sc.server(proxy.Config{})
	uri := base + "/auth/forward?permission=" + url.QueryEscape("projects/p1#read")
	if r := send(t, "GET", uri, "ct_token: "+sc.token); r.StatusCode != 200 {
		t.Fatalf("before revoke: %d", r.StatusCode)
	}
	if _, err := sc.svc.RemovePermission(bg, "users/"+sc.userID, "projects/p1#write", false); err != nil {
		t.Fatal(err)
	}
	if r := send(t, "GET", uri, "ct_token: "+sc.token); r.StatusCode != 403 {
		t.Fatalf("after the grant was removed: %d", r.StatusCode)
	}
	if _, err := sc.svc.RevokeToken(bg, nil, sc.token); err != nil {
		t.Fatal(err)
	}
	if r := send(t, "GET", uri, "ct_token: "+sc.token); r.StatusCode != 401 {
		t.Fatalf("after revoke: %d", r.StatusCode)
	}
}

func TestForwardIdentityAssertion(t *testing.T) {
	sc := newSidecar(t)
	base := sc.server(proxy.Config{})
	r := send(t, "GET", base+"/auth/forward?assertion=true", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /projects/p1/services/s1", "X-Forwarded-Host: api.example.com:8443", "ct_token: "+sc.token)
	if r.StatusCode != 200 {
		t.Fatalf("status %d", r.StatusCode)
	}
	assertion := r.Header.Get("X-Auth-Assertion")
	if assertion == "" {
		t.Fatal("no assertion")
	}
	keys := sc.svc.PublicKeys()
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(assertion, claims, func(tok *jwt.Token) (any, error) {
		for _, k := range keys {
			if k.ID == tok.Header["kid"] {
				return k.Key, nil
			}
		}
		return nil, errors.New("unknown kid")
	}, jwt.WithValidMethods([]string{"EdDSA", "ES256"}), jwt.WithAudience("api.example.com"), jwt.WithExpirationRequired())
	if err != nil {
		t.Fatalf("assertion does not verify with the published keys: %v", err)
	}
	if claims["sub"] != "users/"+sc.userID || claims["permission"] != "projects/p1/services/s1#read" || claims["preferred_username"] != "alice" {
		t.Fatalf("claims %v", claims)
	}
	exp, _ := claims.GetExpirationTime()
	if time.Until(exp.Time) > 2*time.Minute {
		t.Fatalf("assertion lives until %v", exp)
	}
	if _, err := sc.svc.VerifyAccess(bg, assertion, "", authz.VerifyOptions{}); !errors.Is(err, authz.ErrUnauthenticated) {
		t.Fatalf("an assertion was accepted as a session token: %v", err)
	}
	if r := send(t, "GET", base+"/auth/forward", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /projects/p1/a", "ct_token: "+sc.token); r.Header.Get("X-Auth-Assertion") != "" {
		t.Fatal("assertion sent without being asked for")
	}
}

func TestShadowRules(t *testing.T) {
	sc := newSidecar(t)
	shadow, err := rules.Compile([]rules.Rule{{Path: "/projects/{project}/**", Permission: "projects/{project}#admin"}})
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry()
	base := sc.server(proxy.Config{ShadowRoutes: shadow, Registerer: reg})
	r := send(t, "GET", base+"/auth/forward", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /projects/p1/a", "ct_token: "+sc.token)
	if r.StatusCode != 200 {
		t.Fatalf("shadow rules changed the verdict: %d", r.StatusCode)
	}
	if got := counterValue(t, reg, "portcullis_shadow_route_disagreements_total", "would_deny"); got != 1 {
		t.Fatalf("disagreements = %v, want 1", got)
	}
	send(t, "GET", base+"/auth/forward", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /public/a")
	if got := counterValue(t, reg, "portcullis_shadow_route_disagreements_total", "would_deny"); got != 2 {
		t.Fatalf("disagreements = %v, want 2", got)
	}
}

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

// counterValue reads one labelled counter from a registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

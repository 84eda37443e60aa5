package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/portcullis/portcullis/proxy"
)

// Envoy's HTTP ext_authz, replayed: deploy/envoy/envoy-http.yaml is loaded
// into Envoy's own configuration types and validated, and every client
// request goes through what Envoy does with it — the connection manager's
// X-Forwarded-Proto/-For, the header_mutation filter, then ext_authz's
// check request (the original method, path_prefix + the original path and
// query, Host, Content-Length: 0, Authorization and the allowed_headers,
// nothing else) and its handling of the answer (only 200 allows; the
// allowed_upstream_headers are set on the app's request and
// x-envoy-auth-headers-to-remove removed from it; otherwise the client gets
// the status, the body and the allowed_client_headers; a 5xx becomes 403).
// Envoy itself is not a Debian package; this follows
// envoyproxy/envoy source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc.
// Path normalisation (normalize_path, merge_slashes,
// path_with_escaped_slashes_action) is not replayed: the raw paths go to
// Portcullis as an Envoy without those options would send them.
func TestEnvoyHTTPExtAuthz(t *testing.T) {
	sc := newSidecar(t)
	const login = "https://login.example.com/sign-in"
	portcullis := sc.server(proxy.Config{LoginURL: login, AllowedRedirectHosts: []string{"app.example.com"}})
	recipe := loadEnvoyHTTP(t, portcullis)
	// The same Envoy without the header_mutation filter.
	bare := *recipe
	bare.removeFirst = nil
	variants := map[string]*envoyHTTP{"recipe": recipe, "without header_mutation": &bare}

	bearer := "Authorization: Bearer " + sc.token
	identity := map[string]string{
		"X-Auth-Subject":    "users/" + sc.userID,
		"X-Auth-User-Id":    sc.userID,
		"X-Auth-Username":   "alice",
		"X-Auth-Email":      "alice@example.com",
		"X-Auth-Permission": "projects/p1#read",
	}

	for vname, e := range variants {
		t.Run(vname, func(t *testing.T) {
			t.Run("the check request", func(t *testing.T) {
				r := e.serve(t, "POST", "/projects/p1/items?x=1", bearer, "Cookie: theme=dark", "Content-Type: application/json", "User-Agent: curl", "X-Original-Url: http://app.example.com/public/x", "X-Forwarded-Proto: https")
				want := []string{
					"POST " + envoyPrefix + "/projects/p1/items?x=1 HTTP/1.1",
					"Host: app.example.com",
					"content-length: 0",
					"authorization: Bearer " + sc.token,
					"cookie: theme=dark",
					"x-forwarded-proto: http",
					"x-forwarded-for: 203.0.113.7",
				}
				if !slices.Equal(r.CheckRequest, want) {
					t.Errorf("check request\n%s\nwant\n%s", strings.Join(r.CheckRequest, "\n"), strings.Join(want, "\n"))
				}
				r.wantAllowed(t)
			})

			t.Run("allow with bearer", func(t *testing.T) {
				r := e.serve(t, "GET", "/projects/p1/a?x=1", bearer, "Cookie: theme=dark; lang=en", "X-Auth-Subject: users/root", "X-Auth-Permission: *#admin")
				r.wantAllowed(t)
				r.wantRemoved(t, []string{"ct_token", "authorization"}, "cookie")
				wantHeaders(t, r.Upstream, identity)
				wantAbsent(t, r.Upstream, "Authorization", "Ct_token")
				if c := r.Upstream.Values("Cookie"); len(c) != 1 || c[0] != "theme=dark; lang=en" {
					t.Errorf("upstream Cookie = %q", c)
				}
			})
			t.Run("allow with ct_token cookie: other cookies kept", func(t *testing.T) {
				r := e.serve(t, "PUT", "/projects/p1/items/1", "Cookie: theme=dark; ct_token="+sc.token+"; lang=en")
				r.wantAllowed(t)
				r.wantRemoved(t, []string{"ct_token"}, "cookie", "authorization")
				if c := r.Upstream.Values("Cookie"); len(c) != 1 || c[0] != "theme=dark; lang=en" {
					t.Errorf("upstream Cookie = %q", c)
				}
				if p := r.Upstream.Get("X-Auth-Permission"); p != "projects/p1#write" {
					t.Errorf("X-Auth-Permission = %q", p)
				}
			})
			t.Run("allow with only the ct_token cookie: cookie removed", func(t *testing.T) {
				r := e.serve(t, "GET", "/projects/p1/a", "Cookie: ct_token="+sc.token)
				r.wantAllowed(t)
				r.wantRemoved(t, []string{"ct_token", "cookie"})
				wantAbsent(t, r.Upstream, "Cookie")
			})
			t.Run("allow with ct_token header: the app's Basic credentials kept", func(t *testing.T) {
				r := e.serve(t, "GET", "/projects/p1/a", "ct_token: "+sc.token, "Authorization: Basic YXBwOnNlY3JldA==")
				r.wantAllowed(t)
				r.wantRemoved(t, []string{"ct_token"}, "authorization")
				wantAbsent(t, r.Upstream, "Ct_token")
				if a := r.Upstream.Values("Authorization"); len(a) != 1 || a[0] != "Basic YXBwOnNlY3JldA==" {
					t.Errorf("upstream Authorization = %q", a)
				}
			})
			t.Run("public route: spoofed identity blanked", func(t *testing.T) {
				r := e.serve(t, "GET", "/public/x", "X-Auth-Subject: users/root", "X-Auth-Email: root@example.com", "X-Auth-Assertion: forged")
				r.wantAllowed(t)
				wantBlank(t, r.Upstream, "X-Auth-Subject", "X-Auth-Email")
				if e.removeFirst == nil && r.Upstream.Get("X-Auth-Assertion") == "forged" {
					knownEngineBug(t, "Envoy HTTP: an allow without an assertion neither sets X-Auth-Assertion nor names it in x-envoy-auth-headers-to-remove, so a client-sent X-Auth-Assertion reaches the app")
				}
				wantBlank(t, r.Upstream, "X-Auth-Assertion")
			})

			for _, c := range []struct{ name, method, path string }{
				{"admin level", "DELETE", "/projects/p1/a"},
				{"other project", "GET", "/projects/p2/a"},
				{"no rule", "GET", "/elsewhere"},
				{"dot segments", "GET", "/projects/p1/../p2/a"},
				{"query never matched", "GET", "/projects/p2/a?/projects/p1/a"},
			} {
				t.Run("403 "+c.name, func(t *testing.T) {
					r := e.serve(t, c.method, c.path, bearer)
					r.wantDenied(t, 403)
					if r.Header.Get("Content-Type") != "application/json" {
						t.Errorf("client Content-Type = %q", r.Header.Get("Content-Type"))
					}
				})
			}
			t.Run("client-sent X-Original-* never reach Portcullis", func(t *testing.T) {
				e.serve(t, "GET", "/projects/p1/secret", "Accept: application/json", "X-Original-Method: GET", "X-Original-Url: http://app.example.com/public/x", "X-Original-Uri: /public/x").wantDenied(t, 401)
			})
			t.Run("401 without credentials", func(t *testing.T) {
				r := e.serve(t, "GET", "/projects/p1/a", "Accept: application/json")
				r.wantDenied(t, 401)
				if w := r.Header.Get("Www-Authenticate"); !strings.HasPrefix(w, "Bearer") {
					t.Errorf("WWW-Authenticate = %q", w)
				}
			})
			t.Run("401 bad token", func(t *testing.T) {
				r := e.serve(t, "GET", "/projects/p1/a", "Authorization: Bearer pct_forged")
				r.wantDenied(t, 401)
				if w := r.Header.Get("Www-Authenticate"); !strings.Contains(w, `error="invalid_token"`) {
					t.Errorf("WWW-Authenticate = %q", w)
				}
			})
			t.Run("401 for a browser carries the login Location", func(t *testing.T) {
				r := e.serve(t, "GET", "/projects/p1/a?tab=2", "Accept: text/html")
				r.wantDenied(t, 401)
				want := login + "?rd=" + url.QueryEscape("http://app.example.com/projects/p1/a?tab=2")
				if r.Header.Get("Location") != want || r.Header.Get("X-Auth-Login-Url") != want {
					t.Errorf("Location %q, X-Auth-Login-Url %q, want %q", r.Header.Get("Location"), r.Header.Get("X-Auth-Login-Url"), want)
				}
			})
			for _, c := range []struct{ name, path string }{
				{"encoded slash", "/projects/p1%2F..%2Fp2/a"},
				{"encoded backslash", "/projects/p1%5C..%5Cp2/a"},
				{"double encoding", "/projects/p1%252F..%252Fp2/a"},
				{"path parameter", "/projects/p1;x=1/a"},
			} {
				t.Run("400 "+c.name, func(t *testing.T) {
					e.serve(t, "GET", c.path, bearer).wantDenied(t, 400)
				})
			}
			t.Run("underscore alias of an identity header refused", func(t *testing.T) {
				e.serve(t, "GET", "/public/x", "x_auth_subject: users/root").wantDenied(t, 400)
			})
			t.Run("a method the HTTP dialect does not serve is denied", func(t *testing.T) {
				r := e.serve(t, "PROPFIND", "/projects/p1/a", bearer)
				if r.Upstream != nil {
					t.Fatalf("PROPFIND allowed: %v", r.Upstream)
				}
			})
		})
	}

	t.Run("login redirect for browsers", func(t *testing.T) {
		e := loadEnvoyHTTP(t, sc.server(proxy.Config{LoginURL: login, LoginRedirect: true, AllowedRedirectHosts: []string{"app.example.com"}}))
		r := e.serve(t, "GET", "/projects/p1/a", "Accept: text/html")
		r.wantDenied(t, 302)
		if want := login + "?rd=" + url.QueryEscape("http://app.example.com/projects/p1/a"); r.Header.Get("Location") != want {
			t.Errorf("Location = %q, want %q", r.Header.Get("Location"), want)
		}
	})

	t.Run("Portcullis unreachable: 403", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + l.Addr().String()
		l.Close()
		loadEnvoyHTTP(t, dead).serve(t, "GET", "/projects/p1/a", bearer).wantDenied(t, 403)
	})
}

// TestEnvoyGRPCConfig validates deploy/envoy/envoy-grpc.yaml: ext_authz
// over gRPC (API v3) to an HTTP/2 cluster on Portcullis's gRPC port.
func TestEnvoyGRPCConfig(t *testing.T) {
	b := loadEnvoyBootstrap(t, "envoy-grpc.yaml")
	hcm := envoyHCM(t, b)
	var ext *extauthzv3.ExtAuthz
	for _, f := range hcm.GetHttpFilters() {
		if f.GetName() == "envoy.filters.http.ext_authz" {
			ext = new(extauthzv3.ExtAuthz)
			if err := f.GetTypedConfig().UnmarshalTo(ext); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ext == nil || ext.GetGrpcService() == nil {
		t.Fatal("no gRPC ext_authz filter")
	}
	if ext.GetTransportApiVersion().String() != "V3" || ext.GetFailureModeAllow() {
		t.Errorf("transport_api_version %v, failure_mode_allow %v", ext.GetTransportApiVersion(), ext.GetFailureModeAllow())
	}
	cluster := ext.GetGrpcService().GetEnvoyGrpc().GetClusterName()
	found := false
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != cluster {
			continue
		}
		found = true
		addr := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if addr.GetAddress() != "portcullis" || addr.GetPortValue() != 9191 {
			t.Errorf("gRPC cluster points at %s:%d, want portcullis:9191", addr.GetAddress(), addr.GetPortValue())
		}
		opts := new(upstreamhttpv3.HttpProtocolOptions)
		if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(opts); err != nil {
			t.Fatalf("cluster %s: HTTP protocol options: %v", cluster, err)
		}
		if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
			t.Errorf("cluster %s does not speak HTTP/2", cluster)
		}
	}
	if !found {
		t.Fatalf("no cluster %s", cluster)
	}
	// The per-route fixed permission is a context extension.
	perm := ""
	for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
		if cfg, ok := vh.GetTypedPerFilterConfig()["envoy.filters.http.ext_authz"]; ok {
			per := new(extauthzv3.ExtAuthzPerRoute)
			if err := cfg.UnmarshalTo(per); err != nil {
				t.Fatal(err)
			}
			perm = per.GetCheckSettings().GetContextExtensions()["permission"]
		}
	}
	if perm != "apps/grafana#read" {
		t.Errorf("context extension permission = %q", perm)
	}
}

// envoyPrefix is http_service.path_prefix in the recipe.
const envoyPrefix = "/auth/forward/envoy"

// loadEnvoyBootstrap reads a deploy/envoy file into Envoy's bootstrap
// configuration, rejecting unknown fields, and validates it.
func loadEnvoyBootstrap(t *testing.T, name string) *bootstrapv3.Bootstrap {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "envoy", name))
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	b := new(bootstrapv3.Bootstrap)
	if err := protojson.Unmarshal(js, b); err != nil {
		t.Fatalf("%s is not a valid Envoy bootstrap: %v", name, err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

// envoyHCM is the first listener's HTTP connection manager, validated.
func envoyHCM(t *testing.T, b *bootstrapv3.Bootstrap) *hcmv3.HttpConnectionManager {
	t.Helper()
	ls := b.GetStaticResources().GetListeners()
	if len(ls) == 0 || len(ls[0].GetFilterChains()) == 0 || len(ls[0].GetFilterChains()[0].GetFilters()) == 0 {
		t.Fatal("no listener with a filter chain")
	}
	hcm := new(hcmv3.HttpConnectionManager)
	if err := ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	if err := hcm.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	return hcm
}

// envoyHTTP is the HTTP ext_authz part of the recipe, aimed at a
// Portcullis at base.
type envoyHTTP struct {
	base        string
	removeFirst []string // header_mutation, before ext_authz
	ext         *extauthzv3.ExtAuthz
}

func loadEnvoyHTTP(t *testing.T, base string) *envoyHTTP {
	t.Helper()
	b := loadEnvoyBootstrap(t, "envoy-http.yaml")
	hcm := envoyHCM(t, b)
	if !hcm.GetUseRemoteAddress().GetValue() {
		t.Error("use_remote_address must be on: Envoy then sets X-Forwarded-Proto itself")
	}
	e := &envoyHTTP{base: base}
	seenAuthz := false
	for _, f := range hcm.GetHttpFilters() {
		switch f.GetName() {
		case "envoy.filters.http.header_mutation":
			if seenAuthz {
				t.Fatal("header_mutation must run before ext_authz")
			}
			hm := new(headermutationv3.HeaderMutation)
			if err := f.GetTypedConfig().UnmarshalTo(hm); err != nil {
				t.Fatal(err)
			}
			for _, m := range hm.GetMutations().GetRequestMutations() {
				if r := m.GetRemove(); r != "" {
					e.removeFirst = append(e.removeFirst, strings.ToLower(r))
				}
			}
		case "envoy.filters.http.ext_authz":
			seenAuthz = true
			e.ext = new(extauthzv3.ExtAuthz)
			if err := f.GetTypedConfig().UnmarshalTo(e.ext); err != nil {
				t.Fatal(err)
			}
			if err := e.ext.ValidateAll(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if e.ext == nil || e.ext.GetHttpService() == nil {
		t.Fatal("envoy-http.yaml: no HTTP ext_authz filter")
	}
	hs := e.ext.GetHttpService()
	if hs.GetPathPrefix() != envoyPrefix {
		t.Errorf("path_prefix %q, want %q", hs.GetPathPrefix(), envoyPrefix)
	}
	for _, h := range []string{"cookie", "ct_token", "x-forwarded-proto"} {
		if !envoyMatches(e.ext.GetAllowedHeaders(), h) {
			t.Errorf("allowed_headers does not let %s through", h)
		}
	}
	for _, h := range []string{"x-auth-subject", "x-auth-user-id", "x-auth-username", "x-auth-email", "x-auth-permission", "cookie"} {
		if !envoyMatches(hs.GetAuthorizationResponse().GetAllowedUpstreamHeaders(), h) {
			t.Errorf("allowed_upstream_headers does not take %s", h)
		}
	}
	return e
}

// envoyMatches applies a ListStringMatcher to a lower-case header name.
func envoyMatches(l *matcherv3.ListStringMatcher, name string) bool {
	for _, m := range l.GetPatterns() {
		v, n := name, name
		pat := func(p string) string {
			if m.GetIgnoreCase() {
				return strings.ToLower(p)
			}
			return p
		}
		if m.GetIgnoreCase() {
			n = strings.ToLower(v)
		}
		switch {
		case m.GetExact() != "" && n == pat(m.GetExact()),
			m.GetPrefix() != "" && strings.HasPrefix(n, pat(m.GetPrefix())),
			m.GetSuffix() != "" && strings.HasSuffix(n, pat(m.GetSuffix())),
			m.GetContains() != "" && strings.Contains(n, pat(m.GetContains())):
			return true
		case m.GetSafeRegex() != nil:
			if regexp.MustCompile(`^(?:` + m.GetSafeRegex().GetRegex() + `)$`).MatchString(v) {
				return true
			}
		}
	}
	return false
}

// envoyResult is what came of one request.
type envoyResult struct {
	// CheckRequest is the request line and headers sent to Portcullis.
	CheckRequest []string
	Status       int
	Header       http.Header // the client's response, when denied
	Body         string
	// Upstream is the app's request headers, when allowed.
	Upstream http.Header
	ToRemove string // x-envoy-auth-headers-to-remove
}

func (r *envoyResult) wantAllowed(t *testing.T) {
	t.Helper()
	if r.Upstream == nil {
		t.Fatalf("denied with %d (%v, %s), want allowed", r.Status, r.Header, r.Body)
	}
}

func (r *envoyResult) wantDenied(t *testing.T, status int) {
	t.Helper()
	if r.Upstream != nil {
		t.Fatalf("allowed (the app got %v), want %d", r.Upstream, status)
	}
	if r.Status != status {
		t.Fatalf("status %d (%v, %s), want %d", r.Status, r.Header, r.Body, status)
	}
}

// wantRemoved checks x-envoy-auth-headers-to-remove: it names every
// header in want and none in keep (it may name more, such as blank
// identity headers).
func (r *envoyResult) wantRemoved(t *testing.T, want []string, keep ...string) {
	t.Helper()
	named := map[string]bool{}
	for name := range strings.SplitSeq(r.ToRemove, ",") {
		named[strings.ToLower(strings.TrimSpace(name))] = true
	}
	for _, h := range want {
		if !named[h] {
			t.Errorf("x-envoy-auth-headers-to-remove = %q, lacks %s", r.ToRemove, h)
		}
	}
	for _, h := range keep {
		if named[h] {
			t.Errorf("x-envoy-auth-headers-to-remove = %q, removes %s", r.ToRemove, h)
		}
	}
}

// envoyHeader is one request header as Envoy keeps it: lower-case name.
type envoyHeader struct{ name, value string }

// serve runs one client request (from 203.0.113.7 to app.example.com
// unless "Host: ..." is given) through Envoy.
func (e *envoyHTTP) serve(t *testing.T, method, path string, headers ...string) *envoyResult {
	t.Helper()
	authority := "app.example.com"
	var hs []envoyHeader
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ": ")
		if name == "Host" {
			authority = value
			continue
		}
		hs = append(hs, envoyHeader{strings.ToLower(name), value})
	}
	del := func(name string) {
		hs = slices.DeleteFunc(hs, func(h envoyHeader) bool { return h.name == name })
	}
	// The connection manager with use_remote_address: its own
	// X-Forwarded-Proto, the peer appended to X-Forwarded-For.
	del("x-forwarded-proto")
	hs = append(hs, envoyHeader{"x-forwarded-proto", "http"})
	xff := "203.0.113.7"
	for _, h := range hs {
		if h.name == "x-forwarded-for" {
			xff = h.value + ", " + xff
		}
	}
	del("x-forwarded-for")
	hs = append(hs, envoyHeader{"x-forwarded-for", xff})
	hs = append(hs, envoyHeader{"x-request-id", "0f2c7c5e-1d4b-4e4e-9b7a-3b9f6c1d2e3f"})
	for _, name := range e.removeFirst {
		del(name)
	}

	// The check request: Content-Length: 0, then every header that is
	// allowed (Authorization always), in the request's order; the method,
	// the path and the authority make the request line and Host.
	hsv := e.ext.GetHttpService()
	lines := []string{fmt.Sprintf("%s %s%s HTTP/1.1", method, hsv.GetPathPrefix(), path), "Host: " + authority, "content-length: 0"}
	seen := map[string]bool{}
	for _, h := range hs {
		if seen[h.name] || (h.name != "authorization" && !envoyMatches(e.ext.GetAllowedHeaders(), h.name)) {
			continue
		}
		seen[h.name] = true
		// Envoy's CheckRequest keeps one value per name (joined).
		var vs []string
		for _, h2 := range hs {
			if h2.name == h.name {
				vs = append(vs, h2.value)
			}
		}
		lines = append(lines, h.name+": "+strings.Join(vs, ","))
	}
	for _, add := range hsv.GetAuthorizationRequest().GetHeadersToAdd() {
		lines = append(lines, strings.ToLower(add.GetKey())+": "+add.GetValue())
	}
	res := &envoyResult{CheckRequest: lines}

	status, rh, body, err := rawHTTP(e.base, lines)
	if err != nil || status >= 500 {
		// status_on_error, 403 by default.
		res.Status = http.StatusForbidden
		if s := e.ext.GetStatusOnError().GetCode(); s != 0 {
			res.Status = int(s)
		}
		return res
	}
	res.ToRemove = rh.Get("X-Envoy-Auth-Headers-To-Remove")
	rh.Del("X-Envoy-Auth-Headers-To-Remove")
	if status != http.StatusOK {
		res.Status, res.Body = status, body
		res.Header = http.Header{}
		allowed := hsv.GetAuthorizationResponse().GetAllowedClientHeaders()
		for k, vs := range rh {
			lk := strings.ToLower(k)
			ok := lk != "host"
			if len(allowed.GetPatterns()) > 0 {
				ok = envoyMatches(allowed, lk) || slices.Contains([]string{"content-length", "www-authenticate", "location"}, lk)
			}
			if ok {
				res.Header[k] = vs
			}
		}
		return res
	}
	res.Status = status
	up := http.Header{}
	for _, h := range hs {
		up.Add(textproto.CanonicalMIMEHeaderKey(h.name), h.value)
	}
	for k, vs := range rh {
		if envoyMatches(hsv.GetAuthorizationResponse().GetAllowedUpstreamHeaders(), strings.ToLower(k)) {
			up[textproto.CanonicalMIMEHeaderKey(k)] = []string{vs[0]}
		}
	}
	for name := range strings.SplitSeq(res.ToRemove, ",") {
		if name = strings.TrimSpace(name); name != "" && name != "host" && !strings.HasPrefix(name, ":") {
			up.Del(textproto.CanonicalMIMEHeaderKey(name))
		}
	}
	res.Upstream = up
	return res
}

// rawHTTP sends a request written line by line, exactly, and reads the
// answer.
func rawHTTP(base string, lines []string) (int, http.Header, string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return 0, nil, "", err
	}
	c, err := net.DialTimeout("tcp", u.Host, 2*time.Second)
	if err != nil {
		return 0, nil, "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, strings.Join(lines, "\r\n")+"\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, nil, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, "", err
	}
	return resp.StatusCode, resp.Header, string(b), nil
}

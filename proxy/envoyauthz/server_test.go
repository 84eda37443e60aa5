package envoyauthz_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/accesslog"
	"github.com/portcullis/portcullis/proxy/envoyauthz"
	"github.com/portcullis/portcullis/proxy/rules"
	"github.com/portcullis/portcullis/store/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

var bg = context.Background()

// sidecarRules are the proxy package's forward-auth test rules.
var sidecarRules = []rules.Rule{
	{Name: "public", Path: "/public/**", Public: true},
	{Name: "services", Host: "api.example.com", Path: "/projects/{project}/services/{service}/**", Permission: "projects/{project}/services/{service}#{level}"},
	{Name: "project", Path: "/projects/{project}/**", Permission: "projects/{project}#{level}"},
}

// sidecar is an authz service with alice (projects/p1#write) and her API
// token, and an Envoy ext_authz gRPC server over it.
type sidecar struct {
	t      *testing.T
	svc    *authz.Service
	userID string
	token  string
}

func newSidecar(t *testing.T) *sidecar {
	t.Helper()
	svc := authztest.Start(t, etcdtest.NewStore(t, etcdtest.SharedEmbedded(t)), authztest.FastConfig())
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

// client serves the gRPC dialect of a Portcullis server built with cfg
// (rules default to sidecarRules) on a loopback TCP port and returns a
// real gRPC client connection to it. The server is stopped through its
// context when the test ends, and must return nil.
func (sc *sidecar) client(cfg proxy.Config) *grpc.ClientConn {
	sc.t.Helper()
	if cfg.Routes == nil {
		tbl, err := rules.Compile(sidecarRules)
		if err != nil {
			sc.t.Fatal(err)
		}
		cfg.Routes = tbl
	}
	conn, _ := serve(sc.t, proxy.New(sc.svc, cfg))
	return conn
}

// serve runs envoyauthz.Serve over d on 127.0.0.1 and returns a client
// connection and a function that stops the server and returns Serve's
// error (also called at cleanup).
func serve(t *testing.T, d envoyauthz.Decider) (*grpc.ClientConn, func() error) {
	t.Helper()
	return serveDraining(t, d, nil)
}

// serveDraining is serve with the draining signal of a process shutdown.
func serveDraining(t *testing.T, d envoyauthz.Decider, draining <-chan struct{}) (*grpc.ClientConn, func() error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	errc := make(chan error, 1)
	go func() { errc <- envoyauthz.Serve(ctx, lis, d, draining) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var stopped bool
	var serveErr error
	stop := func() error {
		if stopped {
			return serveErr
		}
		stopped = true
		cancel()
		select {
		case serveErr = <-errc:
		case <-time.After(30 * time.Second):
			serveErr = errors.New("Serve did not return after its context was cancelled")
		}
		return serveErr
	}
	t.Cleanup(func() {
		conn.Close()
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return conn, stop
}

// envoyRequest builds a CheckRequest as Envoy's gRPC ext_authz filter
// sends it for an HTTP/1.1 request: all headers with lower-case names,
// pseudo headers included, the path with its query, the peer's address.
// kv are extra "name: value" headers; a name given twice is merged with
// ',' as Envoy does.
func envoyRequest(method, host, target string, kv ...string) *authv3.CheckRequest {
	h := map[string]string{
		":authority":                     host,
		":method":                        method,
		":path":                          target,
		":scheme":                        "https",
		"user-agent":                     "curl/8.5.0",
		"accept":                         "*/*",
		"x-forwarded-proto":              "https",
		"x-request-id":                   "2c1c4b5e-7a1e-4d2b-9a57-3d1c0f9e8a11",
		"x-envoy-expected-rq-timeout-ms": "15000",
	}
	for _, pair := range kv {
		name, value, _ := strings.Cut(pair, ": ")
		name = strings.ToLower(name)
		if prev, ok := h[name]; ok && !strings.HasPrefix(name, ":") && name != "accept" && name != "x-forwarded-proto" {
			value = prev + "," + value
		}
		h[name] = value
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      peer("203.0.113.7", 51234),
		Destination: peer("127.0.0.1", 10000),
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:       "14716429386513370413",
				Method:   method,
				Headers:  h,
				Path:     target,
				Host:     host,
				Scheme:   "https",
				Protocol: "HTTP/1.1",
			},
		},
	}}
}

func peer(ip string, port uint32) *authv3.AttributeContext_Peer {
	return &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}}
}

// withExtensions sets the route's context_extensions.
func withExtensions(r *authv3.CheckRequest, kv ...string) *authv3.CheckRequest {
	r.Attributes.ContextExtensions = map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		r.Attributes.ContextExtensions[kv[i]] = kv[i+1]
	}
	return r
}

// check sends r and fails on any gRPC error: denials are answers.
func check(t *testing.T, conn *grpc.ClientConn, r *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, r)
	if err != nil {
		t.Fatalf("Check: gRPC error %v (a decision is never a transport error)", err)
	}
	return resp
}

// okHeaders returns the upstream header edits of an allow, failing when
// the response is not one.
func okHeaders(t *testing.T, resp *authv3.CheckResponse) (map[string]string, *authv3.OkHttpResponse) {
	t.Helper()
	if c := codes.Code(resp.GetStatus().GetCode()); c != codes.OK {
		t.Fatalf("status %v (%q), want OK; denied: %v", c, resp.GetStatus().GetMessage(), resp.GetDeniedResponse())
	}
	ok := resp.GetOkResponse()
	if ok == nil {
		t.Fatal("allow without ok_response")
	}
	set := map[string]string{}
	for _, o := range ok.GetHeaders() {
		if o.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD || o.GetAppend() != nil {
			t.Errorf("header %q: append_action %v, want OVERWRITE_IF_EXISTS_OR_ADD", o.GetHeader().GetKey(), o.GetAppendAction())
		}
		k := o.GetHeader().GetKey()
		if _, dup := set[k]; dup {
			t.Errorf("header %q set twice", k)
		}
		set[k] = o.GetHeader().GetValue()
	}
	if got := ok.GetQueryParametersToRemove(); !slices.Equal(got, []string{"ct_token"}) {
		t.Errorf("query_parameters_to_remove = %q, want [ct_token]", got)
	}
	return set, ok
}

// denied checks a denial's gRPC code and HTTP status and returns its
// headers (lower-case names) and problem body.
func denied(t *testing.T, resp *authv3.CheckResponse, code codes.Code, status int) (map[string]string, map[string]any) {
	t.Helper()
	if c := codes.Code(resp.GetStatus().GetCode()); c != code {
		t.Fatalf("status %v, want %v (response %v)", c, code, resp)
	}
	d := resp.GetDeniedResponse()
	if d == nil {
		t.Fatalf("denial without denied_response: %v", resp)
	}
	if got := int(d.GetStatus().GetCode()); got != status {
		t.Fatalf("HTTP status %d, want %d (body %s)", got, status, d.GetBody())
	}
	h := map[string]string{}
	for _, o := range d.GetHeaders() {
		h[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	var body map[string]any
	if status != 302 {
		if h["content-type"] != "application/json" {
			t.Errorf("content-type %q", h["content-type"])
		}
		if err := json.Unmarshal([]byte(d.GetBody()), &body); err != nil {
			t.Fatalf("body %q: %v", d.GetBody(), err)
		}
		if body["code"] != float64(status) || body["message"] == "" {
			t.Errorf("problem body %v", body)
		}
	}
	return h, body
}

func TestCheckAllow(t *testing.T) {
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{})
	identity := func(permission string) map[string]string {
		return map[string]string{
			"x-auth-subject":    "users/" + sc.userID,
			"x-auth-user-id":    sc.userID,
			"x-auth-username":   "alice",
			"x-auth-email":      "alice@example.com",
			"x-auth-permission": permission,
		}
	}
	cases := []struct {
		name       string
		req        *authv3.CheckRequest
		permission string
		remove     []string
		cookie     string // the upstream's Cookie header, when set
	}{
		{name: "bearer, read with a query",
			req:        envoyRequest("GET", "api.example.com", "/projects/p1/services/s1/x?q=1&ct_token=junk", "authorization: Bearer "+sc.token),
			permission: "projects/p1/services/s1#read", remove: []string{"ct_token", "authorization"}},
		{name: "only cookie is ct_token",
			req:        envoyRequest("POST", "api.example.com", "/projects/p1/services/s1", "cookie: ct_token="+sc.token, "content-type: application/json", "content-length: 2"),
			permission: "projects/p1/services/s1#write", remove: []string{"ct_token", "cookie"}},
		{name: "other cookies kept",
			req:        envoyRequest("GET", "x.example.com:8443", "/projects/p1/a", "cookie: theme=dark; ct_token="+sc.token+"; lang=en"),
			permission: "projects/p1#read", remove: []string{"ct_token"}, cookie: "theme=dark; lang=en"},
		{name: "ct_token header, app authorization kept",
			req:        envoyRequest("PUT", "x.example.com", "/projects/p1/a", "ct_token: "+sc.token, "authorization: Basic YTpi", "cookie: theme=dark"),
			permission: "projects/p1#write", remove: []string{"ct_token"}},
		{name: "spoofed identity headers overwritten",
			req:        envoyRequest("GET", "x.example.com", "/projects/p1/a", "authorization: Bearer "+sc.token, "x-auth-subject: users/root", "x-auth-permission: *#admin", "x-auth-assertion: forged"),
			permission: "projects/p1#read", remove: []string{"ct_token", "authorization"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			set, ok := okHeaders(t, check(t, conn, c.req))
			for k, v := range identity(c.permission) {
				if got, present := set[k]; !present || got != v {
					t.Errorf("%s = %q (set: %v), want %q", k, got, present, v)
				}
			}
			if got, present := set["cookie"]; c.cookie != "" && got != c.cookie || c.cookie == "" && present {
				t.Errorf("cookie for the upstream = %q (set: %v), want %q", got, present, c.cookie)
			}
			if _, present := set["x-auth-assertion"]; present {
				t.Error("assertion sent without being asked for")
			}
			want := 5
			if c.cookie != "" {
				want++
			}
			if len(set) != want {
				t.Errorf("unexpected upstream headers %v", set)
			}
			// The client's X-Auth-Assertion must not reach the upstream.
			wantRemove := append(slices.Clone(c.remove), "x-auth-assertion")
			if got := ok.GetHeadersToRemove(); !slices.Equal(got, wantRemove) {
				t.Errorf("headers_to_remove = %q, want %q", got, wantRemove)
			}
		})
	}
}

func TestCheckPublicBlanksIdentity(t *testing.T) {
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{})
	set, ok := okHeaders(t, check(t, conn, envoyRequest("GET", "x.example.com", "/public/a/b", "x-auth-subject: users/root", "cookie: ct_token=whatever; a=b")))
	for _, k := range []string{"x-auth-subject", "x-auth-user-id", "x-auth-username", "x-auth-email", "x-auth-permission"} {
		if v, present := set[k]; present {
			t.Errorf("%s = %q: a public allow must remove it, not set it", k, v)
		}
	}
	for _, k := range []string{"x-auth-subject", "x-auth-user-id", "x-auth-username", "x-auth-email", "x-auth-permission", "x-auth-assertion", "ct_token"} {
		if !slices.Contains(ok.GetHeadersToRemove(), k) {
			t.Errorf("headers_to_remove %q lacks %s", ok.GetHeadersToRemove(), k)
		}
	}
	if set["cookie"] != "a=b" {
		t.Errorf("an unchecked credential still goes: cookie = %q", set["cookie"])
	}
}

func TestCheckDenials(t *testing.T) {
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{LoginURL: "https://auth.example.com/auth/login-page", AllowedRedirectHosts: []string{"api.example.com"}})
	bearer := "authorization: Bearer " + sc.token

	t.Run("no credentials", func(t *testing.T) {
		h, _ := denied(t, check(t, conn, envoyRequest("GET", "api.example.com", "/projects/p1/services/s1?x=1", "accept: text/html")), codes.Unauthenticated, 401)
		if got := h["www-authenticate"]; !strings.HasPrefix(got, "Bearer") || strings.Contains(got, "invalid_token") {
			t.Errorf("www-authenticate = %q", got)
		}
		want := "https://auth.example.com/auth/login-page?rd=" + url.QueryEscape("https://api.example.com/projects/p1/services/s1?x=1")
		if h["location"] != want || h["x-auth-login-url"] != want {
			t.Errorf("login hint %q / %q, want %q", h["location"], h["x-auth-login-url"], want)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		h, _ := denied(t, check(t, conn, envoyRequest("GET", "api.example.com", "/projects/p1/services/s1", "authorization: Bearer pct_nope")), codes.Unauthenticated, 401)
		if !strings.Contains(h["www-authenticate"], `error="invalid_token"`) {
			t.Errorf("www-authenticate = %q", h["www-authenticate"])
		}
	})
	t.Run("insufficient", func(t *testing.T) {
		h, body := denied(t, check(t, conn, envoyRequest("DELETE", "api.example.com", "/projects/p1/services/s1", bearer)), codes.PermissionDenied, 403)
		if h["www-authenticate"] != "" || h["location"] != "" {
			t.Errorf("403 with %v", h)
		}
		if body["message"] != "permission denied" {
			t.Errorf("body %v", body)
		}
	})
	t.Run("other project", func(t *testing.T) {
		denied(t, check(t, conn, envoyRequest("GET", "x.example.com", "/projects/p2/a", bearer)), codes.PermissionDenied, 403)
	})
	t.Run("no rule", func(t *testing.T) {
		denied(t, check(t, conn, envoyRequest("GET", "x.example.com", "/elsewhere", bearer)), codes.PermissionDenied, 403)
	})
	for name, target := range map[string]string{
		"encoded dot-dot-slash": "/projects/p1/%2e%2e%2fx",
		"encoded slash":         "/projects/p1%2F..%2Fp2/a",
		"double encoding":       "/projects/p1%252F..%252Fp2/a",
		"backslash":             `/projects/p1\..\p2/a`,
		"semicolon":             "/projects/p1;x=1/a",
	} {
		t.Run("ambiguous "+name, func(t *testing.T) {
			denied(t, check(t, conn, envoyRequest("GET", "x.example.com", target, bearer)), codes.PermissionDenied, 400)
		})
	}
	t.Run("encoded dots resolved", func(t *testing.T) {
		okHeaders(t, check(t, conn, envoyRequest("GET", "x.example.com", "/projects/p2/%2e%2e/p1/a", bearer)))
	})
	t.Run("fragment", func(t *testing.T) {
		r := envoyRequest("GET", "x.example.com", "/projects/p1/a", bearer)
		r.Attributes.Request.Http.Fragment = "x"
		denied(t, check(t, conn, r), codes.PermissionDenied, 400)
	})
	t.Run("underscore header", func(t *testing.T) {
		denied(t, check(t, conn, envoyRequest("GET", "x.example.com", "/projects/p1/a", bearer, "x_auth_subject: users/root")), codes.PermissionDenied, 400)
	})
	t.Run("two authorization headers", func(t *testing.T) {
		r := envoyRequest("GET", "x.example.com", "/projects/p1/a")
		r.Attributes.Request.Http.Headers = nil
		r.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":path", Value: "/projects/p1/a"},
			{Key: "authorization", Value: "Bearer " + sc.token},
			{Key: "authorization", Value: "Bearer other"},
		}}
		denied(t, check(t, conn, r), codes.PermissionDenied, 400)
	})
	t.Run("two credentials", func(t *testing.T) {
		denied(t, check(t, conn, envoyRequest("GET", "x.example.com", "/projects/p1/a", bearer, "cookie: ct_token=other")), codes.PermissionDenied, 400)
	})
	t.Run("empty request", func(t *testing.T) {
		denied(t, check(t, conn, &authv3.CheckRequest{}), codes.PermissionDenied, 400)
	})
}

func TestCheckRawHeaderMap(t *testing.T) {
	// encode_raw_headers: Envoy sends header_map (values as raw bytes)
	// instead of the headers map.
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{})
	r := envoyRequest("GET", "api.example.com", "/projects/p1/services/s1/x")
	r.Attributes.Request.Http.Headers = nil
	r.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":authority", RawValue: []byte("api.example.com")},
		{Key: ":path", RawValue: []byte("/projects/p1/services/s1/x")},
		{Key: ":method", RawValue: []byte("GET")},
		{Key: "cookie", RawValue: []byte("ct_token=" + sc.token + "; z=1")},
	}}
	set, ok := okHeaders(t, check(t, conn, r))
	if set["x-auth-permission"] != "projects/p1/services/s1#read" || set["cookie"] != "z=1" {
		t.Errorf("headers %v", set)
	}
	if slices.Contains(ok.GetHeadersToRemove(), "cookie") {
		t.Errorf("headers_to_remove %q", ok.GetHeadersToRemove())
	}
}

func TestCheckPseudoHeadersOnly(t *testing.T) {
	// A client that fills only the headers: method, host and path come
	// from the pseudo headers.
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{})
	r := envoyRequest("POST", "api.example.com", "/projects/p1/services/s1", "ct_token: "+sc.token)
	hr := r.Attributes.Request.Http
	hr.Method, hr.Host, hr.Path, hr.Scheme = "", "", "", ""
	set, _ := okHeaders(t, check(t, conn, r))
	if set["x-auth-permission"] != "projects/p1/services/s1#write" {
		t.Errorf("x-auth-permission = %q", set["x-auth-permission"])
	}
}

func TestCheckContextExtensions(t *testing.T) {
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{})
	bearer := "authorization: Bearer " + sc.token

	// The permission extension replaces the rules (no rule matches here).
	set, _ := okHeaders(t, check(t, conn, withExtensions(envoyRequest("DELETE", "x.example.com", "/elsewhere", bearer), "permission", "projects/p1#write")))
	if set["x-auth-permission"] != "projects/p1#write" {
		t.Errorf("x-auth-permission = %q", set["x-auth-permission"])
	}
	denied(t, check(t, conn, withExtensions(envoyRequest("GET", "x.example.com", "/projects/p1/a", bearer), "permission", "projects/p1#admin")), codes.PermissionDenied, 403)
	denied(t, check(t, conn, withExtensions(envoyRequest("GET", "x.example.com", "/elsewhere", bearer), "permission", "projects/../x#read")), codes.PermissionDenied, 400)
	// A client's query cannot do what the extension does.
	denied(t, check(t, conn, envoyRequest("GET", "x.example.com", "/elsewhere?permission=projects%2Fp1%23read", bearer)), codes.PermissionDenied, 403)

	// The assertion extension adds a signed identity assertion.
	set, ok := okHeaders(t, check(t, conn, withExtensions(envoyRequest("GET", "api.example.com:8443", "/projects/p1/services/s1", "ct_token: "+sc.token), "assertion", "true")))
	assertion := set["x-auth-assertion"]
	if assertion == "" {
		t.Fatal("no assertion")
	}
	if slices.Contains(ok.GetHeadersToRemove(), "x-auth-assertion") {
		t.Errorf("the assertion is removed again: %q", ok.GetHeadersToRemove())
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
	if claims["sub"] != "users/"+sc.userID || claims["permission"] != "projects/p1/services/s1#read" {
		t.Fatalf("claims %v", claims)
	}
	set, _ = okHeaders(t, check(t, conn, withExtensions(envoyRequest("GET", "api.example.com", "/projects/p1/services/s1", bearer), "assertion", "yes")))
	if _, present := set["x-auth-assertion"]; present {
		t.Error(`assertion given for "yes"`)
	}
}

func TestCheckRevocationIsImmediate(t *testing.T) {
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{})
	req := func() *authv3.CheckRequest {
		return envoyRequest("GET", "x.example.com", "/projects/p1/a", "authorization: Bearer "+sc.token)
	}
	okHeaders(t, check(t, conn, req()))
	if _, err := sc.svc.RemovePermission(bg, "users/"+sc.userID, "projects/p1#write", false); err != nil {
		t.Fatal(err)
	}
	denied(t, check(t, conn, req()), codes.PermissionDenied, 403)
	if _, err := sc.svc.RevokeToken(bg, nil, sc.token); err != nil {
		t.Fatal(err)
	}
	h, _ := denied(t, check(t, conn, req()), codes.Unauthenticated, 401)
	if !strings.Contains(h["www-authenticate"], "invalid_token") {
		t.Errorf("www-authenticate = %q", h["www-authenticate"])
	}
}

func TestCheckClientRateLimit(t *testing.T) {
	// The client address is the one Envoy reports as the source.
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{ClientRateLimit: proxy.RateLimit{Rate: 0.5, Burst: 1}})
	from := func(ip string) *authv3.CheckRequest {
		r := envoyRequest("GET", "x.example.com", "/projects/p1/a", "ct_token: "+sc.token, "x-forwarded-for: 198.51.100.9")
		r.Attributes.Source = peer(ip, 40000)
		return r
	}
	okHeaders(t, check(t, conn, from("198.51.100.1")))
	h, _ := denied(t, check(t, conn, from("198.51.100.1")), codes.PermissionDenied, 429)
	if h["retry-after"] == "" {
		t.Errorf("429 without retry-after: %v", h)
	}
	okHeaders(t, check(t, conn, from("198.51.100.2")))
}

func TestCheckLoginRedirect(t *testing.T) {
	sc := newSidecar(t)
	conn := sc.client(proxy.Config{LoginURL: "/auth/login-page", LoginRedirect: true})
	h, _ := denied(t, check(t, conn, envoyRequest("GET", "x.example.com", "/projects/p1/a", "accept: text/html,application/xhtml+xml")), codes.Unauthenticated, 302)
	if h["location"] != "/auth/login-page" {
		t.Errorf("location %q", h["location"])
	}
	denied(t, check(t, conn, envoyRequest("GET", "x.example.com", "/projects/p1/a", "accept: application/json")), codes.Unauthenticated, 401)
}

func TestHealthAndGracefulStop(t *testing.T) {
	old := envoyauthz.ShutdownGrace
	envoyauthz.ShutdownGrace = 300 * time.Millisecond
	t.Cleanup(func() { envoyauthz.ShutdownGrace = old })

	conn, stop := serve(t, stubDecider{})
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	defer cancel()
	for _, svc := range []string{"", envoyauthz.ServiceName} {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health %q: %v %v", svc, resp, err)
		}
	}
	// A watch stream never ends by itself: the shutdown must not wait
	// for it forever.
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: envoyauthz.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := watch.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", m, err)
	}
	resp := check(t, conn, envoyRequest("GET", "x.example.com", "/x"))
	if resp.GetStatus().GetCode() != 0 || resp.GetOkResponse().GetHeadersToRemove()[0] != "ct_token" {
		t.Fatalf("stub allow: %v", resp)
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	// The watcher heard NOT_SERVING (or lost the connection) before the
	// end.
	for {
		m, err := watch.Recv()
		if err != nil || m.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
	}
}

// During the shutdown delay health says NOT_SERVING, so Envoy's health
// checks take the replica out, while Check calls are still answered.
func TestDrainingTurnsHealthNotServing(t *testing.T) {
	draining := make(chan struct{})
	conn, stop := serveDraining(t, stubDecider{}, draining)
	hc := healthpb.NewHealthClient(conn)
	status := func() healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		resp, err := hc.Check(bg, &healthpb.HealthCheckRequest{Service: envoyauthz.ServiceName})
		if err != nil {
			t.Fatalf("health: %v", err)
		}
		return resp.GetStatus()
	}
	if got := status(); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("before draining: %v", got)
	}
	close(draining)
	deadline := time.Now().Add(5 * time.Second)
	for status() != healthpb.HealthCheckResponse_NOT_SERVING {
		if time.Now().After(deadline) {
			t.Fatal("health still SERVING 5s after draining began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if resp := check(t, conn, envoyRequest("GET", "x.example.com", "/x")); resp.GetStatus().GetCode() != 0 {
		t.Fatalf("Check while draining: %v, want it answered", resp)
	}
	if err := stop(); err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
}

func TestServeStopsWhenCancelledFirst(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if err := envoyauthz.Serve(ctx, lis, stubDecider{}, nil); err != nil {
		t.Fatalf("Serve with a cancelled context: %v", err)
	}
}

func TestPanicIsAnInternalError(t *testing.T) {
	conn, _ := serve(t, stubDecider{panics: true})
	_, err := authv3.NewAuthorizationClient(conn).Check(bg, envoyRequest("GET", "x.example.com", "/x"))
	if err == nil || !strings.Contains(err.Error(), "Internal") {
		t.Fatalf("err %v, want INTERNAL", err)
	}
	// The server is still there.
	if _, err := healthpb.NewHealthClient(conn).Check(bg, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
}

// stubDecider allows everything, or panics.
type stubDecider struct{ panics bool }

func (d stubDecider) Decide(context.Context, proxy.Attempt) proxy.Verdict {
	if d.panics {
		panic("boom")
	}
	return proxy.Verdict{Status: 200, Public: true}
}

func (stubDecider) Denial(context.Context, *proxy.Attempt, *proxy.Verdict) proxy.Denial {
	return proxy.Denial{Status: 403}
}

func TestCheckWritesAccessLog(t *testing.T) {
	sc := newSidecar(t)
	var out etcdtest.SyncBuffer
	access := accesslog.New(accesslog.NewWriter(&out, 0, time.Hour), accesslog.JSON)
	conn := sc.client(proxy.Config{AccessLog: access})
	allowReq := envoyRequest("GET", "api.example.com", "/projects/p1/services/s1/x?ct_token="+sc.token, "authorization: Bearer "+sc.token)
	allowReq.Attributes.Request.Http.Id = "envoy-req-1"
	okHeaders(t, check(t, conn, allowReq))
	denied(t, check(t, conn, envoyRequest("GET", "x.example.com", "/projects/p1/a")), codes.Unauthenticated, 401)
	if err := access.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), sc.token) {
		t.Fatalf("token in the access log:\n%s", out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines:\n%s", len(lines), out.String())
	}
	want := []map[string]any{
		{"dialect": "envoy-grpc", "decision": "allow", "rule": "services", "subject": "users/" + sc.userID, "path": "/projects/p1/services/s1/x", "status": 200.0, "request_id": "envoy-req-1", "host": "api.example.com"},
		{"dialect": "envoy-grpc", "decision": "unauthenticated", "rule": "project", "path": "/projects/p1/a", "status": 401.0},
	}
	for i, ln := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(ln), &got); err != nil {
			t.Fatal(err)
		}
		for k, v := range want[i] {
			if got[k] != v {
				t.Errorf("line %d: %s = %v, want %v", i, k, got[k], v)
			}
		}
	}
}

package proxy_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/accesslog"
)

// jsonLines decodes every line of out, failing on any that is not JSON.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, ln := range strings.Split(strings.TrimSpace(out), "\n") {
		if ln == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(ln), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", ln, err)
		}
		lines = append(lines, m)
	}
	return lines
}

func TestAccessLogOneLinePerRequest(t *testing.T) {
	sc := newSidecar(t)
	var out syncBuffer
	access := accesslog.New(accesslog.NewWriter(&out, 0, time.Hour), accesslog.JSON)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) }))
	t.Cleanup(upstream.Close)
	base := sc.server(proxy.Config{AccessLog: access})
	proxied := sc.server(proxy.Config{AccessLog: access, Upstream: mustURL(t, upstream.URL), APIPrefix: "/.portcullis"})
	bearer := "Authorization: Bearer " + sc.token
	traefik := func(uri string) []string {
		return []string{"X-Forwarded-Method: GET", "X-Forwarded-Proto: https", "X-Forwarded-Host: api.example.com", "X-Forwarded-Uri: " + uri}
	}

	type want struct {
		dialect, decision, rule, subject, method, host, path, requestID string
		status                                                          int
	}
	subject := "users/" + sc.userID
	cases := []struct {
		name    string
		method  string
		url     string
		headers []string
		want    want
	}{
		{"traefik allow", "GET", base + "/auth/forward", append(traefik("/projects/p1/services/s1/x?ct_token=secretish&a=b"), bearer, "X-Request-Id: req-1"),
			want{"traefik", "allow", "services", subject, "GET", "api.example.com", "/projects/p1/services/s1/x", "req-1", 200}},
		{"nginx deny keeps the subject", "GET", base + "/auth/forward", []string{"X-Original-Method: POST", "X-Original-Url: https://app.example.com/projects/p2/./a/?q=1", bearer},
			want{"nginx", "deny", "project", subject, "POST", "app.example.com", "/projects/p2/a/", "", 403}},
		{"envoy-http unauthenticated", "GET", base + "/auth/forward/envoy/projects/p1/x?token=zzz", []string{"Host: envoy.example.com"},
			want{"envoy-http", "unauthenticated", "project", "", "GET", "envoy.example.com", "/projects/p1/x", "", 401}},
		{"ambiguous target logs the raw path without query", "GET", base + "/auth/forward", append(traefik("/projects/p1%2fx?ct_token=abc"), bearer),
			want{"traefik", "deny", "", "", "GET", "api.example.com", "/projects/p1%2fx", "", 400}},
		{"proxy logs the upstream status", "GET", proxied + "/projects/p1/y?ct_token=" + sc.token, []string{bearer, "X-Request-Id: req-2"},
			want{"proxy", "allow", "project", subject, "GET", strings.TrimPrefix(proxied, "http://"), "/projects/p1/y", "req-2", 418}},
		{"api", "GET", base + "/users/me?x=1", []string{bearer},
			want{"api", "allow", "/users/me", subject, "GET", strings.TrimPrefix(base, "http://"), "/users/me", "", 200}},
		{"api under a prefix, unauthenticated", "GET", proxied + "/.portcullis/users/me", nil,
			want{"api", "unauthenticated", "/users/me", "", "GET", strings.TrimPrefix(proxied, "http://"), "/users/me", "", 401}},
	}
	for _, c := range cases {
		resp := send(t, c.method, c.url, c.headers...)
		if resp.StatusCode != c.want.status {
			t.Fatalf("%s: status %d, want %d", c.name, resp.StatusCode, c.want.status)
		}
	}
	if err := access.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), sc.token) || strings.Contains(out.String(), "secretish") || strings.Contains(out.String(), "?") {
		t.Fatalf("a token or query string reached the access log:\n%s", out.String())
	}
	lines := jsonLines(t, out.String())
	if len(lines) != len(cases) {
		t.Fatalf("%d lines for %d requests:\n%s", len(lines), len(cases), out.String())
	}
	// Lines of requests to different servers may be written in either
	// order: find each case's line by dialect, path and status.
	parsed := make([]want, len(lines))
	for i, got := range lines {
		str := func(k string) string { s, _ := got[k].(string); return s }
		parsed[i] = want{str("dialect"), str("decision"), str("rule"), str("subject"), str("method"), str("host"), str("path"), str("request_id"), int(got["status"].(float64))}
		if lat, ok := got["latency_ms"].(float64); !ok || lat < 0 || got["log"] != "access" {
			t.Errorf("line %d: latency %v log %v", i, got["latency_ms"], got["log"])
		}
	}
	for _, c := range cases {
		found := false
		for _, g := range parsed {
			if g.dialect != c.want.dialect || g.path != c.want.path || g.status != c.want.status {
				continue
			}
			found = true
			if c.want.requestID == "" && c.want.dialect == "api" {
				// The API makes up its own request id.
				if len(g.requestID) != 16 {
					t.Errorf("%s: request id %q", c.name, g.requestID)
				}
				g.requestID = ""
			}
			if g != c.want {
				t.Errorf("%s:\n got %+v\nwant %+v", c.name, g, c.want)
			}
		}
		if !found {
			t.Errorf("%s: no line; lines:\n%s", c.name, out.String())
		}
	}
}

func TestAccessLogOffWritesNothing(t *testing.T) {
	// proxy.Config without AccessLog: the forward-auth path must not
	// touch a logger at all (this would panic on a nil Logger).
	sc := newSidecar(t)
	base := sc.server(proxy.Config{})
	if resp := send(t, "GET", base+"/auth/forward?permission=projects/p1%23read", "Authorization: Bearer "+sc.token); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// TestAuditRecordsEveryAdministrativeChange changes a grant, a user, a
// token and a client through the API and expects one audit record each,
// naming the admin, the target and the revision the API reported, and
// holding no secret.
func TestAuditRecordsEveryAdministrativeChange(t *testing.T) {
	var out syncBuffer
	a := newAPI(t, proxy.Config{AuditLog: slog.New(slog.NewJSONHandler(&out, nil))})
	admin := a.admin()
	me := a.expect(a.do("GET", "/users/me", nil, bearer(admin)), 200, "me")
	var root authz.User
	me.json(t, &root)
	actor := "users/" + root.ID
	json := map[string]string{"Authorization": "Bearer " + admin, "Content-Type": "application/json"}

	type step struct {
		op     string
		r      reply
		fields map[string]any
	}
	var steps []step
	do := func(op string, r reply, fields map[string]any) reply {
		steps = append(steps, step{op, r, fields})
		return r
	}
	do("grant.add", a.expect(a.do("POST", "/auth/permissions?resource_name=roles/dev&permission=projects/p%23write", nil, bearer(admin)), 204, "add"),
		map[string]any{"resource": "roles/dev", "permission": "projects/p#write"})
	do("grant.remove", a.expect(a.do("DELETE", "/auth/permissions?resource_name=roles/dev&permission=projects/p%23write", nil, bearer(admin)), 204, "remove"),
		map[string]any{"resource": "roles/dev", "permission": "projects/p#write"})
	r := do("user.create", a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"vera","password":"verasecretpassword"}`), json), 200, "create user"),
		map[string]any{"username": "vera"})
	var vera authz.User
	r.json(t, &vera)
	steps[len(steps)-1].fields["user_id"] = vera.ID
	do("user.update", a.expect(a.do("PATCH", "/users/"+vera.ID, strings.NewReader(`{"email":"vera@example.com"}`), json), 200, "update"),
		map[string]any{"user_id": vera.ID, "fields": []any{"email"}})
	do("user.password", a.expect(a.do("PUT", "/users/"+vera.ID+":change-password", strings.NewReader(`"verasecondpassword"`), json), 204, "passwd"),
		map[string]any{"user_id": vera.ID})
	r = do("token.create", a.expect(a.do("POST", "/auth/tokens?scope=projects/p%23read&token_type=api-token&description=ci", nil, bearer(admin)), 200, "create token"),
		map[string]any{"subject": actor, "token_type": "api-token", "scopes": []any{"projects/p#read"}})
	var apiToken string
	r.json(t, &apiToken)
	var list []struct {
		ID          string `json:"id"`
		Description string `json:"description"`
	}
	a.expect(a.do("GET", "/auth/tokens", nil, bearer(admin)), 200, "list tokens").json(t, &list)
	tokenID := ""
	for _, tk := range list {
		if tk.Description == "ci" {
			tokenID = tk.ID
		}
	}
	steps[len(steps)-1].fields["token_id"] = tokenID
	do("token.revoke", a.expect(a.do("DELETE", "/auth/tokens/"+tokenID, nil, bearer(admin)), 204, "revoke token"),
		map[string]any{"token_id": tokenID})
	r = do("client.create", a.expect(a.do("POST", "/auth/clients", strings.NewReader(`{"client_id":"ci-bot","grant_types":["client_credentials"]}`), json), 201, "create client"),
		map[string]any{"client_id": "ci-bot", "subject": "clients/ci-bot", "grant_types": []any{"client_credentials"}})
	var client struct {
		Secret string `json:"client_secret"`
	}
	r.json(t, &client)
	do("client.delete", a.expect(a.do("DELETE", "/auth/clients/ci-bot", nil, bearer(admin)), 204, "delete client"),
		map[string]any{"client_id": "ci-bot"})
	do("user.delete", a.expect(a.do("DELETE", "/users/"+vera.ID, nil, bearer(admin)), 204, "delete user"),
		map[string]any{"user_id": vera.ID})
	// Reads and failed changes are not audited.
	a.expect(a.do("GET", "/users", nil, bearer(admin)), 200, "list users")
	a.expect(a.do("DELETE", "/auth/clients/ci-bot", nil, bearer(admin)), 404, "delete again")

	for _, secret := range []string{admin, apiToken, client.Secret, "verasecretpassword", "verasecondpassword", "rootpassword"} {
		if secret == "" || strings.Contains(out.String(), secret) {
			t.Fatalf("secret %q empty or in the audit log:\n%s", secret, out.String())
		}
	}
	lines := jsonLines(t, out.String())
	if len(lines) != len(steps) {
		t.Fatalf("%d audit records for %d changes:\n%s", len(lines), len(steps), out.String())
	}
	for i, s := range steps {
		got := lines[i]
		rev := s.r.header.Get(proxy.RevisionHeader)
		if got["op"] != s.op || got["actor"] != actor || got["log"] != "audit" || fmt.Sprint(got["revision"]) != rev || rev == "" {
			t.Errorf("record %d: %v; want op %s actor %s revision %s", i, got, s.op, actor, rev)
		}
		if id, _ := got["request_id"].(string); id == "" || id != s.r.header.Get("X-Request-Id") {
			t.Errorf("record %d: request_id %v, response X-Request-Id %q", i, got["request_id"], s.r.header.Get("X-Request-Id"))
		}
		for k, v := range s.fields {
			if fmt.Sprint(got[k]) != fmt.Sprint(v) {
				t.Errorf("record %d (%s): %s = %v, want %v", i, s.op, k, got[k], v)
			}
		}
	}
}

func mustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestTraceparentPassesThroughWhenTracingIsOff: without a tracer the
// proxy neither adds nor changes trace context; with one, the upstream
// sees the same trace under the proxy's upstream span.
func TestTraceparentPassesThroughWhenTracingIsOff(t *testing.T) {
	sc := newSidecar(t)
	got := make(chan string, 2)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Get("Traceparent") }))
	t.Cleanup(upstream.Close)
	const incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

	off := sc.server(proxy.Config{Upstream: mustURL(t, upstream.URL)})
	if resp := send(t, "GET", off+"/projects/p1/x", "Authorization: Bearer "+sc.token, "Traceparent: "+incoming); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if tp := <-got; tp != incoming {
		t.Fatalf("tracing off: upstream got traceparent %q, want %q untouched", tp, incoming)
	}

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(bg) })
	on := sc.server(proxy.Config{Upstream: mustURL(t, upstream.URL), Tracer: tp.Tracer("test")})
	if resp := send(t, "GET", on+"/projects/p1/x", "Authorization: Bearer "+sc.token, "Traceparent: "+incoming); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	sent := <-got
	var upstreamSpan string
	for _, s := range rec.Ended() {
		if s.Name() == "portcullis.upstream" {
			upstreamSpan = s.SpanContext().SpanID().String()
		}
	}
	if want := "00-4bf92f3577b34da6a3ce929d0e0e4736-" + upstreamSpan + "-01"; upstreamSpan == "" || sent != want {
		t.Fatalf("tracing on: upstream got %q, want %q", sent, want)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// promtool returns the path of Debian's promtool, or skips the test when
// PORTCULLIS_SKIP_PROMTOOL=1; without it and without promtool the test fails.
func promtool(t *testing.T) string {
	t.Helper()
	if os.Getenv("PORTCULLIS_SKIP_PROMTOOL") == "1" {
		t.Skip("PORTCULLIS_SKIP_PROMTOOL=1")
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: run scripts/install-test-deps.sh (Debian package prometheus), or set PORTCULLIS_SKIP_PROMTOOL=1 to skip")
	}
	return p
}

// scrape reads /metrics and parses it.
func scrape(t *testing.T, metricsAddr string) ([]byte, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return body, fams
}

// value sums the samples of family name whose labels include want (a
// histogram counts its observations).
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	sum := 0.0
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// TestMetricsEndToEnd runs the binary with embedded etcd, an upstream and
// the gRPC dialect, drives allowed, denied and unauthenticated requests
// through every dialect and the token endpoint, and checks on the live
// scrape that the series moved and that promtool accepts it. The
// deploy/ artefacts (alert rules, Grafana dashboard) are checked against
// the same scrape.
func TestMetricsEndToEnd(t *testing.T) {
	promtoolPath := promtool(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/fail") {
			http.Error(w, "upstream broke", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	defer up.Close()
	cfg := filepath.Join(t.TempDir(), "portcullis.yaml")
	conf := "upstream: " + up.URL + "\n" +
		"trusted_proxies: [127.0.0.1/32]\n" +
		"bcrypt_cost: 10\n" +
		"login_failure_limit: 2\n" +
		"routes:\n  - path: /app/**\n    permission: 'apps#{level}'\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	grpcAddr := freeAddr(t)
	api, metricsAddr, _, _ := startServe(t, "--data-dir", t.TempDir(), "--admin-password", "adminpassword", "--config", cfg, "--grpc-listen", grpcAddr)
	base := "http://" + api

	tokenRequest := func(form url.Values) (int, string) {
		t.Helper()
		resp, err := http.PostForm(base+"/auth/oauth/token", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&tok)
		return resp.StatusCode, tok.AccessToken
	}
	password := func(user, pw string) url.Values {
		return url.Values{"grant_type": {"password"}, "username": {user}, "password": {pw}}
	}
	status, admin := tokenRequest(password("admin", "adminpassword"))
	if status != 200 || admin == "" {
		t.Fatalf("admin login: %d", status)
	}
	// A user without grants: every protected request of theirs is denied.
	req, _ := http.NewRequest("POST", base+"/users", strings.NewReader(`{"username":"bob","password":"bobpassword"}`))
	req.Header.Set("Authorization", "Bearer "+admin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 && resp.StatusCode != 201 {
		t.Fatalf("create bob: %d", resp.StatusCode)
	}
	status, bob := tokenRequest(password("bob", "bobpassword"))
	if status != 200 || bob == "" {
		t.Fatalf("bob login: %d", status)
	}
	// Token endpoint outcomes: a wrong password, an unknown grant type, and
	// an account throttled after login_failure_limit failures.
	for range 3 {
		tokenRequest(password("ghost", "wrongpassword"))
	}
	tokenRequest(url.Values{"grant_type": {"telepathy"}})

	do := func(method, target string, hdr map[string]string, body string) int {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, base+target, rd)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check := func(auth string) {
		t.Helper()
		hdrs := map[string]string{}
		if auth != "" {
			hdrs["authorization"] = auth
		}
		_, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Host: "app.example.com", Path: "/app/x", Scheme: "https", Headers: hdrs,
		}}}})
		if err != nil {
			t.Fatalf("gRPC Check: %v", err)
		}
	}
	callers := map[string]string{"allow": "Bearer " + admin, "deny": "Bearer " + bob, "unauthenticated": ""}
	wantStatus := map[string]int{"allow": 200, "deny": 403, "unauthenticated": 401}
	for outcome, auth := range callers {
		h := func(extra map[string]string) map[string]string {
			out := map[string]string{}
			if auth != "" {
				out["Authorization"] = auth
			}
			for k, v := range extra {
				out[k] = v
			}
			return out
		}
		// Twice, so that the second verification is a cache hit.
		for range 2 {
			for _, c := range []struct {
				dialect, method, target string
				hdr                     map[string]string
			}{
				{"traefik", "GET", "/auth/forward", h(map[string]string{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/app/x", "X-Forwarded-Host": "app.example.com", "X-Forwarded-Proto": "https"})},
				{"nginx", "GET", "/auth/forward", h(map[string]string{"X-Original-Url": "https://app.example.com/app/x", "X-Original-Method": "GET"})},
				{"envoy-http", "GET", "/auth/forward/envoy/app/x", h(nil)},
				{"proxy", "GET", "/app/x", h(nil)},
			} {
				if got := do(c.method, c.target, c.hdr, ""); got != wantStatus[outcome] {
					t.Fatalf("%s %s: status %d, want %d", c.dialect, outcome, got, wantStatus[outcome])
				}
			}
			if got := do("POST", "/auth/tokens/verify?permission="+url.QueryEscape("apps#read"), h(nil), ""); got != wantStatus[outcome] {
				t.Fatalf("api %s: status %d, want %d", outcome, got, wantStatus[outcome])
			}
			check(auth)
		}
	}
	if got := do("GET", "/app/fail", map[string]string{"Authorization": "Bearer " + admin}, ""); got != 500 {
		t.Fatalf("upstream failure: %d", got)
	}

	body, fams := scrape(t, metricsAddr)
	for _, dialect := range []string{"traefik", "nginx", "envoy-http", "envoy-grpc", "proxy", "api"} {
		for outcome := range callers {
			if v := value(fams, "portcullis_decisions_total", map[string]string{"dialect": dialect, "outcome": outcome}); v < 2 {
				t.Errorf("decisions{dialect=%q,outcome=%q} = %v, want >= 2", dialect, outcome, v)
			}
		}
		if v := value(fams, "portcullis_decisions_total", map[string]string{"dialect": dialect, "outcome": "allow", "cache": "hit"}); v < 1 {
			t.Errorf("decisions{dialect=%q,outcome=allow,cache=hit} = %v, want >= 1", dialect, v)
		}
	}
	if v := value(fams, "portcullis_decisions_total", map[string]string{"outcome": "unauthenticated", "cache": "none"}); v < 1 {
		t.Errorf("unauthenticated decisions without a token should have cache=none: %v", v)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"portcullis_verify_duration_seconds", map[string]string{"cache": "hit"}, 1},
		{"portcullis_verify_duration_seconds", map[string]string{"cache": "miss"}, 1},
		{"portcullis_token_requests_total", map[string]string{"grant_type": "password", "outcome": "issued"}, 2},
		{"portcullis_token_requests_total", map[string]string{"grant_type": "password", "outcome": "invalid_grant"}, 2},
		{"portcullis_token_requests_total", map[string]string{"grant_type": "password", "outcome": "throttled"}, 1},
		{"portcullis_token_requests_total", map[string]string{"grant_type": "other", "outcome": "unsupported_grant_type"}, 1},
		{"portcullis_login_throttled_total", map[string]string{"limit": "account"}, 1},
		{"portcullis_upstream_request_duration_seconds", map[string]string{"class": "2xx"}, 2},
		{"portcullis_upstream_request_duration_seconds", map[string]string{"class": "5xx"}, 1},
		{"portcullis_etcd_request_duration_seconds", map[string]string{"op": "txn_write"}, 1},
		{"portcullis_etcd_request_duration_seconds", map[string]string{"op": "get"}, 1},
		{"portcullis_etcd_request_duration_seconds", map[string]string{"op": "watch_open"}, 1},
		{"portcullis_cache_cost_bytes", map[string]string{"cache": "decisions"}, 1},
		{"portcullis_cache_entries", map[string]string{"cache": "decisions"}, 1},
		{"portcullis_cache_hits_total", map[string]string{"cache": "decisions"}, 1},
		{"portcullis_cache_max_cost_bytes", map[string]string{"cache": "tokens"}, 1 << 20},
		{"portcullis_watch_healthy", nil, 1},
		{"portcullis_watch_event_lag_seconds", nil, 1},
		{"go_goroutines", nil, 1},
		{"process_resident_memory_bytes", nil, 1},
	} {
		if v := value(fams, c.name, c.labels); v < c.min {
			t.Errorf("%s%v = %v, want >= %v", c.name, c.labels, v, c.min)
		}
	}

	// Nothing a client sent becomes a label.
	for _, secret := range []string{admin, bob, "bob", "ghost", "app.example.com", "/app/x", "127.0.0.1"} {
		if bytes.Contains(body, []byte(secret)) {
			t.Errorf("the scrape contains %q, something a client sent", secret)
		}
	}

	t.Run("promtool check metrics", func(t *testing.T) {
		cmd := exec.Command(promtoolPath, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("revocation propagation", func(t *testing.T) {
		_, fams := scrape(t, metricsAddr)
		before := value(fams, "portcullis_revocation_propagation_seconds", nil)
		form := url.Values{"token": {bob}}
		req, _ := http.NewRequest("POST", base+"/auth/oauth/revoke", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+bob)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("revoke: %d", resp.StatusCode)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, fams := scrape(t, metricsAddr)
			if value(fams, "portcullis_revocation_propagation_seconds", nil) > before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("revocation_propagation_seconds count stayed at %v after the revocation", before)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if got := do("GET", "/app/x", map[string]string{"Authorization": "Bearer " + bob}, ""); got != 401 {
			t.Fatalf("revoked token: %d, want 401", got)
		}
	})

	t.Run("alert rules", func(t *testing.T) {
		dir := filepath.Join("..", "..", "deploy", "prometheus")
		for _, args := range [][]string{
			{"check", "rules", filepath.Join(dir, "portcullis-rules.yml")},
			{"test", "rules", filepath.Join(dir, "portcullis-rules_test.yml")},
		} {
			if out, err := exec.Command(promtoolPath, args...).CombinedOutput(); err != nil {
				t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		rules, err := os.ReadFile(filepath.Join(dir, "portcullis-rules.yml"))
		if err != nil {
			t.Fatal(err)
		}
		checkNames(t, "portcullis-rules.yml", string(rules), fams)
	})

	t.Run("grafana dashboard", func(t *testing.T) {
		raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "portcullis-dashboard.json"))
		if err != nil {
			t.Fatal(err)
		}
		var dash any
		if err := json.Unmarshal(raw, &dash); err != nil {
			t.Fatalf("dashboard is not valid JSON: %v", err)
		}
		var exprs []string
		var walk func(v any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, x := range v {
					if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") {
						exprs = append(exprs, s)
					}
					walk(x)
				}
			case []any:
				for _, x := range v {
					walk(x)
				}
			}
		}
		walk(dash)
		if len(exprs) < 10 {
			t.Fatalf("only %d queries found in the dashboard", len(exprs))
		}
		checkNames(t, "dashboard", strings.Join(exprs, "\n"), fams)
	})
}

var metricName = regexp.MustCompile(`\b(?:portcullis|go|process)_[a-z0-9_]+`)

// checkNames fails for every metric name in text that the scrape does not
// expose (histogram series names resolved to their family).
func checkNames(t *testing.T, what, text string, fams map[string]*dto.MetricFamily) {
	t.Helper()
	names := metricName.FindAllString(text, -1)
	if len(names) == 0 {
		t.Fatalf("%s names no metric", what)
	}
	slices.Sort(names)
	for _, n := range slices.Compact(names) {
		if fams[n] != nil {
			continue
		}
		found := false
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if f := fams[strings.TrimSuffix(n, suffix)]; strings.HasSuffix(n, suffix) && f != nil && f.GetType() == dto.MetricType_HISTOGRAM {
				found = true
			}
		}
		if !found {
			t.Errorf("%s uses %s, which the server does not expose", what, n)
		}
	}
}

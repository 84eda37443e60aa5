package proxy_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/rules"
)

// seen is what the test upstream reports about a request it received.
type seen struct {
	Method string              `json:"method"`
	Path   string              `json:"path"`
	Raw    string              `json:"raw"`
	Query  string              `json:"query"`
	Host   string              `json:"host"`
	Header map[string][]string `json:"header"`
	Sum    string              `json:"sum"`
}

// upstream is an app behind the proxy: it echoes what it received, hashes
// bodies, serves a WebSocket echo and can be slow.
type upstream struct {
	url  *url.URL
	hits atomic.Int64
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	up := &upstream{}
	mux := http.NewServeMux()
	mux.Handle("/ws/", websocket.Handler(func(c *websocket.Conn) { _, _ = io.Copy(c, c) }))
	mux.HandleFunc("/slow/", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Second)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		up.hits.Add(1)
		h := sha256.New()
		_, _ = io.Copy(h, r.Body)
		_ = json.NewEncoder(w).Encode(seen{Method: r.Method, Path: r.URL.Path, Raw: r.URL.EscapedPath(), Query: r.URL.RawQuery, Host: r.Host, Header: r.Header, Sum: hex.EncodeToString(h.Sum(nil))})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	up.url, _ = url.Parse(srv.URL)
	return up
}

func proxyGet(t *testing.T, method, u string, body io.Reader, headers ...string) (*http.Response, seen) {
	t.Helper()
	resp, err := http.DefaultClient.Do(newRequest(t, method, u, body, headers...))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s seen
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("upstream answer %q: %v", b, err)
		}
	}
	return resp, s
}

func TestReverseProxy(t *testing.T) {
	sc := newSidecar(t)
	up := newUpstream(t)
	base := sc.server(proxy.Config{Upstream: up.url, TrustedProxies: proxy.TrustedProxies{}, AllowQueryToken: true})

	t.Run("allowed request reaches the upstream without the token", func(t *testing.T) {
		resp, s := proxyGet(t, "GET", base+"/projects/p1/a/../b?x=1&ct_token="+url.QueryEscape(sc.token)+"&y=2", nil,
			"Cookie: theme=dark; ct_token="+sc.token, "Authorization: Bearer "+sc.token, "ct_token: "+sc.token,
			"X-Auth-Subject: users/root", "X.Auth.Subject: users/root", "x-auth-username: root", "X-Forwarded-For: 10.9.9.9", "X-Forwarded-Host: evil", "Forwarded: for=1.2.3.4")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if s.Path != "/projects/p1/b" || s.Query != "x=1&y=2" {
			t.Errorf("upstream saw %q ? %q", s.Path, s.Query)
		}
		h := http.Header(s.Header)
		if h.Get("Authorization") != "" || h.Get("Ct_token") != "" || strings.Contains(h.Get("Cookie"), "ct_token") || h.Get("Cookie") != "theme=dark" {
			t.Errorf("credential reached the upstream: %v", h)
		}
		if got := h.Values("X-Auth-Subject"); len(got) != 1 || got[0] != "users/"+sc.userID {
			t.Errorf("X-Auth-Subject = %q", got)
		}
		if h.Get("X.Auth.Subject") != "" || h.Get("X-Auth-Username") != "alice" || h.Get("Forwarded") != "" {
			t.Errorf("spoofed identity or forwarding headers reached the upstream: %v", h)
		}
		if h.Get("X-Forwarded-For") != "127.0.0.1" || h.Get("X-Forwarded-Proto") != "http" || h.Get("X-Forwarded-Host") == "evil" {
			t.Errorf("forwarding headers %v", h)
		}
	})
	t.Run("denied request never reaches the upstream", func(t *testing.T) {
		before := up.hits.Load()
		for _, c := range []struct {
			path   string
			hdr    []string
			status int
		}{
			{"/projects/p2/a", []string{"ct_token: " + sc.token}, 403},
			{"/projects/p1/a", nil, 401},
			{"/projects/p1/a", []string{"ct_token: pct_wrong"}, 401},
			{"/projects/p1%2f..%2fp2/a", []string{"ct_token: " + sc.token}, 400},
			{"/projects/p1/a", []string{"ct_token: " + sc.token, "X_Auth_Subject: users/root"}, 400},
			{"/elsewhere", []string{"ct_token: " + sc.token}, 403},
		} {
			resp, _ := proxyGet(t, "GET", base+c.path, nil, c.hdr...)
			if resp.StatusCode != c.status {
				t.Errorf("%s %v: status %d, want %d", c.path, c.hdr, resp.StatusCode, c.status)
			}
		}
		resp, _ := proxyGet(t, "DELETE", base+"/projects/p1/a", nil, "ct_token: "+sc.token)
		if resp.StatusCode != 403 {
			t.Errorf("DELETE needs admin: %d", resp.StatusCode)
		}
		if n := up.hits.Load() - before; n != 0 {
			t.Fatalf("upstream saw %d denied requests", n)
		}
	})
	t.Run("own endpoints stay ours", func(t *testing.T) {
		before := up.hits.Load()
		resp, _ := proxyGet(t, "GET", base+"/users/me", nil, "ct_token: "+sc.token)
		if resp.StatusCode != 200 || up.hits.Load() != before {
			t.Fatalf("/users/me: %d, upstream hits %d", resp.StatusCode, up.hits.Load()-before)
		}
	})
	t.Run("public path keeps no credential", func(t *testing.T) {
		resp, s := proxyGet(t, "GET", base+"/public/x", nil, "Cookie: ct_token="+sc.token)
		if resp.StatusCode != 200 || http.Header(s.Header).Get("Cookie") != "" || http.Header(s.Header).Get("X-Auth-Subject") != "" {
			t.Fatalf("public: %d %v", resp.StatusCode, s.Header)
		}
	})
	t.Run("large streaming body", func(t *testing.T) {
		const size = 64 << 20
		h := sha256.New()
		pr, pw := io.Pipe()
		go func() {
			chunk := bytes.Repeat([]byte("portcullis"), 6554)
			w := io.MultiWriter(pw, h)
			for n := 0; n < size; n += len(chunk) {
				_, _ = w.Write(chunk)
			}
			pw.Close()
		}()
		resp, s := proxyGet(t, "POST", base+"/projects/p1/upload", pr, "ct_token: "+sc.token)
		if resp.StatusCode != 200 || s.Sum != hex.EncodeToString(h.Sum(nil)) {
			t.Fatalf("upload: %d, upstream hash %s", resp.StatusCode, s.Sum)
		}
	})
	t.Run("other upgrades refused", func(t *testing.T) {
		for _, h := range [][]string{{"Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings", "Http2-Settings: AAMAAABkAAQAoAAAAAIAAAAA"}, {"Upgrade: tls/1.0", "Connection: Upgrade"}} {
			resp, _ := proxyGet(t, "GET", base+"/projects/p1/a", nil, append(h, "ct_token: "+sc.token)...)
			if resp.StatusCode != 400 {
				t.Errorf("%v: %d", h, resp.StatusCode)
			}
		}
	})
}

func TestReverseProxyWebSocket(t *testing.T) {
	sc := newSidecar(t)
	up := newUpstream(t)
	tbl := compileRules(t, append(sidecarRules, ruleWS))
	base := sc.server(proxy.Config{Upstream: up.url, Routes: tbl})
	wsURL := strings.Replace(base, "http://", "ws://", 1) + "/ws/p1"
	cfg, _ := websocket.NewConfig(wsURL, base)
	if _, err := websocket.DialConfig(cfg); err == nil {
		t.Fatal("WebSocket without credentials was upgraded")
	}
	cfg.Header = http.Header{"Ct_token": {sc.token}}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		t.Fatalf("authorized WebSocket: %v", err)
	}
	defer ws.Close()
	if _, err := ws.Write([]byte("hello through the gate")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := ws.Read(buf)
	if err != nil || string(buf[:n]) != "hello through the gate" {
		t.Fatalf("echo %q %v", buf[:n], err)
	}
}

func TestReverseProxyUpstreamFailures(t *testing.T) {
	sc := newSidecar(t)
	up := newUpstream(t)
	tbl := compileRules(t, append(sidecarRules, ruleWS, ruleSlow))

	slow := sc.server(proxy.Config{Upstream: up.url, Routes: tbl, Proxy: proxy.ProxyConfig{ResponseHeaderTimeout: 300 * time.Millisecond}})
	if resp, _ := proxyGet(t, "GET", slow+"/slow/x", nil, "ct_token: "+sc.token); resp.StatusCode != 504 {
		t.Fatalf("slow upstream: %d, want 504", resp.StatusCode)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downURL, _ := url.Parse("http://" + ln.Addr().String())
	ln.Close()
	down := sc.server(proxy.Config{Upstream: downURL, Routes: tbl})
	if resp, _ := proxyGet(t, "GET", down+"/projects/p1/x", nil, "ct_token: "+sc.token); resp.StatusCode != 502 {
		t.Fatalf("upstream down: %d, want 502", resp.StatusCode)
	}

	// An upstream that resets the connection mid-request.
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	go func() {
		for {
			c, err := rl.Accept()
			if err != nil {
				return
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			_, _ = c.Read(make([]byte, 1024))
			c.Close()
		}
	}()
	resetURL, _ := url.Parse("http://" + rl.Addr().String())
	reset := sc.server(proxy.Config{Upstream: resetURL, Routes: tbl})
	if resp, _ := proxyGet(t, "GET", reset+"/projects/p1/x", nil, "ct_token: "+sc.token); resp.StatusCode != 502 {
		t.Fatalf("upstream reset: %d, want 502", resp.StatusCode)
	}

	limited := sc.server(proxy.Config{Upstream: up.url, Routes: tbl, Proxy: proxy.ProxyConfig{MaxBodyBytes: 1024}})
	if resp, _ := proxyGet(t, "POST", limited+"/projects/p1/x", strings.NewReader(strings.Repeat("a", 4096)), "ct_token: "+sc.token); resp.StatusCode != 413 {
		t.Fatalf("oversize body: %d, want 413", resp.StatusCode)
	}
}

func TestAPIPrefix(t *testing.T) {
	sc := newSidecar(t)
	up := newUpstream(t)
	tbl := compileRules(t, append(sidecarRules, ruleAuthApp))
	base := sc.server(proxy.Config{Upstream: up.url, Routes: tbl, APIPrefix: "/.portcullis"})
	resp, _ := proxyGet(t, "GET", base+"/.portcullis/users/me", nil, "ct_token: "+sc.token)
	if resp.StatusCode != 200 {
		t.Fatalf("prefixed API: %d", resp.StatusCode)
	}
	resp, s := proxyGet(t, "GET", base+"/auth/tokens", nil, "ct_token: "+sc.token)
	if resp.StatusCode != 200 || s.Path != "/auth/tokens" {
		t.Fatalf("app path under /auth was not proxied: %d %+v", resp.StatusCode, s)
	}
	resp = send(t, "GET", base+"/.portcullis/auth/forward?permission="+url.QueryEscape("projects/p1#read"), "ct_token: "+sc.token)
	if resp.StatusCode != 200 || resp.Header.Get("X-Auth-Subject") != "users/"+sc.userID {
		t.Fatalf("prefixed forward-auth: %d", resp.StatusCode)
	}
}

var (
	ruleWS      = rules.Rule{Name: "ws", Path: "/ws/{project}", Permission: "projects/{project}#{level}"}
	ruleSlow    = rules.Rule{Name: "slow", Path: "/slow/**", Permission: "projects/p1#read"}
	ruleAuthApp = rules.Rule{Name: "app-auth", Path: "/auth/**", Permission: "projects/p1#read"}
)

func compileRules(t *testing.T, rs []rules.Rule) *rules.Table {
	t.Helper()
	tbl, err := rules.Compile(rs)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

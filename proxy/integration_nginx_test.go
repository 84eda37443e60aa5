//go:build linux

package proxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis/portcullis/proxy"
)

// The nginx recipe in deploy/nginx, run by a real nginx (Debian package
// nginx) between a client and a test upstream, with the decisions made by an
// in-process Portcullis:
//
//	client → nginx ─auth_request→ Portcullis (/auth/forward)
//	           └──── allowed ───→ upstream (records what it gets)
//
// The recipe file is used verbatim: only its listen port and the Portcullis
// and app addresses are replaced. (Linux only: nginx is killed with the
// test binary through Pdeathsig, so that no nginx outlives a crashed run.)
func TestNginxAuthRequest(t *testing.T) {
	bin := nginxBinary(t)
	sc := newSidecar(t)
	const login = "https://login.example.com/sign-in"
	portcullis := sc.server(proxy.Config{LoginURL: login, AllowedRedirectHosts: []string{"app.example.com"}})
	up := newRecordingUpstream(t)
	front := startNginx(t, bin, map[string]string{
		"http://portcullis:8080": portcullis,
		"http://app:3000":        up.URL,
	})

	bearer := "Authorization: Bearer " + sc.token
	host := "Host: app.example.com"
	get := func(t *testing.T, target string, headers ...string) *nginxReply {
		t.Helper()
		return nginxDo(t, "GET", front+target, nil, append([]string{host}, headers...)...)
	}
	identity := map[string]string{
		"X-Auth-Subject":    "users/" + sc.userID,
		"X-Auth-User-Id":    sc.userID,
		"X-Auth-Username":   "alice",
		"X-Auth-Email":      "alice@example.com",
		"X-Auth-Permission": "projects/p1#read",
	}

	up.run(t, "allowed with bearer: identity set, token and spoofed identity gone", func(t *testing.T) {
		r := get(t, "/projects/p1/a?x=1", bearer,
			"Cookie: theme=dark; lang=en",
			"X-Auth-Subject: users/root", "X-Auth-User-Id: root", "X-Auth-Permission: *#admin",
			"X-Auth-Assertion: forged.jwt.value")
		r.wantStatus(t, 200)
		got := up.only(t)
		if got.URI != "/projects/p1/a?x=1" || got.Method != "GET" || got.Host != "app.example.com" {
			t.Errorf("upstream got %s %s (Host %s)", got.Method, got.URI, got.Host)
		}
		wantHeaders(t, got.Header, identity)
		wantAbsent(t, got.Header, "Authorization", "Ct_token", "X-Auth-Assertion")
		if c := got.Header.Values("Cookie"); len(c) != 1 || c[0] != "theme=dark; lang=en" {
			t.Errorf("upstream Cookie = %q, want the client's other cookies", c)
		}
	})

	up.run(t, "allowed with ct_token cookie: other cookies kept", func(t *testing.T) {
		r := get(t, "/projects/p1/a", "Cookie: theme=dark; ct_token="+sc.token+"; lang=en")
		r.wantStatus(t, 200)
		got := up.only(t)
		wantHeaders(t, got.Header, identity)
		if c := got.Header.Values("Cookie"); len(c) != 1 || c[0] != "theme=dark; lang=en" {
			t.Errorf("upstream Cookie = %q", c)
		}
	})

	up.run(t, "allowed with only the ct_token cookie: no Cookie upstream", func(t *testing.T) {
		get(t, "/projects/p1/a", "Cookie: ct_token="+sc.token).wantStatus(t, 200)
		got := up.only(t)
		wantAbsent(t, got.Header, "Cookie", "Authorization", "Ct_token")
		wantHeaders(t, got.Header, identity)
	})

	up.run(t, "allowed with ct_token header: header gone, the app's own Authorization kept", func(t *testing.T) {
		get(t, "/projects/p1/a", "ct_token: "+sc.token, "Authorization: Basic YXBwOnNlY3JldA==").wantStatus(t, 200)
		got := up.only(t)
		wantAbsent(t, got.Header, "Ct_token", "Cookie")
		if a := got.Header.Values("Authorization"); len(a) != 1 || a[0] != "Basic YXBwOnNlY3JldA==" {
			t.Errorf("upstream Authorization = %q, want the app's Basic credentials", a)
		}
		for name := range got.Header {
			if strings.EqualFold(name, "ct_token") {
				t.Errorf("token header reached the upstream as %q", name)
			}
		}
	})

	up.run(t, "two Cookie lines: all cookies reach the app", func(t *testing.T) {
		get(t, "/projects/p1/a", bearer, "Cookie: theme=dark", "Cookie: lang=en").wantStatus(t, 200)
		got := up.only(t)
		c := strings.Join(got.Header.Values("Cookie"), "; ")
		if c == "theme=dark" {
			knownEngineBug(t, "forward-auth returns several Cookie lines when the cookie was not the credential; nginx's $upstream_http_cookie keeps only the first, so the app lost lang=en")
		}
		if c != "theme=dark; lang=en" {
			t.Errorf("upstream Cookie = %q", got.Header.Values("Cookie"))
		}
	})

	up.run(t, "the same token everywhere: all copies gone", func(t *testing.T) {
		get(t, "/projects/p1/a", bearer, "ct_token: "+sc.token, "Cookie: ct_token="+sc.token).wantStatus(t, 200)
		got := up.only(t)
		wantAbsent(t, got.Header, "Authorization", "Ct_token", "Cookie")
		if strings.Contains(fmt.Sprint(got.Header), sc.token) {
			t.Errorf("the token reached the upstream: %v", got.Header)
		}
	})

	up.run(t, "write with a body", func(t *testing.T) {
		body := strings.Repeat("payload ", 4096)
		r := nginxDo(t, "POST", front+"/projects/p1/items", strings.NewReader(body), host, bearer, "Content-Type: text/plain")
		r.wantStatus(t, 200)
		got := up.only(t)
		if got.Body != body {
			t.Errorf("upstream body: %d bytes, want %d", len(got.Body), len(body))
		}
		if got.Header.Get("X-Auth-Permission") != "projects/p1#write" {
			t.Errorf("X-Auth-Permission = %q", got.Header.Get("X-Auth-Permission"))
		}
	})

	up.run(t, "chunked body", func(t *testing.T) {
		// No Content-Length: the client sends Transfer-Encoding: chunked,
		// which the bodiless auth subrequest must not inherit.
		body := strings.Repeat("chunk ", 1000)
		r := nginxDo(t, "PUT", front+"/projects/p1/items/1", io.MultiReader(strings.NewReader(body)), host, bearer)
		r.wantStatus(t, 200)
		if got := up.only(t); got.Body != body {
			t.Errorf("upstream body: %d bytes, want %d", len(got.Body), len(body))
		}
	})

	up.run(t, "public route: spoofed identity removed", func(t *testing.T) {
		get(t, "/public/x", "X-Auth-Subject: users/root", "X-Auth-Username: root", "X-Auth-Assertion: forged").wantStatus(t, 200)
		got := up.only(t)
		wantAbsent(t, got.Header, "X-Auth-Subject", "X-Auth-Username", "X-Auth-Assertion", "X-Auth-Permission")
	})

	up.run(t, "no credentials: 401 with WWW-Authenticate", func(t *testing.T) {
		r := get(t, "/projects/p1/a", "Accept: application/json")
		r.wantStatus(t, 401)
		if w := r.Header.Get("WWW-Authenticate"); !strings.HasPrefix(w, "Bearer") {
			t.Errorf("WWW-Authenticate = %q", w)
		}
		if r.Header.Get("Location") != "" {
			t.Errorf("API client redirected to %q", r.Header.Get("Location"))
		}
		up.none(t)
	})

	up.run(t, "bad token: 401 invalid_token", func(t *testing.T) {
		r := get(t, "/projects/p1/a", "Authorization: Bearer pct_forged")
		r.wantStatus(t, 401)
		if w := r.Header.Get("WWW-Authenticate"); !strings.Contains(w, `error="invalid_token"`) {
			t.Errorf("WWW-Authenticate = %q", w)
		}
		up.none(t)
	})

	up.run(t, "browser without credentials: 302 to the login page via error_page", func(t *testing.T) {
		r := get(t, "/projects/p1/a?tab=2", "Accept: text/html,application/xhtml+xml")
		r.wantStatus(t, 302)
		want := login + "?rd=" + url.QueryEscape("http://app.example.com/projects/p1/a?tab=2")
		if r.Header.Get("Location") != want {
			t.Errorf("Location = %q, want %q", r.Header.Get("Location"), want)
		}
		up.none(t)
	})

	up.run(t, "browser on a host not allowed as return target: plain login page", func(t *testing.T) {
		r := nginxDo(t, "GET", front+"/projects/p1/a", nil, "Host: evil.example.net", "Accept: text/html")
		r.wantStatus(t, 302)
		if r.Header.Get("Location") != login {
			t.Errorf("Location = %q, want %q", r.Header.Get("Location"), login)
		}
		up.none(t)
	})

	forbidden := []struct {
		name, method, target string
	}{
		{"admin level", "DELETE", "/projects/p1/a"},
		{"other project", "GET", "/projects/p2/a"},
		{"no rule", "GET", "/elsewhere"},
		{"dot segments resolved before matching", "GET", "/projects/p1/../p2/a"},
	}
	for _, c := range forbidden {
		up.run(t, "403 "+c.name, func(t *testing.T) {
			nginxDo(t, c.method, front+c.target, nil, host, bearer).wantStatus(t, 403)
			up.none(t)
		})
	}

	up.run(t, "client cannot describe another request", func(t *testing.T) {
		// The subrequest carries the client's headers: a client-sent
		// X-Original-URL, X-Forwarded-Uri or X-Forwarded-Method must not
		// replace what nginx says.
		spoof := []string{
			"X-Original-URL: http://app.example.com/public/x",
			"X-Forwarded-Uri: /public/x",
			"X-Forwarded-Method: GET",
			"X-Original-Method: GET",
			"X-Original-URI: /public/x",
		}
		nginxDo(t, "GET", front+"/projects/p2/a", nil, append([]string{host, bearer}, spoof...)...).wantStatus(t, 403)
		nginxDo(t, "DELETE", front+"/projects/p1/a", nil, append([]string{host, bearer}, spoof...)...).wantStatus(t, 403)
		nginxDo(t, "GET", front+"/projects/p1/a", nil, append([]string{host, "Accept: application/json"}, spoof...)...).wantStatus(t, 401)
		up.none(t)
	})

	ambiguous := []struct{ name, target string }{
		{"encoded slash", "/projects/p1%2F..%2Fp2/a"},
		{"encoded backslash", "/projects/p1%5C..%5Cp2/a"},
		{"double encoding", "/projects/p1%252F..%252Fp2/a"},
		{"path parameter", "/projects/p1;x=1/a"},
	}
	for _, c := range ambiguous {
		up.run(t, "ambiguous path refused: "+c.name, func(t *testing.T) {
			// nginx may refuse it itself (400) or pass it on; Portcullis
			// then answers 400, which auth_request turns into 500.
			r := get(t, c.target, bearer)
			t.Logf("%s: nginx answered %d", c.target, r.Status)
			if r.Status != 400 && r.Status != 500 {
				t.Errorf("status %d, want 400 or 500", r.Status)
			}
			up.none(t)
		})
	}

	up.run(t, "underscore alias of an identity header refused", func(t *testing.T) {
		r := get(t, "/public/x", "X_Auth_Subject: users/root")
		t.Logf("nginx answered %d", r.Status)
		if r.Status == 200 {
			got := up.only(t)
			for name := range got.Header {
				if strings.Contains(name, "_") {
					t.Errorf("upstream got %s: %q", name, got.Header[name])
				}
			}
			return
		}
		r.wantStatus(t, 500)
		up.none(t)
	})
}

// TestNginxMinimalAuthHeaders runs the recipe without the lines that clear
// client-sent X-Original-URL, X-Forwarded-Uri, ...: the pattern of nginx's
// documentation (X-Original-URI, X-Original-Method, X-Forwarded-Host only).
// The subrequest then carries whatever the client sent besides, and the
// decision must still be about the request nginx describes.
func TestNginxMinimalAuthHeaders(t *testing.T) {
	bin := nginxBinary(t)
	sc := newSidecar(t)
	portcullis := sc.server(proxy.Config{})
	up := newRecordingUpstream(t)
	replace := map[string]string{
		"http://portcullis:8080": portcullis,
		"http://app:3000":        up.URL,
	}
	for _, line := range []string{
		`proxy_set_header X-Original-URL "";`,
		`proxy_set_header X-Forwarded-Uri "";`,
		`proxy_set_header X-Forwarded-Method "";`,
		`proxy_set_header X-Scheme "";`,
		`proxy_set_header X-Real-IP "";`,
		`proxy_set_header Forwarded "";`,
	} {
		replace[line] = ""
	}
	front := startNginx(t, bin, replace)
	host := "Host: app.example.com"

	up.run(t, "client-sent X-Forwarded-Uri", func(t *testing.T) {
		// Two descriptions of the request disagree: Portcullis refuses
		// with 400, which nginx reports as 500. Never an allow.
		nginxDo(t, "GET", front+"/projects/p1/secret", nil, host, "Accept: application/json", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /public/x").wantStatus(t, 500)
		up.none(t)
	})
	up.run(t, "client-sent X-Original-URL", func(t *testing.T) {
		r := nginxDo(t, "GET", front+"/projects/p1/secret", nil, host, "Accept: application/json", "X-Original-URL: http://app.example.com/public/x")
		if r.Status == 200 {
			knownEngineBug(t, "X-Original-URL is preferred to X-Original-URI: a client-sent X-Original-URL: http://app.example.com/public/x made an unauthenticated GET /projects/p1/secret through nginx an allow, and the app got it")
		}
		r.wantStatus(t, 500) // Portcullis's 400: the URL and the URI disagree
		up.none(t)
	})
}

// nginxBinary finds nginx. A missing nginx fails the test (run
// scripts/install-test-deps.sh) unless PORTCULLIS_SKIP_NGINX=1.
func nginxBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv("PORTCULLIS_SKIP_NGINX") == "1" {
		t.Skip("PORTCULLIS_SKIP_NGINX=1")
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	t.Fatal("nginx is not installed: run scripts/install-test-deps.sh (Debian package nginx), or set PORTCULLIS_SKIP_NGINX=1 to skip")
	return ""
}

// startNginx runs deploy/nginx/portcullis.conf, with the given address
// replacements, under a generated main configuration in a temporary
// directory, and returns its base URL. nginx runs in the foreground as a
// single process, everything it writes stays in the directory, and it is
// stopped when the test ends.
func startNginx(t *testing.T, bin string, replace map[string]string) string {
	t.Helper()
	recipe, err := os.ReadFile(filepath.Join("..", "deploy", "nginx", "portcullis.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for range 3 {
		base, err := tryNginx(t, bin, string(recipe), replace)
		if err == nil {
			return base
		}
		lastErr = err
		if !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	t.Fatal(lastErr)
	return ""
}

func tryNginx(t *testing.T, bin, recipe string, replace map[string]string) (string, error) {
	dir := t.TempDir()
	port, err := freePort()
	if err != nil {
		return "", err
	}
	all := map[string]string{"listen 80;": "listen 127.0.0.1:" + strconv.Itoa(port) + ";"}
	for k, v := range replace {
		all[k] = v
	}
	for from, to := range all {
		if !strings.Contains(recipe, from) {
			t.Fatalf("deploy/nginx/portcullis.conf no longer contains %q", from)
		}
		recipe = strings.ReplaceAll(recipe, from, to)
	}
	site := filepath.Join(dir, "portcullis.conf")
	if err := os.WriteFile(site, []byte(recipe), 0o644); err != nil {
		return "", err
	}
	for _, sub := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return "", err
		}
	}
	main := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr notice;
events { worker_connections 256; }
http {
    access_log %[1]s/logs/access.log;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    include %[2]s;
}
`, dir, site)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(main), 0o644); err != nil {
		return "", err
	}
	log := new(syncBuffer)
	cmd := exec.Command(bin, "-p", dir+"/", "-c", conf, "-e", "stderr")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting nginx: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			return "", fmt.Errorf("nginx exited during start: %s", log.String())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("nginx did not listen on %s: %s", addr, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			access, _ := os.ReadFile(filepath.Join(dir, "logs", "access.log"))
			t.Logf("nginx log:\n%s\naccess log:\n%s", log.String(), access)
		}
	})
	return "http://" + addr, nil
}

// freePort finds a loopback port nobody listens on (the caller retries if
// it is taken before nginx binds it).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer collects a child process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// recordingUpstream is the protected app: it records every request it
// gets and answers 200.
type recordingUpstream struct {
	URL  string
	mu   sync.Mutex
	reqs []upstreamRequest
}

type upstreamRequest struct {
	Method, URI, Host string
	Header            http.Header
	Body              string
}

func newRecordingUpstream(t *testing.T) *recordingUpstream {
	t.Helper()
	u := &recordingUpstream{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		u.mu.Lock()
		u.reqs = append(u.reqs, upstreamRequest{Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header.Clone(), Body: string(body)})
		u.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "upstream ok")
	}))
	t.Cleanup(srv.Close)
	u.URL = srv.URL
	return u
}

// run runs a subtest that starts with nothing recorded.
func (u *recordingUpstream) run(t *testing.T, name string, fn func(*testing.T)) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		u.take()
		fn(t)
	})
}

// take returns and forgets the recorded requests.
func (u *recordingUpstream) take() []upstreamRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	reqs := u.reqs
	u.reqs = nil
	return reqs
}

// only returns the single request the upstream got since the last take.
func (u *recordingUpstream) only(t *testing.T) upstreamRequest {
	t.Helper()
	reqs := u.take()
	if len(reqs) != 1 {
		t.Fatalf("upstream got %d requests, want 1: %+v", len(reqs), reqs)
	}
	return reqs[0]
}

// none checks that the upstream got nothing since the last take.
func (u *recordingUpstream) none(t *testing.T) {
	t.Helper()
	if reqs := u.take(); len(reqs) != 0 {
		t.Fatalf("a denied request reached the upstream: %+v", reqs)
	}
}

// nginxReply is a response read whole.
type nginxReply struct {
	Status int
	Header http.Header
	Body   string
}

func (r *nginxReply) wantStatus(t *testing.T, status int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; headers %v; body %q", r.Status, status, r.Header, r.Body)
	}
}

// nginxDo sends one request (headers as in newRequest) without following
// redirects, on a fresh connection.
func nginxDo(t *testing.T, method, u string, body io.Reader, headers ...string) *nginxReply {
	t.Helper()
	client := &http.Client{
		Transport:     &http.Transport{DisableKeepAlives: true},
		Timeout:       20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req := newRequest(t, method, u, body, headers...)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatal(err)
	}
	return &nginxReply{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
}

//go:build linux

package deploy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ingressNginxServer is the nginx configuration ingress-nginx generates for
// an Ingress with auth-url, auth-signin and auth-response-headers, modelled
// on its rootfs/etc/nginx/template/nginx.tmpl: the auth subrequest's
// headers, auth_request_set + proxy_set_header per response header, and the
// 401 → sign-in redirect with rd. ($escaped_request_uri needs ingress-nginx's
// Lua; plain $request_uri stands in for it.)
const ingressNginxServer = `
server {
    listen 127.0.0.1:{{port}};
    server_name {{host}};

    location = /_external-auth {
        internal;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Forwarded-Proto "";
        proxy_set_header X-Request-ID $request_id;
        proxy_set_header Host {{auth_host}};
        proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Sent-From "nginx-ingress-controller";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Auth-Request-Redirect $request_uri;
        proxy_http_version 1.1;
        proxy_pass {{auth_url}};
    }

    location @signin {
        return 302 {{signin}}?{{rd}}=$scheme://$http_host$request_uri;
    }

    location / {
        auth_request /_external-auth;
        auth_request_set $auth_cookie $upstream_http_set_cookie;
        add_header Set-Cookie $auth_cookie;
{{response_headers}}
        error_page 401 = @signin;
        proxy_set_header Host $host;
        proxy_pass {{backend}};
    }
}
`

// TestIngressNginxAnnotations runs the ingress-nginx recipe's annotations,
// rendered the way ingress-nginx renders them, in a real nginx in front of a
// recording app, with the decisions made by the portcullis binary.
func TestIngressNginxAnnotations(t *testing.T) {
	bin := nginxBinary(t)
	app, _ := ingressNginx(t)
	const prefix = "nginx.ingress.kubernetes.io/"
	authURL, err := url.Parse(app.Annotations[prefix+"auth-url"])
	if err != nil {
		t.Fatal(err)
	}

	// Portcullis believes nginx's X-Original-* (loopback here, the ingress
	// controller's pods in a cluster).
	dir := t.TempDir()
	const adminPassword = "ingress-test-admin-password"
	pwFile := filepath.Join(dir, "admin-password")
	if err := os.WriteFile(pwFile, []byte(adminPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{
		"data_dir":               filepath.Join(dir, "data"),
		"admin_password_file":    pwFile,
		"trusted_proxies":        []string{"127.0.0.1/32"},
		"allowed_redirect_hosts": []string{"app.example.com"},
		"log_level":              "error",
		"routes": []map[string]any{
			{"path": "/public/**", "public": true},
			{"path": "/projects/{project}/**", "permission": "projects/{project}#{level}"},
		},
	}
	portcullis := startPortcullis(t, func(listen, metrics, _ string) []string {
		cfg["listen"], cfg["metrics_listen"] = listen, metrics
		return []string{"serve", "--config=" + writeConfig(t, dir, "portcullis.yaml", cfg)}
	})
	token := adminToken(t, portcullis, adminPassword)

	up := &recorder{}
	upstream := httptest.NewServer(up)
	t.Cleanup(upstream.Close)

	var respHeaders strings.Builder
	for i, h := range strings.Split(app.Annotations[prefix+"auth-response-headers"], ",") {
		h = strings.TrimSpace(h)
		variable := strings.ToLower(strings.ReplaceAll(h, "-", "_"))
		fmt.Fprintf(&respHeaders, "        auth_request_set $authHeader%d $upstream_http_%s;\n        proxy_set_header '%s' $authHeader%d;\n", i, variable, h, i)
	}
	site := strings.NewReplacer(
		"{{host}}", app.Spec.Rules[0].Host,
		"{{auth_host}}", authURL.Host,
		"{{auth_url}}", portcullis+authURL.RequestURI(),
		"{{signin}}", app.Annotations[prefix+"auth-signin"],
		"{{rd}}", app.Annotations[prefix+"auth-signin-redirect-param"],
		"{{response_headers}}", respHeaders.String(),
		"{{backend}}", upstream.URL,
	).Replace(ingressNginxServer)
	front := startNginx(t, bin, site)

	do := func(t *testing.T, path string, headers ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, front+path, nil)
		req.Host = "app.example.com"
		for _, h := range headers {
			k, v, _ := strings.Cut(h, ": ")
			req.Header.Add(k, v)
		}
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}

	t.Run("no credentials: sent to the login page with rd", func(t *testing.T) {
		up.reset()
		resp := do(t, "/projects/p1/x", "Accept: text/html")
		want := app.Annotations[prefix+"auth-signin"] + "?rd=http://app.example.com/projects/p1/x"
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != want {
			t.Errorf("got %d Location %q, want 302 %s", resp.StatusCode, resp.Header.Get("Location"), want)
		}
		if up.count() != 0 {
			t.Error("the app was reached without credentials")
		}
	})

	t.Run("bearer token: identity set, token and forged identity gone", func(t *testing.T) {
		up.reset()
		resp := do(t, "/projects/p1/x", "Authorization: Bearer "+token, "X-Auth-Subject: users/root", "X-Auth-Permission: *#admin", "Cookie: theme=dark")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200", resp.StatusCode)
		}
		got := up.last(t)
		if got.Get("X-Auth-Username") != "admin" || !strings.HasPrefix(got.Get("X-Auth-Subject"), "users/") || got.Get("X-Auth-Subject") == "users/root" {
			t.Errorf("app got X-Auth-Username %q, X-Auth-Subject %q", got.Get("X-Auth-Username"), got.Get("X-Auth-Subject"))
		}
		if got.Get("X-Auth-Permission") != "projects/p1#read" {
			t.Errorf("app got X-Auth-Permission %q, want projects/p1#read", got.Get("X-Auth-Permission"))
		}
		if a := got.Values("Authorization"); len(a) > 0 {
			t.Errorf("the token reached the app: Authorization %q", a)
		}
		if c := got.Get("Cookie"); c != "theme=dark" {
			t.Errorf("app got Cookie %q, want the client's other cookie", c)
		}
	})

	t.Run("public route: no identity, forged headers removed", func(t *testing.T) {
		up.reset()
		resp := do(t, "/public/logo.png", "X-Auth-Subject: users/root", "X-Auth-Username: root")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200", resp.StatusCode)
		}
		got := up.last(t)
		for _, h := range identityHeaders {
			if v := got.Values(h); len(v) > 0 {
				t.Errorf("app got %s %q on a public route", h, v)
			}
		}
	})

	t.Run("invalid token: 401 becomes the sign-in redirect, app not reached", func(t *testing.T) {
		up.reset()
		resp := do(t, "/projects/p1/x", "Authorization: Bearer not-a-token")
		if resp.StatusCode != http.StatusFound || up.count() != 0 {
			t.Errorf("status %d, app reached %d times; want 302 and 0", resp.StatusCode, up.count())
		}
	})
}

// adminToken signs in as the bootstrap admin and returns the access token.
func adminToken(t *testing.T, base, password string) string {
	t.Helper()
	resp, err := http.PostForm(base+"/auth/oauth/token", url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {password}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		t.Fatalf("admin sign-in: %d %v", resp.StatusCode, err)
	}
	return tok.AccessToken
}

// recorder is the app behind nginx: it keeps the headers of each request.
type recorder struct {
	mu   sync.Mutex
	seen []http.Header
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.seen = append(r.seen, req.Header.Clone())
	r.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (r *recorder) reset() { r.mu.Lock(); r.seen = nil; r.mu.Unlock() }

func (r *recorder) count() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.seen) }

func (r *recorder) last(t *testing.T) http.Header {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) != 1 {
		t.Fatalf("the app got %d requests, want 1", len(r.seen))
	}
	return r.seen[0]
}

func nginxBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv("PORTCULLIS_SKIP_NGINX") == "1" {
		t.Skip("PORTCULLIS_SKIP_NGINX=1")
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	t.Fatal("nginx is not installed: run scripts/install-test-deps.sh (Debian package nginx), or set PORTCULLIS_SKIP_NGINX=1 to skip")
	return ""
}

// startNginx runs nginx in the foreground with site (a server block whose
// listen port is {{port}}) and returns its base URL; nginx dies with the
// test binary (Pdeathsig) and is stopped when the test ends.
func startNginx(t *testing.T, bin, site string) string {
	t.Helper()
	for attempt := 1; ; attempt++ {
		base, logs, err := tryNginx(t, bin, site)
		if err == nil {
			return base
		}
		if attempt < 3 && strings.Contains(logs, "Address already in use") {
			continue
		}
		t.Fatalf("%v\n%s", err, logs)
	}
}

func tryNginx(t *testing.T, bin, site string) (base, logs string, err error) {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	for _, sub := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, strings.ReplaceAll(site, "{{port}}", port))
	file := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", file)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "http://" + addr, "", nil
		}
		select {
		case <-done:
			return "", out.String(), fmt.Errorf("nginx exited")
		default:
		}
		if time.Now().After(deadline) {
			return "", out.String(), fmt.Errorf("nginx not listening after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

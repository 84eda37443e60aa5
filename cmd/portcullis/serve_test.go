package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/portcullis/portcullis/store/etcdtest"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "portcullis-bin-")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "portcullis")
	if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServe runs the binary and waits until /readyz answers 200. stop ends
// the process and waits for it; it is also registered as a cleanup.
func startServe(t *testing.T, args ...string) (api, metrics string, logs *etcdtest.SyncBuffer, stop func()) {
	t.Helper()
	p := startServeProcess(t, args...)
	return p.api, p.metrics, p.logs, p.stop
}

// served is a running portcullis serve process.
type served struct {
	api, metrics string
	logs         *etcdtest.SyncBuffer
	cmd          *exec.Cmd
	// stop interrupts the process (SIGINT) and waits for it.
	stop func()
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *served) kill() {
	_ = p.cmd.Process.Kill()
	p.stop()
}

func startServeProcess(t *testing.T, args ...string) *served {
	t.Helper()
	p := &served{api: freeAddr(t), metrics: freeAddr(t), logs: &etcdtest.SyncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, binPath, append([]string{"serve", "--listen", p.api, "--metrics-listen", p.metrics, "--log-format", "text"}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 20 * time.Second
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd = cmd
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(p.stop)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + p.metrics + "/readyz"); err == nil {
			resp.Body.Close()
			// The log arrives through a pipe copied by another goroutine, so
			// readiness alone does not mean the start-up lines are in the
			// buffer; "portcullis serving" is logged last and the pipe keeps order.
			if resp.StatusCode == 200 && strings.Contains(p.logs.String(), "portcullis serving") {
				return p
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("server not ready after 60s; logs:\n%s", p.logs)
	return nil
}

// passwordLogin signs in with the password grant at base (the server's
// URL with its API prefix) and returns the access token.
func passwordLogin(t *testing.T, base, user, password string) string {
	t.Helper()
	resp, err := http.PostForm(base+"/auth/oauth/token", url.Values{"grant_type": {"password"}, "username": {user}, "password": {password}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	if tok.AccessToken == "" {
		t.Fatalf("login as %s: %d", user, resp.StatusCode)
	}
	return tok.AccessToken
}

func TestSecondProcessOnSameDataDirFailsFast(t *testing.T) {
	dir := t.TempDir()
	startServe(t, "--data-dir", dir, "--admin-password", "adminpassword")
	start := time.Now()
	cmd := exec.Command(binPath, "serve", "--data-dir", dir, "--listen", freeAddr(t), "--metrics-listen", freeAddr(t))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("second process on the same data dir started:\n%s", out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("second process took %v to fail", took)
	}
	if !strings.Contains(string(out), "already in use") || strings.Count(string(out), "start embedded etcd") != 1 {
		t.Fatalf("unclear message:\n%s", out)
	}
}

func TestGeneratedAdminPasswordShownOnce(t *testing.T) {
	dir := t.TempDir()
	_, _, logs, stop := startServe(t, "--data-dir", dir)
	if !strings.Contains(logs.String(), "generated password") {
		t.Fatalf("no generated password in the log:\n%s", logs)
	}
	stop()
	_, _, logs, _ = startServe(t, "--data-dir", dir)
	if strings.Contains(logs.String(), "generated password") {
		t.Fatalf("generated password shown again on the second start:\n%s", logs)
	}
}

func TestBadConfigurationExitCode(t *testing.T) {
	cmd := exec.Command(binPath, "serve", "--log-format", "xml")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != exitConfig || !strings.Contains(string(out), "log_format") {
		t.Fatalf("exit %v, output:\n%s", err, out)
	}
}

// TestServeProxiesWithRoutes runs the binary as a sidecar: route rules
// from the configuration file, an upstream, the admin's token.
func TestServeProxiesWithRoutes(t *testing.T) {
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprintf(w, "app saw %s as %s", r.URL.Path, r.Header.Get("X-Auth-Username"))
	}))
	defer up.Close()
	cfg := filepath.Join(t.TempDir(), "portcullis.yaml")
	if err := os.WriteFile(cfg, []byte("upstream: "+up.URL+"\nroutes:\n  - path: /app/**\n    permission: 'apps#{level}'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	grpcAddr := freeAddr(t)
	api, _, _, _ := startServe(t, "--data-dir", t.TempDir(), "--admin-password", "adminpassword", "--config", cfg, "--grpc-listen", grpcAddr)
	token := passwordLogin(t, "http://"+api, "admin", "adminpassword")
	req, _ := http.NewRequest("GET", "http://"+api+"/app/./x", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "app saw /app/x as admin" {
		t.Fatalf("proxied: %d %q", resp.StatusCode, body)
	}
	// The same decision through Envoy's gRPC ext_authz.
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, c := range []struct {
		auth string
		code codes.Code
	}{{"Bearer " + token, codes.OK}, {"", codes.Unauthenticated}} {
		hdrs := map[string]string{}
		if c.auth != "" {
			hdrs["authorization"] = c.auth
		}
		res, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Host: "app.example.com", Path: "/app/x", Scheme: "https", Headers: hdrs,
		}}}})
		if err != nil || codes.Code(res.GetStatus().GetCode()) != c.code {
			t.Fatalf("gRPC Check (%q): %v %v, want %v", c.auth, res.GetStatus(), err, c.code)
		}
	}
	before := hits.Load()
	resp, err = http.Get("http://" + api + "/app/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || hits.Load() != before {
		t.Fatalf("anonymous: %d, upstream hits %d", resp.StatusCode, hits.Load()-before)
	}
}

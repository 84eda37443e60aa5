package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
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

// With public_url set, a session JWT names the metadata's issuer and
// verifies offline against the served JWKS, as an RFC 9068 verifier at an
// upstream checks it.
func TestSessionJWTIssuerIsTheMetadataIssuer(t *testing.T) {
	addr := freeAddr(t)
	// The later --listen wins over the one startServeProcess passes.
	startServeProcess(t, "--data-dir", t.TempDir(), "--admin-password", "correct horse battery", "--listen", addr, "--public-url", "http://"+addr+"/")
	base := "http://" + addr
	getJSON := func(path string, v any) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d, %v", path, resp.StatusCode, err)
		}
	}
	var md struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	getJSON("/.well-known/oauth-authorization-server", &md)
	if md.Issuer != "http://"+addr {
		t.Fatalf("metadata issuer %q", md.Issuer)
	}
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
			Kty string `json:"kty"`
			Crv string `json:"crv"`
			X   string `json:"x"`
		} `json:"keys"`
	}
	getJSON(strings.TrimPrefix(md.JWKSURI, base), &set)
	tok := passwordLogin(t, base, "admin", "correct horse battery")
	claims := jwt.RegisteredClaims{}
	_, err := jwt.ParseWithClaims(tok, &claims, func(tk *jwt.Token) (any, error) {
		for _, k := range set.Keys {
			if k.Kid == tk.Header["kid"] && k.Kty == "OKP" && k.Crv == "Ed25519" {
				x, err := base64.RawURLEncoding.DecodeString(k.X)
				return ed25519.PublicKey(x), err
			}
		}
		return nil, fmt.Errorf("kid %v not in the JWKS", tk.Header["kid"])
	}, jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithIssuer(md.Issuer), jwt.WithExpirationRequired())
	if err != nil {
		t.Fatalf("offline verification of the session JWT: %v (iss %q)", err, claims.Issuer)
	}
}

// The admin bootstrap, in process: the configured password is applied on
// the first start only (later ones warn and keep it), and a first start
// that stopped between creating admin and granting *#admin is finished by
// the next one.
func TestBootstrapAdmin(t *testing.T) {
	ctx := context.Background()
	endpoints := etcdtest.Embedded(t).Endpoints()
	newSvc := func() (*authz.Service, authz.Store) {
		st := etcdtest.NewStore(t, endpoints)
		return authztest.Start(t, st, authztest.FastConfig()), st
	}
	superAdmin := func(svc *authz.Service, login, password string) bool {
		t.Helper()
		u, err := svc.Login(ctx, login, password)
		if err != nil {
			return false
		}
		perms, err := svc.ListPermissions(ctx, "users/"+u.ID, false, false)
		return err == nil && slices.Contains(perms, "*#admin")
	}

	t.Run("configured password, then a different one", func(t *testing.T) {
		svc, st := newSvc()
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		if err := bootstrapAdmin(ctx, svc, st, "first-password", log, log); err != nil {
			t.Fatal(err)
		}
		if !superAdmin(svc, "admin", "first-password") {
			t.Fatal("admin cannot sign in with the configured password or lacks *#admin")
		}
		if err := bootstrapAdmin(ctx, svc, st, "second-password", log, log); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "not applied") {
			t.Errorf("no warning that the password was not applied:\n%s", logs.String())
		}
		if _, err := svc.Login(ctx, "admin", "second-password"); err == nil || !superAdmin(svc, "admin", "first-password") {
			t.Fatal("a later start reset the admin password")
		}
		if strings.Contains(logs.String(), "password=") {
			t.Errorf("a configured password was logged:\n%s", logs.String())
		}
	})

	t.Run("first start of an earlier release interrupted", func(t *testing.T) {
		svc, st := newSvc()
		// What a first start leaves when it stops after creating admin.
		if _, _, err := svc.CreateUser(ctx, authz.UserInput{Username: "admin", Password: "generated-once"}, false); err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		if err := bootstrapAdmin(ctx, svc, st, "", log, log); err != nil {
			t.Fatal(err)
		}
		if !superAdmin(svc, "admin", "generated-once") {
			t.Fatalf("the interrupted bootstrap was not finished:\n%s", logs.String())
		}
		if strings.Contains(logs.String(), "generated password") {
			t.Errorf("a second password was generated:\n%s", logs.String())
		}
	})

	t.Run("an admin changed since creation is left alone", func(t *testing.T) {
		svc, st := newSvc()
		u, _, err := svc.CreateUser(ctx, authz.UserInput{Username: "admin", Password: "admin-password"}, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.RemovePermission(ctx, "users/"+u.ID, "roles/user", false); err != nil {
			t.Fatal(err)
		}
		if err := bootstrapAdmin(ctx, svc, st, "", slog.New(slog.DiscardHandler), slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		if superAdmin(svc, "admin", "admin-password") {
			t.Fatal("*#admin granted to an admin whose grants were deliberately changed")
		}
	})
}

// `portcullis serve` without flags on a fresh machine: an embedded etcd in
// ./data, an admin with a generated password that works. The two ports
// come from the environment (the defaults, :8080 and :9090, may be taken
// on a test machine), which is configuration without flags all the same.
func TestServeWithoutFlags(t *testing.T) {
	if cfg := defaultConfig(); cfg.Listen != ":8080" || cfg.MetricsListen != ":9090" || cfg.DataDir != "./data" {
		t.Fatalf("defaults listen %q metrics_listen %q data_dir %q, want :8080 :9090 ./data", cfg.Listen, cfg.MetricsListen, cfg.DataDir)
	}
	dir := t.TempDir()
	api, metrics := freeAddr(t), freeAddr(t)
	logs := &etcdtest.SyncBuffer{}
	cmd := exec.Command(binPath, "serve")
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PORTCULLIS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PORTCULLIS_LISTEN="+api, "PORTCULLIS_METRICS_LISTEN="+metrics)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(logs.String(), "portcullis serving") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 60s:\n%s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fi, err := os.Stat(filepath.Join(dir, "data")); err != nil || !fi.IsDir() {
		t.Fatalf("no ./data directory in the working directory: %v", err)
	}
	var password string
	for line := range strings.SplitSeq(logs.String(), "\n") {
		var rec struct{ Msg, Password string }
		if json.Unmarshal([]byte(line), &rec) == nil && strings.Contains(rec.Msg, "generated password") {
			password = rec.Password
		}
	}
	if password == "" {
		t.Fatalf("no generated password in the log:\n%s", logs)
	}
	passwordLogin(t, "http://"+api, "admin", password)
}

// While the store is being opened (here: an etcd that never answers),
// the metrics listener already says the process is alive (/healthz 200)
// and not ready (/readyz 503), instead of leaving probes hanging.
func TestProbesAnswerDuringStartUp(t *testing.T) {
	api, metrics := freeAddr(t), freeAddr(t)
	logs := &etcdtest.SyncBuffer{}
	cmd := exec.Command(binPath, "serve", "--listen", api, "--metrics-listen", metrics,
		"--etcd-endpoints", freeAddr(t), "--etcd-dial-timeout", "3s")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	client := &http.Client{Timeout: time.Second}
	status := func(path string) int {
		resp, err := client.Get("http://" + metrics + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(2 * time.Second)
	for status("/healthz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("/healthz did not answer 200 during start-up:\n%s", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := status("/readyz"); got != http.StatusServiceUnavailable {
		t.Fatalf("/readyz during start-up: %d, want 503", got)
	}
	select {
	case <-exited:
		if waitErr == nil {
			t.Fatal("started without a store")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30s after etcd_dial_timeout")
	}
}

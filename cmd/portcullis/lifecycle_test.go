package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/portcullis/portcullis/proxy/envoyauthz"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// proc is a running portcullis binary whose signals and exit the test
// controls itself (startServe interrupts it at cleanup).
type proc struct {
	cmd          *exec.Cmd
	api, metrics string
	logs         *etcdtest.SyncBuffer
	exited       chan struct{} // closed when the process has ended; then err is set
	err          error
}

func launch(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{api: freeAddr(t), metrics: freeAddr(t), logs: &etcdtest.SyncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(binPath, append([]string{"serve", "--listen", p.api, "--metrics-listen", p.metrics, "--log-format", "text"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
			return
		default:
		}
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// waitReady polls /readyz with client until it answers 200 and the last
// start-up line is logged.
func (p *proc) waitReady(t *testing.T, client *http.Client, scheme string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			t.Fatalf("process ended during start-up (%v):\n%s", p.err, p.logs)
		default:
		}
		if resp, err := client.Get(scheme + "://" + p.metrics + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(p.logs.String(), "portcullis serving") {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("not ready after 60s:\n%s", p.logs)
}

// TestGracefulShutdownOnSIGTERM: /readyz turns 503 at once while requests
// are still served for shutdown_delay; then new connections are refused,
// the in-flight proxied request completes, the process exits 0, and the
// embedded etcd's data directory opens again.
func TestGracefulShutdownOnSIGTERM(t *testing.T) {
	const slowFor = 7 * time.Second
	started := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			time.Sleep(slowFor)
		}
		fmt.Fprint(w, "done "+r.URL.Path)
	}))
	defer up.Close()
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.yaml", "upstream: "+up.URL+"\nroutes:\n  - path: /**\n    public: true\n")
	dataDir := filepath.Join(dir, "data")
	grpcAddr := freeAddr(t)
	args := []string{"--config", cfg, "--data-dir", dataDir, "--admin-password", "adminpassword", "--shutdown-delay", "3s", "--shutdown-grace-period", "20s", "--grpc-listen", grpcAddr}
	p := launch(t, args...)
	p.waitReady(t, http.DefaultClient, "http")
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	grpcHealth := func() healthpb.HealthCheckResponse_ServingStatus {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: envoyauthz.ServiceName})
		if err != nil {
			t.Fatalf("gRPC health: %v", err)
		}
		return resp.GetStatus()
	}
	if got := grpcHealth(); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health before SIGTERM: %v", got)
	}

	type result struct {
		status int
		body   string
		err    error
	}
	inFlight := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + p.api + "/slow")
		if err != nil {
			inFlight <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		inFlight <- result{resp.StatusCode, string(b), err}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not reach the upstream")
	}
	sigAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	// During shutdown_delay: not ready, but still serving new requests.
	deadline := time.Now().Add(2 * time.Second)
	for {
		resp, err := http.Get("http://" + p.metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz did not turn 503 within 2s of SIGTERM (last: %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Envoy's health checks see the same as the load balancer's probes.
	if got := grpcHealth(); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health during shutdown_delay: %v, want NOT_SERVING", got)
	}
	resp, err := http.Get("http://" + p.api + "/quick")
	if err != nil {
		t.Fatalf("a new request during shutdown_delay failed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("a new request during shutdown_delay: %d", resp.StatusCode)
	}
	if since := time.Since(sigAt); since > 2800*time.Millisecond {
		t.Fatalf("checks during the delay took too long (%v) to prove anything", since)
	}

	// After the delay, before the in-flight request ends: listeners closed.
	time.Sleep(time.Until(sigAt.Add(3800 * time.Millisecond)))
	select {
	case r := <-inFlight:
		t.Fatalf("in-flight request ended early: %+v", r)
	case <-p.exited:
		t.Fatalf("process exited before the in-flight request finished:\n%s", p.logs)
	default:
	}
	if c, err := net.DialTimeout("tcp", p.api, time.Second); err == nil {
		c.Close()
		t.Errorf("the API still accepts connections after shutdown_delay")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial the API after shutdown_delay: %v, want connection refused", err)
	}
	// The metrics listener stays until the API has drained: probes see
	// 503, not a refused connection, and the drain can be scraped.
	if resp, err := http.Get("http://" + p.metrics + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: %v %v, want 503", resp, err)
	} else {
		resp.Body.Close()
	}

	r := <-inFlight
	if r.err != nil || r.status != 200 || r.body != "done /slow" {
		t.Fatalf("in-flight request: %+v", r)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("process did not exit after draining:\n%s", p.logs)
	}
	if p.err != nil {
		t.Fatalf("exit: %v\n%s", p.err, p.logs)
	}
	if !strings.Contains(p.logs.String(), "portcullis stopped") {
		t.Errorf("no clean stop logged:\n%s", p.logs)
	}

	// The data directory reopens cleanly and kept its data: the admin
	// user exists, so no new one is created.
	again := launch(t, args...)
	again.waitReady(t, http.DefaultClient, "http")
	if strings.Contains(again.logs.String(), "created user admin") {
		t.Fatalf("restart did not find the data written before shutdown:\n%s", again.logs)
	}
}

// TestUnreachableEtcdFailsFast: external etcd on a closed port stops the
// start within the dial timeout's bound, naming the endpoint.
func TestUnreachableEtcdFailsFast(t *testing.T) {
	closed := freeAddr(t) // listened on, then closed: nothing answers
	start := time.Now()
	cmd := exec.Command(binPath, "serve", "--listen", freeAddr(t), "--metrics-listen", freeAddr(t),
		"--etcd-endpoints", "http://"+closed, "--etcd-dial-timeout", "1s")
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitError {
		t.Fatalf("exit %v, want %d:\n%s", err, exitError, out)
	}
	// 1s dial + 5s for the first reads, plus process start.
	if took > 10*time.Second {
		t.Fatalf("took %v to give up", took)
	}
	if !strings.Contains(string(out), closed) || !strings.Contains(string(out), "etcd") {
		t.Fatalf("message does not name the endpoint %s:\n%s", closed, out)
	}
}

// TestServeTLSOnBothListeners runs the binary with TLS on the API and the
// metrics listener, then rotates the certificate files under it.
func TestServeTLSOnBothListeners(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	certPEM, keyPEM := ca.issue(t, "portcullis.test")
	certFile, keyFile := writeFile(t, dir, "tls.crt", string(certPEM)), writeFile(t, dir, "tls.key", string(keyPEM))
	p := launch(t, "--data-dir", filepath.Join(dir, "data"), "--admin-password", "adminpassword",
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--metrics-tls-cert-file", certFile, "--metrics-tls-key-file", keyFile)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool()}}, Timeout: 10 * time.Second}
	p.waitReady(t, client, "https")

	first, proto := servedSerial(t, ca, p.api)
	if proto != "HTTP/2.0" {
		t.Errorf("API protocol %s, want HTTP/2.0", proto)
	}
	// Plain HTTP on a TLS listener gets no answer from the API.
	if resp, err := http.Get("http://" + p.api + "/"); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP on the TLS listener: %d %q", resp.StatusCode, body)
		}
	}
	certPEM, keyPEM = ca.issue(t, "portcullis.test")
	writeFile(t, dir, "tls.key.new", string(keyPEM))
	writeFile(t, dir, "tls.crt.new", string(certPEM))
	if err := os.Rename(keyFile+".new", keyFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(certFile+".new", certFile); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		api, _ := servedSerial(t, ca, p.api)
		metrics, _ := servedSerial(t, ca, p.metrics)
		if api != first && metrics != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotated certificate not served within 10s (API serial %d, metrics %d, first %d)\n%s", api, metrics, first, p.logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(p.logs.String(), "TLS certificate reloaded") {
		t.Errorf("reload not logged:\n%s", p.logs)
	}
	if strings.Contains(p.logs.String(), "PRIVATE KEY") {
		t.Errorf("a private key reached the log")
	}
}

// TestDrainClosesWhatOutlastsTheGracePeriod: a request still running when
// the grace period ends has its connection closed, and drain returns then
// rather than waiting for it.
func TestDrainClosesWhatOutlastsTheGracePeriod(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	entered := make(chan struct{})
	srv := newHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	clientErr := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err == nil {
			resp.Body.Close()
		}
		clientErr <- err
	}()
	<-entered
	start := time.Now()
	if err := drain(srv, 300*time.Millisecond, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 3*time.Second {
		t.Fatalf("drain took %v for a 300ms grace period", took)
	}
	select {
	case err := <-clientErr:
		if err == nil {
			t.Fatal("the unfinished request got a response")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the unfinished request's connection was not closed")
	}
}

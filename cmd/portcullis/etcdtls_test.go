package main

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/portcullis/portcullis/store/etcdtest"
)

// secureEtcd is a real etcd process that requires TLS client certificates
// and, once auth is enabled, a user name and password.
type secureEtcd struct {
	endpoint                  string
	caFile, certFile, keyFile string
	clientTLS                 *tls.Config
}

// startSecureEtcd runs the etcd binary with client-cert-auth on an https
// client URL, creates the user portcullis (password portcullisPassword)
// with read-write access to /portcullis/ only, and enables auth.
func startSecureEtcd(t *testing.T, portcullisPassword string) *secureEtcd {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv(etcdtest.SkipExternalEnv) == "1" {
			t.Skip("etcd not installed")
		}
		t.Fatalf("etcd is not installed: run scripts/install-test-deps.sh")
	}
	dir := t.TempDir()
	ca := newTestCA(t)
	certPEM, keyPEM := ca.issue(t, "etcd.test")
	e := &secureEtcd{
		endpoint: "https://" + freeAddr(t),
		caFile:   writeFile(t, dir, "ca.crt", string(ca.certPEM)),
		certFile: writeFile(t, dir, "client.crt", string(certPEM)),
		keyFile:  writeFile(t, dir, "client.key", string(keyPEM)),
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	e.clientTLS = &tls.Config{RootCAs: ca.pool(), Certificates: []tls.Certificate{pair}}
	peer := "http://" + freeAddr(t)
	logs := &etcdtest.SyncBuffer{}
	cmd := exec.Command(bin, "--name=tls", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls="+e.endpoint, "--advertise-client-urls="+e.endpoint,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer, "--initial-cluster=tls="+peer,
		"--client-cert-auth", "--trusted-ca-file="+e.caFile, "--cert-file="+e.certFile, "--key-file="+e.keyFile,
		"--max-txn-ops=10000", "--experimental-watch-progress-notify-interval="+etcdtest.ProgressNotifyInterval.String(), "--logger=zap", "--log-level=error", "--log-outputs=stderr")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.endpoint}, TLS: e.clientTLS, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := c.Get(rctx, "ready")
		rcancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("etcd exited:\n%s", logs)
		case <-ctx.Done():
			t.Fatalf("etcd not ready: %v\n%s", err, logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	steps := []func() error{
		func() error { _, err := c.RoleAdd(ctx, "portcullis"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, "portcullis", "/portcullis/", clientv3.GetPrefixRangeEnd("/portcullis/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := c.UserAdd(ctx, "portcullis", portcullisPassword); return err },
		func() error { _, err := c.UserGrantRole(ctx, "portcullis", "portcullis"); return err },
		func() error { _, err := c.UserAdd(ctx, "root", "root-password"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("etcd auth setup step %d: %v", i, err)
		}
	}
	return e
}

// TestExternalEtcdWithClientCertsAndPassword runs the binary against an
// etcd that demands TLS client certificates and password auth: it starts
// with the right credentials (password from a file) and refuses to start,
// naming the endpoint, without them.
func TestExternalEtcdWithClientCertsAndPassword(t *testing.T) {
	const password = "etcd-password-for-portcullis"
	e := startSecureEtcd(t, password)
	dir := t.TempDir()
	pwFile := writeFile(t, dir, "etcd-password", password+"\n")
	common := []string{"--etcd-endpoints", e.endpoint, "--etcd-ca-file", e.caFile, "--etcd-dial-timeout", "2s"}

	p := launch(t, append(common, "--etcd-cert-file", e.certFile, "--etcd-key-file", e.keyFile,
		"--etcd-username", "portcullis", "--etcd-password-file", pwFile, "--admin-password", "adminpassword",
		"--shutdown-delay", "30s")...)
	p.waitReady(t, http.DefaultClient, "http")
	if strings.Contains(p.logs.String(), password) {
		t.Fatal("the etcd password reached the log")
	}
	// SIGINT (Ctrl-C) skips shutdown_delay: no load balancer to wait for.
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("SIGINT waited for the 30s shutdown_delay:\n%s", p.logs)
	}
	if p.err != nil {
		t.Fatalf("exit after SIGINT: %v\n%s", p.err, p.logs)
	}

	for name, args := range map[string][]string{
		"wrong password":        {"--etcd-cert-file", e.certFile, "--etcd-key-file", e.keyFile, "--etcd-username", "portcullis", "--etcd-password", "wrong"},
		"no client certificate": {"--etcd-username", "portcullis", "--etcd-password-file", pwFile},
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			cmd := exec.Command(binPath, append(append([]string{"serve", "--listen", freeAddr(t), "--metrics-listen", freeAddr(t)}, common...), args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("started without valid credentials (%v):\n%s", err, out)
			}
			if took := time.Since(start); took > 15*time.Second {
				t.Fatalf("took %v to fail", took)
			}
			if !strings.Contains(string(out), "open store") {
				t.Fatalf("unclear message:\n%s", out)
			}
			if strings.Contains(string(out), password) {
				t.Fatal("the etcd password reached the output")
			}
		})
	}
}

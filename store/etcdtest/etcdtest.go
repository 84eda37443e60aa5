// Package etcdtest starts etcd servers for tests: embedded ones, and real
// etcd processes like the ones operators run. Any package's tests may use it.
//
// Starting etcd costs about a second, so a package should share one server
// between its tests: call Main from TestMain, then SharedEmbedded or
// SharedExternal in each test, and NewStore for a Store on a fresh prefix of
// it. Tests that stop or break a server start their own with Embedded or
// External.
package etcdtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/store/embedetcd"
	"github.com/portcullis/portcullis/store/etcdstore"
)

// ProgressNotifyInterval is how often the servers started here send watch
// progress notifications (etcd's default is 10 minutes), so that tests of
// authz.ChangeProgress finish quickly.
const ProgressNotifyInterval = 500 * time.Millisecond

// SkipExternalEnv names the environment variable that, set to 1, makes
// tests needing the etcd binary skip instead of fail when it is missing.
const SkipExternalEnv = "PORTCULLIS_SKIP_EXTERNAL_ETCD"

// installHint tells a developer how to get the binaries the tests need.
const installHint = "run scripts/install-test-deps.sh (or set " + SkipExternalEnv + "=1 to skip these tests)"

// Embedded starts an embedded etcd in a temporary directory, stopped when
// t ends.
func Embedded(t testing.TB) *embedetcd.Server {
	t.Helper()
	srv, err := startEmbedded(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func startEmbedded(ctx context.Context, dir string) (*embedetcd.Server, error) {
	return embedetcd.Start(ctx, embedetcd.Config{
		DataDir:                     dir,
		StartTimeout:                30 * time.Second,
		WatchProgressNotifyInterval: ProgressNotifyInterval,
	})
}

// External starts a real etcd process (the etcd binary on PATH, else
// /usr/bin/etcd) on free loopback ports with a temporary data directory and
// --max-txn-ops=10000, waits until it answers, and kills it when t ends.
// It returns the client endpoints.
func External(t testing.TB) []string {
	t.Helper()
	bin := binary(t, "etcd")
	p, err := startProcess(t.Context(), bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p.endpoints
}

// Etcdctl runs etcdctl (API v3) against endpoints and returns its standard
// output; it fails t if etcdctl fails. Tests use it to write keys the way an
// operator would.
func Etcdctl(t testing.TB, endpoints []string, args ...string) string {
	t.Helper()
	return EtcdctlInput(t, endpoints, "", args...)
}

// EtcdctlInput is Etcdctl with standard input, for "etcdctl txn".
func EtcdctlInput(t testing.TB, endpoints []string, stdin string, args ...string) string {
	t.Helper()
	bin := binary(t, "etcdctl")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoints=" + strings.Join(endpoints, ",")}, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("etcdctl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// binary finds an etcd binary, failing (or skipping, see SkipExternalEnv) t
// when it is not installed.
func binary(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := "/usr/bin/" + name; isExecutable(p) {
		return p
	}
	if os.Getenv(SkipExternalEnv) == "1" {
		t.Skipf("%s not installed and %s=1", name, SkipExternalEnv)
	}
	t.Fatalf("%s is not installed: %s", name, installHint)
	return ""
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// NewStore opens a Store on a unique random prefix of the etcd at
// endpoints, so tests sharing one server never see each other's keys. The
// Store is closed when t ends.
func NewStore(t testing.TB, endpoints []string) *etcdstore.Store {
	t.Helper()
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails
	s, err := etcdstore.Open(t.Context(), etcdstore.Config{
		Endpoints:      endpoints,
		Prefix:         "/portcullis-test-" + hex.EncodeToString(b) + "/",
		RequestTimeout: 10 * time.Second, // generous: -race on a loaded machine
		// Open warns about the distribution's etcd 3.4 on every store;
		// tests know, and failures carry their own errors.
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// shared holds the servers started once per test binary.
var shared struct {
	mu      sync.Mutex
	inMain  bool
	cleanup []func()

	embeddedOnce sync.Once
	embedded     []string
	embeddedErr  error

	externalOnce sync.Once
	externalBin  string
	external     []string
	externalErr  error
}

// Main runs the tests of a package and then stops the shared servers. Call
// it from TestMain:
//
//	func TestMain(m *testing.M) { etcdtest.Main(m) }
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	for _, f := range shared.cleanup {
		f()
	}
	shared.mu.Unlock()
	os.Exit(code)
}

func requireMain(t testing.TB) {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("shared etcd servers are stopped by etcdtest.Main: call it from TestMain")
	}
}

func addCleanup(f func()) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	shared.cleanup = append(shared.cleanup, f)
}

// SharedEmbedded returns the endpoints of an embedded etcd shared by all
// tests of the package, starting it on first use. Use NewStore on it.
func SharedEmbedded(t testing.TB) []string {
	t.Helper()
	requireMain(t)
	shared.embeddedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "etcdtest-embedded-")
		if err != nil {
			shared.embeddedErr = err
			return
		}
		// Not t.Context(): the server outlives the test that starts it.
		srv, err := startEmbedded(context.Background(), dir)
		if err != nil {
			os.RemoveAll(dir)
			shared.embeddedErr = err
			return
		}
		shared.embedded = srv.Endpoints()
		addCleanup(func() {
			srv.Close()
			os.RemoveAll(dir)
		})
	})
	if shared.embeddedErr != nil {
		t.Fatalf("shared embedded etcd: %v", shared.embeddedErr)
	}
	return shared.embedded
}

// SharedExternal returns the endpoints of an etcd process shared by all
// tests of the package, starting it on first use. Use NewStore on it.
func SharedExternal(t testing.TB) []string {
	t.Helper()
	requireMain(t)
	bin := binary(t, "etcd")
	shared.externalOnce.Do(func() {
		dir, err := os.MkdirTemp("", "etcdtest-external-")
		if err != nil {
			shared.externalErr = err
			return
		}
		p, err := startProcess(context.Background(), bin, dir)
		if err != nil {
			os.RemoveAll(dir)
			shared.externalErr = err
			return
		}
		shared.external = p.endpoints
		addCleanup(func() {
			p.stop()
			os.RemoveAll(dir)
		})
	})
	if shared.externalErr != nil {
		t.Fatalf("shared external etcd: %v", shared.externalErr)
	}
	return shared.external
}

var errExited = errors.New("etcd exited")

// describe formats an etcd process failure with the end of its log.
func describe(err error, log *SyncBuffer) error {
	out := log.String()
	if len(out) > 4000 {
		out = "…" + out[len(out)-4000:]
	}
	return fmt.Errorf("start etcd: %w\netcd output:\n%s", err, out)
}

package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// repoRoot is where the tests find the chart, the scripts and the recipes
// (go test runs in the package directory).
const repoRoot = ".."

// stampedVersion is the version the tests build the binary with.
const stampedVersion = "v0.0.0-deploytest"

var workDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "portcullis-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var binary struct {
	once sync.Once
	path string
	err  error
}

// portcullisBinary builds cmd/portcullis once, with scripts/build.sh (the
// Dockerfile's build command).
func portcullisBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		binary.path = filepath.Join(workDir, "portcullis")
		cmd := exec.Command("bash", filepath.Join(repoRoot, "scripts", "build.sh"))
		cmd.Env = append(os.Environ(), "VERSION="+stampedVersion, "OUT="+binary.path)
		if out, err := cmd.CombinedOutput(); err != nil {
			binary.err = fmt.Errorf("scripts/build.sh: %w\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

var helm struct {
	once sync.Once
	path string
	err  error
}

// helmBinary returns the pinned helm, building it the first time
// (scripts/install-helm.sh; scripts/test.sh runs it before the tests).
func helmBinary(t *testing.T) string {
	t.Helper()
	helm.once.Do(func() {
		var stderr bytes.Buffer
		cmd := exec.Command("bash", filepath.Join(repoRoot, "scripts", "install-helm.sh"))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			helm.err = fmt.Errorf("scripts/install-helm.sh: %w\n%s", err, stderr.String())
			return
		}
		helm.path = strings.TrimSpace(string(out))
	})
	if helm.err != nil {
		t.Fatal(helm.err)
	}
	return helm.path
}

// checkConfig loads a configuration file with the binary, through the loader
// `serve` uses (unknown keys refused, values parsed) and Config.Validate:
// `routes test` exits 3 for a bad configuration, 0 or 1 otherwise.
func checkConfig(t *testing.T, name string, raw []byte) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "portcullis.yaml")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(portcullisBinary(t), "routes", "test", "--config", file, "GET", "http://app.example.com/")
	cmd.Env = []string{} // only the file counts, not PORTCULLIS_* of the environment
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Errorf("%s: the binary refuses the configuration (%v): %s\n%s", name, err, stderr.String(), raw)
	}
}

// runningPortcullis starts the binary with an embedded store and returns its
// base URL once it is ready; the process ends with the test.
func runningPortcullis(t *testing.T) string {
	t.Helper()
	dataDir := t.TempDir()
	return startPortcullis(t, func(listen, metrics, _ string) []string {
		return []string{"serve", "--data-dir", dataDir, "--listen", listen, "--metrics-listen", metrics, "--log-level", "error"}
	})
}

// startPortcullis runs the binary with the arguments args returns for three
// free loopback addresses (API, metrics, gRPC), waits until /readyz says
// ready, and returns the API's base URL. A port taken by someone else
// between the choice and the start is retried with new ones. The process
// is interrupted when the test ends.
func startPortcullis(t *testing.T, args func(listen, metrics, grpc string) []string) string {
	t.Helper()
	for attempt := 1; ; attempt++ {
		listen, metrics := freeAddr(t), freeAddr(t)
		base, logs, err := tryPortcullis(t, listen, metrics, args(listen, metrics, freeAddr(t)))
		if err == nil {
			return base
		}
		if attempt < 3 && strings.Contains(logs, "address already in use") {
			continue
		}
		t.Fatalf("%v:\n%s", err, logs)
	}
}

func tryPortcullis(t *testing.T, listen, metrics string, args []string) (base, logs string, err error) {
	t.Helper()
	cmd := exec.Command(portcullisBinary(t), args...)
	cmd.Env = []string{} // only the arguments count, not PORTCULLIS_* of the environment
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return "http://" + listen, "", nil
			}
		}
		select {
		case <-done:
			return "", out.String(), fmt.Errorf("portcullis %v exited before it was ready", args)
		default:
		}
		if time.Now().After(deadline) {
			return "", out.String(), fmt.Errorf("portcullis %v not ready after 60s", args)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
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

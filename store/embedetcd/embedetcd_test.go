package embedetcd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/portcullis/portcullis/store/embedetcd"
)

func TestConfigValidate(t *testing.T) {
	err := embedetcd.Config{
		QuotaBackendBytes:       -1,
		AutoCompactionRetention: "soon",
		StartTimeout:            -time.Second,
	}.Validate()
	if err == nil {
		t.Fatal("Validate accepted an invalid config")
	}
	// Validation reports every problem at once, not just the first.
	for _, want := range []string{"data dir is required", "quota backend bytes", "auto compaction retention", "start timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %q does not mention %q", err, want)
		}
	}
	for _, ok := range []string{"", "0", "1", "30m", "2h"} {
		if err := (embedetcd.Config{DataDir: "x", AutoCompactionRetention: ok}).Validate(); err != nil {
			t.Errorf("retention %q rejected: %v", ok, err)
		}
	}
}

func TestStartRejectsInvalidConfigWithoutSideEffects(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "never-created")
	_, err := embedetcd.Start(t.Context(), embedetcd.Config{DataDir: dir, AutoCompactionRetention: "x"})
	if err == nil {
		t.Fatal("Start accepted an invalid config")
	}
	if _, statErr := os.Stat(dir); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("Start created the data dir before validating: %v", statErr)
	}
}

func TestStartLockRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()

	srv, err := embedetcd.Start(ctx, embedetcd.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, ep := range srv.Endpoints() {
		if !strings.HasPrefix(ep, "http://127.0.0.1:") {
			t.Errorf("endpoint %q is not loopback", ep)
		}
	}
	put(t, srv.Endpoints(), "k", "v")

	// A second server on the same directory must fail at once, naming the
	// holder, instead of waiting for etcd to trip over the WAL.
	start := time.Now()
	_, err = embedetcd.Start(ctx, embedetcd.Config{DataDir: dir})
	if err == nil {
		t.Fatal("second Start on a locked data dir succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("second Start took %s to fail", d)
	}
	var inUse *embedetcd.DirInUseError
	if !errors.As(err, &inUse) {
		t.Fatalf("second Start: %v, want a *DirInUseError", err)
	}
	want := `data directory "` + dir + `" is already in use by another Portcullis process (pid ` + strconv.Itoa(os.Getpid()) + `)`
	if !strings.Contains(err.Error(), want) {
		t.Errorf("second Start: %q, want it to contain %q", err, want)
	}
	// The failed attempt must not have disturbed the running server.
	if got := get(t, srv.Endpoints(), "k"); got != "v" {
		t.Errorf("after the failed second Start, k = %q, want v", got)
	}

	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, ok := <-srv.Err(); ok {
		t.Error("Err channel still open after Close")
	}

	srv2, err := embedetcd.Start(ctx, embedetcd.Config{DataDir: dir})
	if err != nil {
		t.Fatalf("restart after Close: %v", err)
	}
	defer srv2.Close()
	if got := get(t, srv2.Endpoints(), "k"); got != "v" {
		t.Errorf("after restart, k = %q, want v", got)
	}
}

func TestStartTimeoutCleansUp(t *testing.T) {
	dir := t.TempDir()
	// etcd cannot create its WAL and elect itself within a millisecond, so
	// this start fails after etcd was started half-way.
	_, err := embedetcd.Start(t.Context(), embedetcd.Config{DataDir: dir, StartTimeout: time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start with a 1ms timeout: %v, want context.DeadlineExceeded", err)
	}
	// Everything must have been released: a new start on the dir works.
	srv, err := embedetcd.Start(t.Context(), embedetcd.Config{DataDir: dir})
	if err != nil {
		t.Fatalf("Start after a failed start: %v", err)
	}
	srv.Close()
}

func client(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func put(t *testing.T, endpoints []string, k, v string) {
	t.Helper()
	if _, err := client(t, endpoints).Put(t.Context(), k, v); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, endpoints []string, k string) string {
	t.Helper()
	resp, err := client(t, endpoints).Get(t.Context(), k)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

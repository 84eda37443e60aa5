package etcdtest_test

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/store/etcdtest"
)

// echoServer answers every connection by echoing it, until its client
// half-closes; it stops when t ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reports what came back within wait: msg if the
// link forwarded it both ways, "" on a timeout.
func roundTrip(t *testing.T, c net.Conn, msg string, wait time.Duration) string {
	t.Helper()
	if msg != "" {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	return read(t, c, len(msg), wait)
}

func read(t *testing.T, c net.Conn, n int, wait time.Duration) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, n)
	got, err := io.ReadFull(c, buf)
	if errors.Is(err, os.ErrDeadlineExceeded) && got == 0 {
		return ""
	}
	if err != nil {
		t.Fatalf("read: %v after %q", err, buf[:got])
	}
	return string(buf)
}

// A partition must look like lost packets, not a dead peer: nothing
// crosses, nothing is closed or reset, until the link heals.
func TestLinkPartitionAndHeal(t *testing.T) {
	target := echoServer(t)
	l := etcdtest.NewLink(t, target)
	old := dial(t, l.Addr())
	if got := roundTrip(t, old, "before", time.Second); got != "before" {
		t.Fatalf("healthy link echoed %q", got)
	}

	l.Partition()
	if got := roundTrip(t, old, "during", 300*time.Millisecond); got != "" {
		t.Fatalf("partitioned link forwarded %q on an old connection", got)
	}
	fresh := dial(t, l.Addr()) // accepted: loopback cannot drop a SYN
	if got := roundTrip(t, fresh, "fresh", 300*time.Millisecond); got != "" {
		t.Fatalf("partitioned link forwarded %q on a new connection", got)
	}

	l.Heal()
	if got := read(t, old, len("during"), time.Second); got != "during" {
		t.Fatalf("after Heal the held data arrived as %q", got)
	}
	if got := read(t, fresh, len("fresh"), time.Second); got != "fresh" {
		t.Fatalf("after Heal the connection made during the partition echoed %q", got)
	}
	if got := roundTrip(t, old, "after", time.Second); got != "after" {
		t.Fatalf("after Heal an old connection echoed %q", got)
	}
}

func TestLinkHealNewOnly(t *testing.T) {
	target := echoServer(t)
	l := etcdtest.NewLink(t, target)
	old := dial(t, l.Addr())
	if got := roundTrip(t, old, "before", time.Second); got != "before" {
		t.Fatalf("healthy link echoed %q", got)
	}
	l.Partition()
	during := dial(t, l.Addr())
	if _, err := during.Write([]byte("during")); err != nil {
		t.Fatal(err)
	}
	l.HealNewOnly()
	if got := roundTrip(t, old, "lost", 300*time.Millisecond); got != "" {
		t.Fatalf("a connection from before the partition forwarded %q after HealNewOnly", got)
	}
	if got := read(t, during, len("during"), time.Second); got != "during" {
		t.Fatalf("a connection made during the partition echoed %q", got)
	}
	if got := roundTrip(t, dial(t, l.Addr()), "new", time.Second); got != "new" {
		t.Fatalf("a new connection echoed %q", got)
	}
	// A second partition and heal leave the stranded connection stranded.
	l.Partition()
	l.Heal()
	if got := read(t, old, 1, 300*time.Millisecond); got != "" {
		t.Fatalf("a stranded connection came back with %q", got)
	}
}

func TestLinkHalfCloseAndTargetDown(t *testing.T) {
	target := echoServer(t)
	l := etcdtest.NewLink(t, target)
	c := dial(t, l.Addr())
	if _, err := c.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("after a half-close: %q, %v; want the echo and EOF", got, err)
	}

	// A target that is gone is a closed connection, not a hang.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := ln.Addr().String()
	ln.Close()
	c = dial(t, etcdtest.NewLink(t, gone).Addr())
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("link to a closed port: read %v, want EOF", err)
	}
}

// Close ends every connection, hung or not, and every goroutine of the
// link.
func TestLinkCloseLeavesNothing(t *testing.T) {
	target := echoServer(t)
	before := runtime.NumGoroutine()
	l := etcdtest.NewLink(t, target)
	var conns []net.Conn
	for range 3 {
		c := dial(t, l.Addr())
		if got := roundTrip(t, c, "x", time.Second); got != "x" {
			t.Fatalf("echoed %q", got)
		}
		conns = append(conns, c)
	}
	l.Partition()
	for _, c := range conns {
		_, _ = c.Write([]byte("held"))
	}
	conns = append(conns, dial(t, l.Addr())) // hung before connecting
	time.Sleep(50 * time.Millisecond)
	l.HealNewOnly()
	l.Partition()

	done := make(chan struct{})
	go func() { l.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	l.Close() // idempotent
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("connection %d after Close: %v, want EOF", i, err)
		}
		c.Close()
	}
	// The echo server's handlers end with their connections; give them a
	// moment, then nothing of the link may be left.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

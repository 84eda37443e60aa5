package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The HTTP-level adversarial cases of the reliability suite, against the
// real binary as a sidecar (route rules, an upstream that counts what
// reaches it) over raw TCP, so that nothing in a Go client tidies the
// bytes up first.

type adversarialTarget struct {
	api   string
	hits  *atomic.Int64 // requests that reached the upstream
	token string
}

func startAdversarialTarget(t *testing.T) *adversarialTarget {
	t.Helper()
	hits := new(atomic.Int64)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "upstream saw %s %s", r.Method, r.URL.Path)
	}))
	t.Cleanup(up.Close)
	cfg := filepath.Join(t.TempDir(), "portcullis.yaml")
	if err := os.WriteFile(cfg, []byte("upstream: "+up.URL+"\nroutes:\n  - path: /app/**\n    permission: 'apps#{level}'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServeProcess(t, "--data-dir", t.TempDir(), "--admin-password", reliabilityAdminPassword, "--bcrypt-cost", "10", "--config", cfg)
	top := &topology{replicas: []*replica{{api: p.api}}, client: &http.Client{Timeout: 10 * time.Second}}
	return &adversarialTarget{api: p.api, hits: hits, token: top.login(t, 0, "admin", reliabilityAdminPassword)}
}

// exchange writes raw bytes on one connection and reads until the server
// closes it or goes quiet for quiet, returning the status codes of every
// response it sent.
func (a *adversarialTarget) exchange(t *testing.T, raw string, quiet time.Duration) []int {
	t.Helper()
	conn, err := net.Dial("tcp", a.api)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	var statuses []int
	br := bufio.NewReader(conn)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(quiet))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return statuses
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return statuses
		}
	}
}

func TestAdversarialHTTP(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	a := startAdversarialTarget(t)
	bearer := "Authorization: Bearer " + a.token + "\r\n"
	for _, c := range []struct {
		name string
		raw  string
		// want is the status of each response the server may send, in
		// order; the connection must then close or go quiet.
		want []int
	}{
		{"CL and TE together", "POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /app/smuggled HTTP/1.1\r\nHost: a\r\n\r\n", []int{401}},
		{"chunked body, then a pipelined request", "POST /app/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /app/smuggled HTTP/1.1\r\nHost: a\r\n" + bearer + "\r\n", []int{401}},
		{"duplicate CL", "POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 30\r\n\r\nGET /app/smuggled HTTP/1.1\r\n\r\n", []int{400}},
		{"odd Transfer-Encoding", "POST /app/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", []int{501}},
		{"chunked then identity", "POST /app/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", []int{501}},
		{"space before colon", "GET /app/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", []int{400}},
		{"NUL in a header value", "GET /app/x HTTP/1.1\r\nHost: a\r\nX-Note: a\x00b\r\n\r\n", []int{400}},
		{"bare LF line endings are not a second request", "GET /app/x HTTP/1.1\nHost: a\nX-Note: a\rGET /app/y HTTP/1.1\n\n", []int{400}},
		{"2 MB of headers", "GET /app/x HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", []int{431}},
		{"h2c upgrade is not honoured", "GET /app/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", []int{400}},
		{"HTTP/2 preface on the HTTP/1 port", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", nil},
		{"rejected WebSocket upgrade, then a pipelined request", "GET /app/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /app/after HTTP/1.1\r\nHost: a\r\n\r\n", []int{401, 401}},
		{"method override headers do not raise access", "GET /app/x HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: GET\r\nX-Method-Override: GET\r\n\r\n", []int{401}},
		{"absolute-form target for another host", "GET http://evil.example/app/x HTTP/1.1\r\nHost: a\r\n\r\n", []int{400}},
		{"oversize body", "POST /users HTTP/1.1\r\nHost: a\r\n" + bearer + "Content-Type: application/json\r\nContent-Length: 3000000\r\n\r\n{\"username\":\"" + strings.Repeat("a", 3000000-14) + "\"}", []int{413}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := a.hits.Load()
			got := a.exchange(t, c.raw, 2*time.Second)
			// A 400 may or may not be followed by the server closing; what
			// matters is that nothing else was answered.
			if c.want == nil {
				for _, s := range got {
					if s < 400 {
						t.Errorf("statuses %v: want nothing or errors", got)
					}
				}
			} else if !slices.Equal(got, c.want) {
				t.Errorf("statuses %v, want %v", got, c.want)
			}
			if n := a.hits.Load() - before; n != 0 {
				t.Errorf("%d requests reached the upstream", n)
			}
		})
	}
	t.Run("an authorised WebSocket upgrade still reaches the upstream", func(t *testing.T) {
		// The control: the same bytes with a token do get through (the
		// upstream is no WebSocket server, so it answers normally).
		before := a.hits.Load()
		got := a.exchange(t, "GET /app/x HTTP/1.1\r\nHost: a\r\n"+bearer+"\r\n", time.Second)
		if !slices.Equal(got, []int{200}) || a.hits.Load()-before != 1 {
			t.Errorf("statuses %v, hits %d", got, a.hits.Load()-before)
		}
	})
}

// TestSlowloris holds 800 connections that trickle header bytes while
// normal traffic goes on: its latency must stay in the same range as
// without them, and the slow connections are cut once ReadHeaderTimeout
// passes (checked in the long run).
func TestSlowloris(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	a := startAdversarialTarget(t)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	measure := func(d time.Duration) (p50, p99 time.Duration) {
		var lat []time.Duration
		var mu sync.Mutex
		var wg sync.WaitGroup
		end := time.Now().Add(d)
		for range 4 {
			wg.Go(func() {
				for time.Now().Before(end) {
					req, _ := http.NewRequest("GET", "http://"+a.api+"/app/x", nil)
					req.Header.Set("Authorization", "Bearer "+a.token)
					start := time.Now()
					resp, err := client.Do(req)
					took := time.Since(start)
					if err != nil {
						t.Errorf("normal request failed: %v", err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						t.Errorf("normal request: %d", resp.StatusCode)
						return
					}
					mu.Lock()
					lat = append(lat, took)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.Sort(lat)
		if len(lat) == 0 {
			t.Fatal("no normal request completed")
		}
		return lat[len(lat)/2], lat[len(lat)*99/100]
	}
	base50, base99 := measure(2 * time.Second)

	const slow = 800
	conns := make([]net.Conn, 0, slow)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range slow {
		c, err := net.Dial("tcp", a.api)
		if err != nil {
			t.Fatalf("slow connection %d: %v", i, err)
		}
		conns = append(conns, c)
		_, _ = io.WriteString(c, "GET /app/x HTTP/1.1\r\nHost: a\r\n")
	}
	stop := make(chan struct{})
	var trickle sync.WaitGroup
	trickle.Go(func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			for _, c := range conns {
				_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				_, _ = fmt.Fprintf(c, "X-Slow-%d: x\r\n", i)
			}
		}
	})
	under50, under99 := measure(3 * time.Second)
	t.Logf("normal traffic p50/p99: %v/%v alone, %v/%v beside %d slow connections", base50, base99, under50, under99, slow)
	// Loose bounds on a shared machine: the slow sockets cost the server
	// little, so latency must not collapse.
	if under99 > 10*base99+50*time.Millisecond {
		t.Errorf("p99 %v beside slow connections against %v alone", under99, base99)
	}
	if reliabilityLong() {
		// ReadHeaderTimeout (10 s) ends the trickling connections.
		time.Sleep(12 * time.Second)
		closed := 0
		for _, c := range conns {
			_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
				closed++
			}
		}
		t.Logf("%d of %d slow connections closed by the server after 12 s", closed, slow)
		if closed < slow*9/10 {
			t.Errorf("only %d of %d slow connections closed after ReadHeaderTimeout", closed, slow)
		}
	}
	close(stop)
	trickle.Wait()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

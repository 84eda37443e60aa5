package accesslog

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/proxy/rules"
)

func mustPath(t testing.TB, raw string) rules.Path {
	t.Helper()
	p, err := rules.NormalizePath(raw, rules.PathOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAppendJSONEscapesClientControlledFields(t *testing.T) {
	at := time.Date(2026, 11, 29, 8, 0, 0, 123456789, time.UTC)
	cases := []struct {
		name string
		e    Entry
		want map[string]any
	}{
		{"allow", Entry{Time: at, Dialect: "traefik", Rule: "services", Subject: "users/u1", Method: "GET", Host: "api.example.com",
			Path: mustPath(t, "/projects/p1/a%20b/"), Status: 200, Latency: 1500 * time.Microsecond, RequestID: "r1"},
			map[string]any{"decision": "allow", "dialect": "traefik", "rule": "services", "subject": "users/u1", "method": "GET",
				"host": "api.example.com", "path": "/projects/p1/a%20b/", "status": 200.0, "latency_ms": 1.5, "request_id": "r1",
				"log": "access", "msg": "access", "level": "INFO", "time": "2026-11-29T08:00:00.123456789Z"}},
		{"hostile host and request id", Entry{Time: at, Dialect: "nginx", Method: "GET", Host: "a\"b\\c\n\x00\x7f\xff", RawPath: "/x\"y", Status: 401, RequestID: "</script>\u2028"},
			map[string]any{"decision": "unauthenticated", "host": "a\"b\\c\n\x00\x7f\ufffd", "path": "/x\"y", "request_id": "</script>\u2028"}},
		{"error", Entry{Time: at, Dialect: "proxy", Method: "POST", Status: 503}, map[string]any{"decision": "error", "path": "/"}},
		{"deny", Entry{Time: at, Dialect: "api", Method: "POST", Status: 403}, map[string]any{"decision": "deny"}},
		{"long host is clipped", Entry{Time: at, Host: strings.Repeat("h", 2000), Status: 200}, map[string]any{"host": strings.Repeat("h", maxField)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			line := c.e.AppendJSON(nil)
			if !bytes.HasSuffix(line, []byte("}\n")) || bytes.Count(line, []byte("\n")) != 1 {
				t.Fatalf("not one line: %q", line)
			}
			var got map[string]any
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatalf("invalid JSON %q: %v", line, err)
			}
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("%s = %#v, want %#v (line %s)", k, got[k], v, line)
				}
			}
			if c.e.Subject == "" {
				if _, ok := got["subject"]; ok {
					t.Errorf("empty subject logged: %s", line)
				}
			}
		})
	}
}

func TestAppendTextQuotesLikeSlog(t *testing.T) {
	e := Entry{Time: time.Unix(0, 0).UTC(), Dialect: "envoy-http", Method: "GET", Host: "a b=c", Path: mustPath(t, "/x"), Status: 403, Latency: time.Millisecond}
	line := string(e.AppendText(nil))
	for _, want := range []string{"msg=access log=access decision=deny dialect=envoy-http", `host="a b=c"`, " path=/x ", "status=403", "latency_ms=1.000"} {
		if !strings.Contains(line, want) {
			t.Errorf("%q lacks %q", line, want)
		}
	}
	if strings.Count(line, "\n") != 1 {
		t.Errorf("not one line: %q", line)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "\"\\\n\r\t\x00\x1f\x7f", "\xff\xfe", "é☃\U0001F600", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q encodes to invalid JSON %q: %v", s, b, err)
		}
		// Ranging over a string yields U+FFFD per invalid byte, as the
		// encoder replaces them.
		if want := string([]rune(clip(s))); got != want {
			t.Fatalf("%q round-trips to %q, want %q", s, got, want)
		}
		if bytes.IndexByte(b, '\n') >= 0 {
			t.Fatalf("raw newline in %q", b)
		}
	})
}

// lockedBuffer is an io.Writer safe for the flusher and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestWriterFlushesWithinInterval(t *testing.T) {
	var out lockedBuffer
	w := NewWriter(&out, 0, 10*time.Millisecond)
	defer w.Close()
	w.WriteLine([]byte("one\n"))
	deadline := time.Now().Add(5 * time.Second)
	for out.String() != "one\n" {
		if time.Now().After(deadline) {
			t.Fatalf("not flushed: %q", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWriterCloseFlushesAndDropsLaterLines(t *testing.T) {
	var out lockedBuffer
	w := NewWriter(&out, 0, time.Hour)
	for range 100 {
		w.WriteLine([]byte("line\n"))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(out.String(), "line\n"); got != 100 {
		t.Fatalf("%d lines after Close, want 100", got)
	}
	if w.WriteLine([]byte("late\n")) || w.Dropped() != 1 {
		t.Fatalf("line after Close accepted (dropped %d)", w.Dropped())
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// blockingWriter blocks every Write until released.
type blockingWriter struct {
	release chan struct{}
	lockedBuffer
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	return b.lockedBuffer.Write(p)
}

func TestWriterDropsInsteadOfBlockingWhenFull(t *testing.T) {
	out := &blockingWriter{release: make(chan struct{})}
	w := NewWriter(out, 64, time.Millisecond)
	line := []byte("0123456789abcdef\n") // 17 bytes
	start := time.Now()
	accepted := 0
	for range 1000 {
		if w.WriteLine(line) {
			accepted++
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("writes blocked for %v", took)
	}
	// At most two buffers' worth: one held by the blocked flusher, one filling.
	if accepted == 0 || accepted > 2*(64/len(line)) {
		t.Fatalf("accepted %d lines", accepted)
	}
	if int(w.Dropped()) != 1000-accepted {
		t.Fatalf("dropped %d, want %d", w.Dropped(), 1000-accepted)
	}
	close(out.release)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(out.String(), string(line)); got != accepted {
		t.Fatalf("%d lines written, %d accepted", got, accepted)
	}
}

func TestLoggerWritesOneLinePerEntry(t *testing.T) {
	var out lockedBuffer
	l := New(NewWriter(&out, 0, time.Hour), JSON)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				l.Log(&Entry{Time: time.Now(), Dialect: "traefik", Method: "GET", Host: strings.Repeat("x", i), Status: 200})
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("%d lines, want 400", len(lines))
	}
	for _, ln := range lines {
		if !json.Valid([]byte(ln)) {
			t.Fatalf("interleaved or invalid line %q", ln)
		}
	}
}

// BenchmarkEncode compares the hand-written encoder with slog's
// JSONHandler for the same fields (the reason for the former).
func BenchmarkEncode(b *testing.B) {
	e := Entry{Time: time.Now(), Dialect: "traefik", Rule: "services", Subject: "users/0123456789abcdef", Method: "GET",
		Host: "api.example.com", Path: mustPath(b, "/projects/p1/services/s1/x"), Status: 200, Latency: 42 * time.Microsecond, RequestID: "f00dfeedf00dfeed"}
	b.Run("hand-json", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 512)
		for b.Loop() {
			buf = e.AppendJSON(buf[:0])
		}
	})
	b.Run("logger-to-writer", func(b *testing.B) {
		l := New(NewWriter(io.Discard, 0, 0), JSON)
		defer l.Close()
		b.ReportAllocs()
		for b.Loop() {
			l.Log(&e)
		}
	})
	b.Run("slog-json-logattrs", func(b *testing.B) {
		log := slog.New(slog.NewJSONHandler(io.Discard, nil))
		b.ReportAllocs()
		for b.Loop() {
			log.LogAttrs(context.Background(), slog.LevelInfo, "access",
				slog.String("log", "access"), slog.String("decision", DecisionOf(e.Status)), slog.String("dialect", e.Dialect),
				slog.String("rule", e.Rule), slog.String("subject", e.Subject), slog.String("method", e.Method),
				slog.String("host", e.Host), slog.String("path", e.Path.String()), slog.Int("status", e.Status),
				slog.Float64("latency_ms", float64(e.Latency)/1e6), slog.String("request_id", e.RequestID))
		}
	})
}

// The cached timestamp must be byte for byte what time.RFC3339Nano gives,
// across second boundaries, zones and fractions with trailing zeros.
func TestStampCacheMatchesRFC3339Nano(t *testing.T) {
	zones := []*time.Location{time.UTC, time.FixedZone("east", 5*3600+30*60), time.FixedZone("west", -7*3600)}
	if ny, err := time.LoadLocation("America/New_York"); err == nil {
		zones = append(zones, ny) // a DST change at 2026-03-08 07:00 UTC
	}
	base := time.Date(2026, 3, 8, 6, 59, 58, 0, time.UTC)
	nanos := []int{0, 1, 10, 120_000_000, 999_999_999, 500_000_000, 123_456_789, 100}
	var c stampCache
	for _, loc := range zones {
		for s := range 5 {
			for _, ns := range nanos {
				at := base.Add(time.Duration(s)*time.Second + time.Duration(ns)).In(loc)
				want := at.Format(time.RFC3339Nano)
				if got := string(c.appendRFC3339Nano(nil, at)); got != want {
					t.Errorf("%v: got %q, want %q", at, got, want)
				}
			}
		}
	}
	// Years outside the fixed layout fall back to the standard formatter.
	far := time.Date(12345, 1, 2, 3, 4, 5, 6, time.UTC)
	if got, want := string(c.appendRFC3339Nano(nil, far)), far.Format(time.RFC3339Nano); got != want {
		t.Errorf("year 12345: got %q, want %q", got, want)
	}
}

func TestAppendMillis(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0.000"},
		{499 * time.Nanosecond, "0.000"},
		{500 * time.Nanosecond, "0.001"},
		{1500 * time.Microsecond, "1.500"},
		{time.Millisecond + 2*time.Microsecond + 600*time.Nanosecond, "1.003"},
		{12*time.Second + 345*time.Microsecond, "12000.345"},
		{-2 * time.Millisecond, "-2.000"},
	} {
		if got := string(appendMillis(nil, tc.d)); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.d, got, tc.want)
		}
	}
}

// Package accesslog writes one line per request: what was decided, for
// whom, on which rule, and how long it took. Lines are encoded by hand
// into pooled buffers and written by a background Writer, so logging
// costs a request no allocation and no system call.
package accesslog

import (
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/portcullis/portcullis/proxy/rules"
)

// Decisions, the values of the "decision" field.
const (
	Allow           = "allow"
	Deny            = "deny"
	Unauthenticated = "unauthenticated"
	Error           = "error"
)

// DecisionOf names the decision behind a response status: allow below
// 400, unauthenticated on 401, error from 500 on (the store or an
// upstream failed), deny for every other refusal (403, 429, 400 for an
// ambiguous request, ...).
func DecisionOf(status int) string {
	switch {
	case status < 400:
		return Allow
	case status == 401:
		return Unauthenticated
	case status >= 500:
		return Error
	}
	return Deny
}

// Entry is one request. It must not hold secrets: Path is the path only,
// never the query string (which may carry a token).
type Entry struct {
	Time time.Time
	// Decision is Allow, Deny, Unauthenticated or Error; empty: derived
	// from Status with DecisionOf. It is the authorization decision, so a
	// proxied request that was allowed stays "allow" whatever the
	// upstream answered.
	Decision string
	Dialect  string
	Rule     string
	Subject  string
	Method   string
	Host     string
	// Path is the normalised path; RawPath, when set, is logged instead
	// (requests that were never normalised).
	Path      rules.Path
	RawPath   string
	Status    int
	Latency   time.Duration
	RequestID string
}

func (e *Entry) decision() string {
	if e.Decision != "" {
		return e.Decision
	}
	return DecisionOf(e.Status)
}

// Format is the encoding of lines.
type Format uint8

// The formats: JSON lines (the default) or slog-style key=value text.
const (
	JSON Format = iota
	Text
)

// maxField bounds client-controlled fields (host, path, request id).
const maxField = 512

// Logger encodes entries and hands them to a Writer.
type Logger struct {
	w      *Writer
	format Format
	pool   sync.Pool
}

// New returns a Logger writing to w.
func New(w *Writer, format Format) *Logger {
	return &Logger{w: w, format: format}
}

// Log writes e. It never blocks on I/O; a line that does not fit in the
// Writer's buffer is dropped and counted.
func (l *Logger) Log(e *Entry) {
	bp, _ := l.pool.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 512)
		bp = &b
	}
	buf := (*bp)[:0]
	if l.format == Text {
		buf = e.AppendText(buf)
	} else {
		buf = e.AppendJSON(buf)
	}
	l.w.WriteLine(buf)
	*bp = buf
	l.pool.Put(bp)
}

// Dropped is the number of lines dropped because the buffer was full.
func (l *Logger) Dropped() uint64 { return l.w.Dropped() }

// Close flushes and stops the Writer.
func (l *Logger) Close() error { return l.w.Close() }

// AppendJSON appends e as one JSON object and a newline, with the field
// names slog's JSONHandler uses for time, level and message.
func (e *Entry) AppendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = stamps.appendRFC3339Nano(b, e.Time)
	b = append(b, `","level":"INFO","msg":"access","log":"access","decision":"`...)
	b = append(b, e.decision()...)
	b = append(b, `","dialect":`...)
	b = appendJSONString(b, e.Dialect)
	if e.Rule != "" {
		b = append(b, `,"rule":`...)
		b = appendJSONString(b, e.Rule)
	}
	if e.Subject != "" {
		b = append(b, `,"subject":`...)
		b = appendJSONString(b, e.Subject)
	}
	b = append(b, `,"method":`...)
	b = appendJSONString(b, e.Method)
	b = append(b, `,"host":`...)
	b = appendJSONString(b, e.Host)
	b = append(b, `,"path":`...)
	if e.RawPath != "" {
		b = appendJSONString(b, e.RawPath)
	} else {
		// The normalised path is percent-encoded: nothing to escape.
		b = append(b, '"')
		b = e.Path.AppendTo(b)
		b = append(b, '"')
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, `,"latency_ms":`...)
	b = appendMillis(b, e.Latency)
	if e.RequestID != "" {
		b = append(b, `,"request_id":`...)
		b = appendJSONString(b, e.RequestID)
	}
	return append(b, "}\n"...)
}

// AppendText appends e in the key=value form of slog's TextHandler.
func (e *Entry) AppendText(b []byte) []byte {
	b = append(b, "time="...)
	b = stamps.appendRFC3339Nano(b, e.Time)
	b = append(b, " level=INFO msg=access log=access decision="...)
	b = append(b, e.decision()...)
	b = appendTextField(b, "dialect", e.Dialect)
	if e.Rule != "" {
		b = appendTextField(b, "rule", e.Rule)
	}
	if e.Subject != "" {
		b = appendTextField(b, "subject", e.Subject)
	}
	b = appendTextField(b, "method", e.Method)
	b = appendTextField(b, "host", e.Host)
	if e.RawPath != "" {
		b = appendTextField(b, "path", e.RawPath)
	} else {
		b = append(b, " path="...)
		b = e.Path.AppendTo(b)
	}
	b = append(b, " status="...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, " latency_ms="...)
	b = appendMillis(b, e.Latency)
	if e.RequestID != "" {
		b = appendTextField(b, "request_id", e.RequestID)
	}
	return append(b, '\n')
}

func clip(s string) string {
	if len(s) > maxField {
		return s[:maxField]
	}
	return s
}

const hexDigits = "0123456789abcdef"

// needsJSONEscape marks the bytes appendJSONString cannot copy as they
// are: quotes, backslashes, control bytes, DEL and every non-ASCII byte
// (validated as UTF-8 one rune at a time).
var needsJSONEscape = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c < 0x20 || c == '"' || c == '\\' || c >= 0x7f
	}
	return t
}()

// appendJSONString appends s (clipped to maxField bytes) as a JSON
// string: quotes, backslashes and control bytes escaped, invalid UTF-8
// replaced by U+FFFD as encoding/json does. encoding/json's escaping of
// <, > and & is for HTML and not needed in logs.
func appendJSONString(b []byte, s string) []byte {
	s = clip(s)
	b = append(b, '"')
	// Most fields need no escaping: copy the clean prefix in one go.
	clean := 0
	for clean < len(s) && !needsJSONEscape[s[clean]] {
		clean++
	}
	b = append(b, s[:clean]...)
	for i := clean; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// appendTextField appends " key=value", quoting value like slog's
// TextHandler when it is empty or holds spaces, quotes, '=' or anything
// outside printable ASCII.
func appendTextField(b []byte, key, value string) []byte {
	value = clip(value)
	b = append(b, ' ')
	b = append(b, key...)
	b = append(b, '=')
	if needsQuote(value) {
		return strconv.AppendQuote(b, value)
	}
	return append(b, value...)
}

func needsQuote(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '=' || c == '\\' {
			return true
		}
	}
	return false
}

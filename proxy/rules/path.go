// Package rules maps HTTP requests to the permission they need: it
// normalises the request target once, so that the path a decision is made
// on is exactly the path that goes upstream, and matches it against an
// ordered list of route rules (first match wins).
package rules

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrAmbiguous marks a request target that could mean different things to
// Portcullis and to the upstream (encoded separators, control bytes, ...).
// Such requests are refused with 400, never guessed at.
var ErrAmbiguous = errors.New("ambiguous request target")

// MaxTargetBytes bounds a request target (path and query).
const MaxTargetBytes = 8 << 10

// Path is a normalised request path.
type Path struct {
	// Segments are the decoded, non-empty segments after dot-segment
	// resolution. Rules match on these.
	Segments []string
	// Trailing records a trailing slash ("/a/b/"), which upstreams may treat
	// differently from "/a/b"; rules ignore it.
	Trailing bool
}

// String is the canonical escaped form that is sent upstream.
func (p Path) String() string {
	var b strings.Builder
	for _, s := range p.Segments {
		b.WriteByte('/')
		b.WriteString(escapeSegment(s))
	}
	if len(p.Segments) == 0 || p.Trailing {
		b.WriteByte('/')
	}
	return b.String()
}

// PathOptions loosen normalisation.
type PathOptions struct {
	// AllowSemicolons accepts ';' in path segments (matrix parameters).
	// Off by default: servlet containers strip ";params" before routing,
	// so "/admin;x=1" may reach "/admin" upstream while a rule saw
	// "/admin;x=1".
	AllowSemicolons bool
}

// SplitTarget separates a request target ("/path?query") into its path and
// raw query. A raw '#' is refused: clients never send fragments, so one in
// a request is an attempt to make two parsers disagree.
func SplitTarget(target string) (path, rawQuery string, err error) {
	if len(target) > MaxTargetBytes {
		return "", "", fmt.Errorf("%w: request target longer than %d bytes", ErrAmbiguous, MaxTargetBytes)
	}
	if strings.IndexByte(target, '#') >= 0 {
		return "", "", fmt.Errorf("%w: raw '#' in request target", ErrAmbiguous)
	}
	path, rawQuery, _ = strings.Cut(target, "?")
	for i := 0; i < len(rawQuery); i++ {
		if c := rawQuery[i]; c < 0x20 || c == 0x7f {
			return "", "", fmt.Errorf("%w: control byte in query", ErrAmbiguous)
		}
	}
	return path, rawQuery, nil
}

// NormalizePath resolves a raw (still percent-encoded) absolute path:
// percent-decoding happens exactly once per segment, "." and ".." segments
// (also when encoded) are resolved, and empty segments (duplicate slashes)
// are dropped. Anything two servers could read differently is ErrAmbiguous:
// an encoded '/' or '\' inside a segment, a raw '\', NUL or other control
// bytes (raw or encoded), a double-encoded escape such as "%252F", a
// malformed escape, ';' unless allowed, or ".." above the root.
func NormalizePath(raw string, opt PathOptions) (Path, error) {
	if raw == "" || raw[0] != '/' {
		return Path{}, fmt.Errorf("%w: path must start with '/'", ErrAmbiguous)
	}
	if len(raw) > MaxTargetBytes {
		return Path{}, fmt.Errorf("%w: path longer than %d bytes", ErrAmbiguous, MaxTargetBytes)
	}
	p := Path{Segments: make([]string, 0, strings.Count(raw, "/"))}
	rest := raw[1:]
	for {
		seg, more, found := strings.Cut(rest, "/")
		last := !found
		if seg == "" {
			if last {
				p.Trailing = true
			}
		} else {
			dec, err := decodeSegment(seg, opt)
			if err != nil {
				return Path{}, err
			}
			switch dec {
			case ".":
				p.Trailing = last
			case "..":
				if len(p.Segments) == 0 {
					return Path{}, fmt.Errorf("%w: '..' climbs above the root", ErrAmbiguous)
				}
				p.Segments = p.Segments[:len(p.Segments)-1]
				p.Trailing = last
			default:
				p.Segments = append(p.Segments, dec)
				p.Trailing = false
			}
		}
		if last {
			break
		}
		rest = more
	}
	return p, nil
}

func decodeSegment(seg string, opt PathOptions) (string, error) {
	if !opt.AllowSemicolons && strings.IndexByte(seg, ';') >= 0 {
		return "", fmt.Errorf("%w: ';' path parameter in %q", ErrAmbiguous, seg)
	}
	if strings.IndexByte(seg, '%') < 0 {
		if err := checkBytes(seg); err != nil {
			return "", err
		}
		return seg, nil
	}
	buf := make([]byte, 0, len(seg))
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if c != '%' {
			buf = append(buf, c)
			continue
		}
		if i+2 >= len(seg) || !isHex(seg[i+1]) || !isHex(seg[i+2]) {
			return "", fmt.Errorf("%w: malformed percent-escape in %q", ErrAmbiguous, seg)
		}
		d := unhex(seg[i+1])<<4 | unhex(seg[i+2])
		switch d {
		case '/', '\\':
			return "", fmt.Errorf("%w: encoded separator in %q", ErrAmbiguous, seg)
		case ';':
			// Decoded, it would be re-sent as a raw ';', a parameter
			// delimiter: the upstream would read another path.
			return "", fmt.Errorf("%w: encoded ';' in %q", ErrAmbiguous, seg)
		}
		buf = append(buf, d)
		i += 2
	}
	dec := string(buf)
	if err := checkBytes(dec); err != nil {
		return "", err
	}
	// "%252F" decodes to "%2F": an upstream that decodes again would see a
	// different path than the rules did.
	for i := 0; i+2 < len(dec); i++ {
		if dec[i] == '%' && isHex(dec[i+1]) && isHex(dec[i+2]) {
			return "", fmt.Errorf("%w: double-encoded escape in %q", ErrAmbiguous, seg)
		}
	}
	return dec, nil
}

func checkBytes(s string) error {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c == 0x7f:
			return fmt.Errorf("%w: control byte in path", ErrAmbiguous)
		case c == '\\':
			return fmt.Errorf("%w: backslash in path", ErrAmbiguous)
		}
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: path is not valid UTF-8", ErrAmbiguous)
	}
	return nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// escapeSegment percent-encodes everything but RFC 3986 unreserved
// characters and a few sub-delims that are unambiguous in a segment.
func escapeSegment(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if !segmentSafe(s[i]) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if segmentSafe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

func segmentSafe(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', '=', ':', '@', ';':
		return true
	}
	return false
}

// SplitURL splits an absolute "http(s)://host[:port]/path?query" into its
// scheme, host (port kept) and request target without decoding anything:
// the path is normalised later, once.
func SplitURL(raw string) (scheme, host, target string, ok bool) {
	scheme, rest, found := strings.Cut(raw, "://")
	scheme = strings.ToLower(scheme)
	if !found || (scheme != "http" && scheme != "https") {
		return "", "", "", false
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		host, target = rest, "/"
	} else {
		host, target = rest[:end], rest[end:]
	}
	if target[0] == '?' {
		target = "/" + target
	}
	if host == "" || strings.ContainsAny(host, "@ \\") {
		return "", "", "", false
	}
	return scheme, host, target, true
}

// HostOnly drops a port from a Host value ("[::1]:80" → "::1").
func HostOnly(h string) string {
	if strings.HasPrefix(h, "[") {
		if end := strings.IndexByte(h, ']'); end > 0 {
			return h[1:end]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		if _, err := strconv.Atoi(h[i+1:]); err == nil {
			return h[:i]
		}
	}
	return h
}

// AppendTo appends String's form to b without allocating (the access log
// writes it once per request).
func (p Path) AppendTo(b []byte) []byte {
	const hexDigits = "0123456789ABCDEF"
	for _, s := range p.Segments {
		b = append(b, '/')
		for i := 0; i < len(s); i++ {
			if c := s[i]; segmentSafe(c) {
				b = append(b, c)
			} else {
				b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
			}
		}
	}
	if len(p.Segments) == 0 || p.Trailing {
		b = append(b, '/')
	}
	return b
}

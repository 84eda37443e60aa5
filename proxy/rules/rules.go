package rules

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/portcullis/portcullis/authz"
)

// Rule is one route rule as written in the configuration file.
type Rule struct {
	// Name identifies the rule in logs, metrics and `routes test`;
	// default "#<index>".
	Name string `json:"name,omitempty"`
	// Host is an exact host name or "*.suffix" (any subdomain of suffix,
	// not suffix itself); empty matches every host. Ports are ignored.
	Host string `json:"host,omitempty"`
	// Path is a pattern of '/'-separated segments: literals, "{name}"
	// (one segment, captured), "*" (one segment) and a final "**" (zero
	// or more segments). Required.
	Path string `json:"path"`
	// Methods limits the rule to these methods; empty matches all.
	Methods []string `json:"methods,omitempty"`
	// Headers must all be present with exactly these values ("*": any
	// value).
	Headers map[string]string `json:"headers,omitempty"`
	// Public lets matching requests through without credentials.
	Public bool `json:"public,omitempty"`
	// Permission is the template of the permission required, with the
	// path's captures and {level} substituted, e.g.
	// "projects/{project}/services/{service}#{level}".
	Permission string `json:"permission,omitempty"`
	// Levels overrides the access level per method (e.g. {"POST": "read"}).
	Levels map[string]string `json:"levels,omitempty"`
	// CORSPreflight lets CORS preflight requests (OPTIONS with Origin and
	// Access-Control-Request-Method) through without credentials.
	CORSPreflight bool `json:"cors_preflight,omitempty"`
	// Upstream overrides the reverse-proxy target for matching requests.
	Upstream string `json:"upstream,omitempty"`
}

// DefaultLevels maps methods to access levels. Methods not listed (WebDAV
// verbs, CONNECT, anything unknown) need admin: when in doubt, deny.
var DefaultLevels = map[string]authz.Level{
	http.MethodGet:     authz.LevelRead,
	http.MethodHead:    authz.LevelRead,
	http.MethodOptions: authz.LevelRead,
	http.MethodPost:    authz.LevelWrite,
	http.MethodPut:     authz.LevelWrite,
	http.MethodPatch:   authz.LevelWrite,
	http.MethodDelete:  authz.LevelAdmin,
}

// Request is what rules see of a request: never the query string.
type Request struct {
	Method string
	Host   string // without port, any case
	Path   Path
	Header http.Header
}

// IsPreflight reports whether r is a CORS preflight request.
func (r Request) IsPreflight() bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != ""
}

// Outcome is the result of matching a request.
type Outcome int

const (
	// NoMatch: no rule matched; the table's default applies.
	NoMatch Outcome = iota
	// Public: let through without credentials.
	Public
	// Protected: Permission is required.
	Protected
)

func (o Outcome) String() string {
	switch o {
	case Public:
		return "public"
	case Protected:
		return "protected"
	}
	return "no-match"
}

// Match is the verdict of the route table for one request.
type Match struct {
	Outcome Outcome
	// Rule is the matched rule's name ("" for NoMatch).
	Rule string
	// Index is the matched rule's position (-1 for NoMatch).
	Index int
	// Permission is set for Protected.
	Permission string
	// Upstream is the matched rule's upstream override, if any.
	Upstream *url.URL
}

// ErrBadCapture marks a path segment that cannot be used in a permission
// (it would name another resource, e.g. "a:b" under contaxy's ':'
// separator, or holds characters permissions do not allow).
var ErrBadCapture = errors.New("path segment not usable in a permission")

// Table is a compiled, immutable list of rules.
type Table struct {
	rules []compiled
}

type compiled struct {
	Rule
	hostSuffix string // for "*.suffix": ".suffix"
	pattern    []patternSegment
	tail       bool // pattern ends in "**"
	methods    map[string]bool
	headers    []headerMatch
	levels     map[string]authz.Level
	template   []templatePart
	upstream   *url.URL
}

type patternSegment struct {
	literal string
	capture string // name for "{name}"
	any     bool   // "*"
}

type headerMatch struct{ name, value string }

type templatePart struct {
	literal string
	capture string // "" with literal set; "level" for {level}
}

// Compile checks every rule and reports all problems at once.
func Compile(rules []Rule) (*Table, error) {
	t := &Table{}
	var errs []error
	for i, r := range rules {
		c, err := compile(r)
		if r.Name == "" {
			c.Name = fmt.Sprintf("#%d", i)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("route %s (%s): %w", c.Name, r.Path, err))
			continue
		}
		t.rules = append(t.rules, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t, nil
}

func compile(r Rule) (compiled, error) {
	c := compiled{Rule: r}
	var errs []error
	switch {
	case r.Host == "":
	case strings.HasPrefix(r.Host, "*."):
		c.hostSuffix = strings.ToLower(r.Host[1:])
		if len(c.hostSuffix) < 2 || strings.Contains(c.hostSuffix[1:], "*") {
			errs = append(errs, fmt.Errorf("host %q: want a name or *.suffix", r.Host))
		}
	case strings.ContainsAny(r.Host, "*/:@ "):
		errs = append(errs, fmt.Errorf("host %q: want a name or *.suffix (no port, no other wildcards)", r.Host))
	}
	captures := map[string]bool{}
	if !strings.HasPrefix(r.Path, "/") {
		errs = append(errs, fmt.Errorf("path %q: must start with '/'", r.Path))
	} else {
		segs := strings.Split(strings.Trim(r.Path, "/"), "/")
		if r.Path == "/" {
			segs = nil
		}
		for i, s := range segs {
			switch {
			case s == "**":
				if i != len(segs)-1 {
					errs = append(errs, errors.New("'**' is allowed only as the last segment"))
				}
				c.tail = true
			case s == "*":
				c.pattern = append(c.pattern, patternSegment{any: true})
			case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}"):
				name := s[1 : len(s)-1]
				if !validName(name) || name == "level" {
					errs = append(errs, fmt.Errorf("capture %q: want letters, digits or '_' (and not 'level')", s))
				} else if captures[name] {
					errs = append(errs, fmt.Errorf("capture {%s} used twice", name))
				}
				captures[name] = true
				c.pattern = append(c.pattern, patternSegment{capture: name})
			case s == "":
				errs = append(errs, errors.New("empty segment"))
			case strings.ContainsAny(s, "{}*%?#;\\"):
				errs = append(errs, fmt.Errorf("segment %q: wildcards must be a whole segment; no escapes, '?', '#' or ';'", s))
			case s == "." || s == "..":
				errs = append(errs, fmt.Errorf("segment %q: dot segments never reach a rule", s))
			default:
				c.pattern = append(c.pattern, patternSegment{literal: s})
			}
		}
	}
	if len(r.Methods) > 0 {
		c.methods = map[string]bool{}
		for _, m := range r.Methods {
			c.methods[strings.ToUpper(m)] = true
		}
	}
	for name, v := range r.Headers {
		if name == "" || strings.ContainsAny(name, " _:") {
			errs = append(errs, fmt.Errorf("header %q: invalid name", name))
		}
		c.headers = append(c.headers, headerMatch{name: http.CanonicalHeaderKey(name), value: v})
	}
	c.levels = map[string]authz.Level{}
	for m, l := range DefaultLevels {
		c.levels[m] = l
	}
	for m, l := range r.Levels {
		lv, err := authz.ParseLevel(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("levels[%s]: %w", m, err))
			continue
		}
		c.levels[strings.ToUpper(m)] = lv
	}
	switch {
	case r.Public && r.Permission != "":
		errs = append(errs, errors.New("a public route takes no permission"))
	case !r.Public && r.Permission == "":
		errs = append(errs, errors.New("permission: required unless public: true"))
	case r.Permission != "":
		tpl, err := parseTemplate(r.Permission, captures)
		if err != nil {
			errs = append(errs, err)
		}
		c.template = tpl
	}
	if r.Upstream != "" {
		u, err := ParseUpstream(r.Upstream)
		if err != nil {
			errs = append(errs, err)
		}
		c.upstream = u
	}
	return c, errors.Join(errs...)
}

// ParseUpstream checks a reverse-proxy target: an absolute http(s) URL
// without query, fragment or credentials.
func ParseUpstream(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("upstream %q: want http(s)://host[:port][/path] without credentials, query or fragment", raw)
	}
	return u, nil
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '_' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return false
		}
	}
	return true
}

// parseTemplate splits "projects/{project}#{level}" into parts and checks
// that a sample expansion is a valid permission.
func parseTemplate(tpl string, captures map[string]bool) ([]templatePart, error) {
	var parts []templatePart
	rest := tpl
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			parts = append(parts, templatePart{literal: rest})
			break
		}
		if open > 0 {
			parts = append(parts, templatePart{literal: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("permission %q: unclosed '{'", tpl)
		}
		name := rest[open+1 : open+end]
		if name != "level" && !captures[name] {
			return nil, fmt.Errorf("permission %q: {%s} is not captured by the path", tpl, name)
		}
		parts = append(parts, templatePart{capture: name})
		rest = rest[open+end+1:]
	}
	var sampleCaps []capture
	for name := range captures {
		sampleCaps = append(sampleCaps, capture{name, "x"})
	}
	sample := string(expandInto(nil, parts, sampleCaps, "read"))
	if _, err := authz.ParsePermission(sample); err != nil {
		return nil, fmt.Errorf("permission %q: %w", tpl, err)
	}
	return parts, nil
}

// Len is the number of rules.
func (t *Table) Len() int { return len(t.rules) }

// Match finds the first rule matching r and builds the permission it
// needs. A captured segment that cannot be part of a permission is
// ErrBadCapture.
func (t *Table) Match(r Request) (Match, error) {
	var capBuf [8]capture
	for i := range t.rules {
		c := &t.rules[i]
		caps, ok := c.matches(r, capBuf[:0])
		if !ok {
			continue
		}
		m := Match{Rule: c.Name, Index: i, Upstream: c.upstream}
		if c.Public || (c.CORSPreflight && r.IsPreflight()) {
			m.Outcome = Public
			return m, nil
		}
		m.Outcome = Protected
		level, ok := c.levels[r.Method]
		if !ok {
			level = authz.LevelAdmin
		}
		for _, cp := range caps {
			if err := checkCapture(cp.value); err != nil {
				return Match{}, fmt.Errorf("%w: {%s} = %q: %v", ErrBadCapture, cp.name, cp.value, err)
			}
		}
		var buf [128]byte
		perm := string(expandInto(buf[:0], c.template, caps, level.String()))
		if _, err := authz.ParsePermission(perm); err != nil {
			return Match{}, fmt.Errorf("%w: %v", ErrBadCapture, err)
		}
		m.Permission = perm
		return m, nil
	}
	return Match{Index: -1}, nil
}

type capture struct{ name, value string }

func expandInto(out []byte, parts []templatePart, caps []capture, level string) []byte {
	for _, p := range parts {
		switch p.capture {
		case "":
			out = append(out, p.literal...)
		case "level":
			out = append(out, level...)
		default:
			for _, c := range caps {
				if c.name == p.capture {
					out = append(out, c.value...)
					break
				}
			}
		}
	}
	return out
}

// checkCapture keeps a captured segment to exactly one permission segment.
func checkCapture(v string) error {
	if strings.ContainsAny(v, "/:#*") {
		return errors.New("contains a permission separator or wildcard")
	}
	return nil
}

func (c *compiled) matches(r Request, caps []capture) ([]capture, bool) {
	if c.Host != "" {
		host := r.Host
		if c.hostSuffix != "" {
			if len(host) <= len(c.hostSuffix) || !strings.EqualFold(host[len(host)-len(c.hostSuffix):], c.hostSuffix) {
				return nil, false
			}
		} else if !strings.EqualFold(host, c.Host) {
			return nil, false
		}
	}
	if c.methods != nil && !c.methods[r.Method] {
		return nil, false
	}
	segs := r.Path.Segments
	if len(segs) < len(c.pattern) || (!c.tail && len(segs) != len(c.pattern)) {
		return nil, false
	}
	for i, p := range c.pattern {
		switch {
		case p.any:
		case p.capture != "":
			caps = append(caps, capture{p.capture, segs[i]})
		case p.literal != segs[i]:
			return nil, false
		}
	}
	for _, h := range c.headers {
		vs := r.Header[h.name]
		if len(vs) == 0 || (h.value != "*" && (len(vs) != 1 || vs[0] != h.value)) {
			return nil, false
		}
	}
	return caps, true
}

package authz

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Level is an access level. Levels are ordered: a higher level implies every
// lower one (admin implies write implies read).
type Level uint8

// The access levels of contaxy's permission model. LevelNone is the zero
// value and marks a role reference in a Grant; it never appears in a
// Permission.
const (
	LevelNone Level = iota
	LevelRead
	LevelWrite
	LevelAdmin
)

// Limits on untrusted input. They keep etcd keys small and bound the work a
// single request can cause.
const (
	MaxResourceLen   = 512
	MaxPermissionLen = 1024
)

// String returns the canonical lower-case name of l ("" for LevelNone).
func (l Level) String() string {
	switch l {
	case LevelRead:
		return "read"
	case LevelWrite:
		return "write"
	case LevelAdmin:
		return "admin"
	}
	return ""
}

// ParseLevel accepts read, write and admin, trimmed of spaces and tabs, in any case.
func ParseLevel(s string) (Level, error) {
	t := strings.Trim(s, " \t")
	switch {
	case strings.EqualFold(t, "read"):
		return LevelRead, nil
	case strings.EqualFold(t, "write"):
		return LevelWrite, nil
	case strings.EqualFold(t, "admin"):
		return LevelAdmin, nil
	}
	if len(t) > 16 {
		t = t[:16] + "…"
	}
	if !utf8.ValidString(t) {
		return LevelNone, invalid("access level", "not valid UTF-8")
	}
	return LevelNone, invalid("access level", "unknown access level "+quote(t)+" (want read, write or admin)")
}

// Permission is RESOURCE#LEVEL in canonical form: the resource is validated
// and trimmed, the level is one of read, write, admin.
type Permission struct {
	Resource string
	Level    Level
}

// String returns the canonical text form, e.g. "projects/a#write".
func (p Permission) String() string { return p.Resource + "#" + p.Level.String() }

// Covers reports whether holding p grants the requested permission req: p's
// level is at least req's, and req's resource is p's resource, lies below it at
// a '/' or ':' boundary, or p's resource is "*". Both must be canonical.
func (p Permission) Covers(req Permission) bool {
	return p.Level >= req.Level && resourceCovers(p.Resource, req.Resource)
}

func resourceCovers(granted, requested string) bool {
	if granted == "*" || granted == requested {
		return true
	}
	if len(requested) <= len(granted) || requested[:len(granted)] != granted {
		return false
	}
	b := requested[len(granted)]
	return b == '/' || b == ':'
}

// Grant is what a resource holds: a Permission, or (Level == LevelNone) a
// reference to another resource whose grants it inherits, i.e. a role.
type Grant struct {
	Resource string
	Level    Level
}

// IsRole reports whether g references another resource instead of granting a permission.
func (g Grant) IsRole() bool { return g.Level == LevelNone }

// Permission returns g as a Permission; only meaningful when !g.IsRole().
func (g Grant) Permission() Permission { return Permission{Resource: g.Resource, Level: g.Level} }

// String returns the canonical text form: "roles/user" or "projects/a#read".
func (g Grant) String() string {
	if g.IsRole() {
		return g.Resource
	}
	return g.Resource + "#" + g.Level.String()
}

// ParsePermission parses RESOURCE#LEVEL as contaxy does: the resource is
// trimmed of white space and of leading and trailing '/' and ':', the level of
// white space and case. Unlike contaxy it rejects anything that could make a
// permission mean more than it says; see ParseResource.
func ParsePermission(s string) (Permission, error) {
	if len(s) > MaxPermissionLen {
		return Permission{}, invalid("permission", "longer than "+strconv.Itoa(MaxPermissionLen)+" bytes")
	}
	if !utf8.ValidString(s) {
		return Permission{}, invalid("permission", "not valid UTF-8")
	}
	i := strings.IndexByte(s, '#')
	if i < 0 {
		return Permission{}, invalid("permission", quote(s)+" has no access level (want RESOURCE#LEVEL)")
	}
	if strings.IndexByte(s[i+1:], '#') >= 0 {
		return Permission{}, invalid("permission", quote(s)+" has more than one '#'")
	}
	res, err := ParseResource(s[:i])
	if err != nil {
		return Permission{}, err
	}
	lvl, err := ParseLevel(s[i+1:])
	if err != nil {
		return Permission{}, err
	}
	return Permission{Resource: res, Level: lvl}, nil
}

// ParseGrant parses a permission (RESOURCE#LEVEL) or a role reference (a bare resource name).
func ParseGrant(s string) (Grant, error) {
	if strings.IndexByte(s, '#') >= 0 {
		p, err := ParsePermission(s)
		return Grant(p), err
	}
	if len(s) > MaxPermissionLen {
		return Grant{}, invalid("permission", "longer than "+strconv.Itoa(MaxPermissionLen)+" bytes")
	}
	res, err := ParseResource(s)
	if err != nil {
		return Grant{}, err
	}
	return Grant{Resource: res}, nil
}

// ParseResource validates a resource name and returns its canonical form:
// trimmed of spaces and tabs and of leading and trailing '/' and ':'. The name
// "*" stands for every resource. Otherwise the name is a sequence of segments
// separated by '/' or ':'; every segment must be non-empty, must not be "." or
// "..", and may hold only ASCII letters, digits and -._~!$&'()+,=@. So a
// resource never contains '%' (no percent-encoding to decode differently
// later), '#', '*', '|', '?', '\', spaces or control bytes, and can never
// climb out of the resource it names.
func ParseResource(s string) (string, error) {
	if len(s) > MaxPermissionLen {
		return "", invalid("resource name", "longer than "+strconv.Itoa(MaxPermissionLen)+" bytes")
	}
	if !utf8.ValidString(s) {
		return "", invalid("resource name", "not valid UTF-8")
	}
	r := strings.Trim(strings.Trim(s, " \t"), "/:")
	switch {
	case r == "":
		return "", invalid("resource name", "empty")
	case len(r) > MaxResourceLen:
		return "", invalid("resource name", "longer than "+strconv.Itoa(MaxResourceLen)+" bytes")
	case r == "*":
		return r, nil
	}
	start := 0
	for i := 0; i <= len(r); i++ {
		if i < len(r) && r[i] != '/' && r[i] != ':' {
			if !resourceByte(r[i]) {
				return "", invalid("resource name", quote(r)+" contains "+quote(string(rune(r[i])))+" (allowed: letters, digits, -._~!$&'()+,=@ and / or : between segments)")
			}
			continue
		}
		switch seg := r[start:i]; seg {
		case "":
			return "", invalid("resource name", quote(r)+" has an empty segment")
		case ".", "..":
			return "", invalid("resource name", quote(r)+" has a "+quote(seg)+" segment")
		}
		start = i + 1
	}
	return r, nil
}

func resourceByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("-._~!$&'()+,=@", b) >= 0
}

// quote renders untrusted input for an error message: short, printable, quoted.
func quote(s string) string {
	const max = 80
	if len(s) > max {
		s = s[:max] + "…"
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			b.WriteString("\\x")
			b.WriteByte("0123456789abcdef"[r>>4&0xf])
			b.WriteByte("0123456789abcdef"[r&0xf])
			continue
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

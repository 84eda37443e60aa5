package authz_test

import (
	"strings"
	"testing"

	"github.com/portcullis/portcullis/authz"
)

// FuzzParsePermission checks that parsing never panics, that canonical
// forms are fixed points, and that no accepted resource can escape the
// resource it names (no dot segments, no encodings, no separators).
func FuzzParsePermission(f *testing.F) {
	for _, s := range []string{"projects/a#read", "/x/:y:#ADMIN", "*#admin", "a/../b#read", "a%2fb#write", "a//b#read", "\xff#read", "roles/user", "a#read#write"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := authz.ParsePermission(s)
		if err != nil {
			return
		}
		c := p.String()
		q, err := authz.ParsePermission(c)
		if err != nil || q != p {
			t.Fatalf("canonical form %q of %q does not round-trip: %v %v", c, s, q, err)
		}
		if p.Resource == "*" {
			return
		}
		for _, seg := range strings.FieldsFunc(p.Resource, func(r rune) bool { return r == '/' || r == ':' }) {
			if seg == "." || seg == ".." {
				t.Fatalf("accepted dot segment in %q", p.Resource)
			}
		}
		if strings.ContainsAny(p.Resource, "%#*|\\?\x00 ") || strings.Contains(p.Resource, "//") {
			t.Fatalf("accepted dangerous byte in %q", p.Resource)
		}
		if !p.Covers(p) {
			t.Fatalf("%q does not cover itself", c)
		}
	})
}

// FuzzCovers checks Covers against an independent oracle built from
// segment lists.
func FuzzCovers(f *testing.F) {
	f.Add("projects/a#write", "projects/a/b#read")
	f.Add("projects/a#write", "projects/ab#read")
	f.Add("*#read", "x:y#read")
	f.Add("a:b#admin", "a:b/c#write")
	f.Fuzz(func(t *testing.T, g, r string) {
		gp, err1 := authz.ParsePermission(g)
		rp, err2 := authz.ParsePermission(r)
		if err1 != nil || err2 != nil {
			return
		}
		want := gp.Level >= rp.Level && (gp.Resource == "*" || oraclePrefix(gp.Resource, rp.Resource))
		if got := gp.Covers(rp); got != want {
			t.Fatalf("%s covers %s = %v, oracle says %v", gp, rp, got, want)
		}
	})
}

// oraclePrefix splits both names into (separator, segment) tokens and
// compares token lists.
func oraclePrefix(granted, requested string) bool {
	gt, rt := tokens(granted), tokens(requested)
	if len(gt) > len(rt) {
		return false
	}
	for i := range gt {
		if gt[i] != rt[i] {
			return false
		}
	}
	return true
}

func tokens(s string) []string {
	var out []string
	cur := ""
	for _, r := range s {
		if r == '/' || r == ':' {
			out = append(out, cur, string(r))
			cur = ""
			continue
		}
		cur += string(r)
	}
	return append(out, cur)
}

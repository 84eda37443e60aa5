package rules

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzNormalizePath checks that normalisation is idempotent (what goes
// upstream normalises to itself, so the upstream reads the path the rules
// matched) and that no accepted segment can act as a separator or a dot
// segment.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/a/b/", "//a/./b/../c", "/a/%2e%2e/b", "/a%2fb", "/a%252fb", "/caf%C3%A9", "/a;b", "/..", "/a\\b", "/%00"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, raw string, semis bool) {
		opt := PathOptions{AllowSemicolons: semis}
		p, err := NormalizePath(raw, opt)
		if err != nil {
			return
		}
		for _, s := range p.Segments {
			if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/\\\x00") {
				t.Fatalf("%q: bad segment %q", raw, s)
			}
		}
		out := p.String()
		if app := string(p.AppendTo([]byte("x"))); app != "x"+out {
			t.Fatalf("%q: AppendTo %q, String %q", raw, app, out)
		}
		q, err := NormalizePath(out, opt)
		if err != nil || q.String() != out || len(q.Segments) != len(p.Segments) {
			t.Fatalf("%q normalises to %q, which normalises to %q (%v)", raw, out, q.String(), err)
		}
	})
}

// FuzzMatch checks that whatever path arrives, a protected match yields a
// permission whose resource stays inside the rule's template.
func FuzzMatch(f *testing.F) {
	tbl, err := Compile(exampleRules)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("GET", "api.example.com", "/projects/p/services/s/x")
	f.Add("POST", "x.apps.example.com", "/a%3Ab")
	f.Fuzz(func(t *testing.T, method, host, raw string) {
		p, err := NormalizePath(raw, PathOptions{})
		if err != nil {
			return
		}
		m, err := tbl.Match(Request{Method: method, Host: host, Path: p, Header: http.Header{}})
		if err != nil || m.Outcome != Protected {
			return
		}
		if m.Rule == "services" {
			rest := strings.TrimPrefix(m.Permission, "projects/")
			proj, rest, _ := strings.Cut(rest, "/services/")
			svc, _, _ := strings.Cut(rest, "#")
			if proj != p.Segments[1] || svc != p.Segments[3] || strings.ContainsAny(proj+svc, "/:") {
				t.Fatalf("%q → %q escapes its template", raw, m.Permission)
			}
		}
	})
}

package rules

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	cases := []struct {
		in, want string
		opt      PathOptions
		bad      bool
	}{
		{in: "/", want: "/"},
		{in: "/a/b", want: "/a/b"},
		{in: "/a/b/", want: "/a/b/"},
		{in: "//a///b", want: "/a/b"},
		{in: "/a/./b", want: "/a/b"},
		{in: "/a/b/..", want: "/a/"},
		{in: "/a/../b", want: "/b"},
		{in: "/a/%2e%2e/b", want: "/b"},
		{in: "/a/%2E/b", want: "/a/b"},
		{in: "/a/.%2e/admin", want: "/admin"},
		{in: "/caf%C3%A9", want: "/caf%C3%A9"},
		{in: "/a%20b", want: "/a%20b"},
		{in: "/a~b-c_d.e", want: "/a~b-c_d.e"},
		{in: "/%41", want: "/A"},
		{in: "/a;b=1", opt: PathOptions{AllowSemicolons: true}, want: "/a;b=1"},
		{in: "/..", bad: true},
		{in: "/a/../..", bad: true},
		{in: "/a%2fb", bad: true},
		{in: "/a%2Fb", bad: true},
		{in: "/a%5cb", bad: true},
		{in: "/a\\b", bad: true},
		{in: "/a%00b", bad: true},
		{in: "/a\x00b", bad: true},
		{in: "/a\rb", bad: true},
		{in: "/a%0ab", bad: true},
		{in: "/a%7fb", bad: true},
		{in: "/a%252Fb", bad: true},
		{in: "/a%2", bad: true},
		{in: "/a%zz", bad: true},
		{in: "/a;b", bad: true},
		{in: "/a%3bb", bad: true},
		{in: "/a%3bb", opt: PathOptions{AllowSemicolons: true}, bad: true},
		{in: "/%ff", bad: true},
		{in: "a/b", bad: true},
		{in: "", bad: true},
		{in: "/" + strings.Repeat("a", MaxTargetBytes), bad: true},
	}
	for _, c := range cases {
		p, err := NormalizePath(c.in, c.opt)
		if c.bad {
			if !errors.Is(err, ErrAmbiguous) {
				t.Errorf("NormalizePath(%q) = %q, %v; want ErrAmbiguous", c.in, p, err)
			}
			continue
		}
		if err != nil || p.String() != c.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", c.in, p, err, c.want)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	for _, c := range []struct{ in, path, query string }{
		{"/a?b=1", "/a", "b=1"},
		{"/a", "/a", ""},
		{"/a?b?c", "/a", "b?c"},
	} {
		p, q, err := SplitTarget(c.in)
		if err != nil || p != c.path || q != c.query {
			t.Errorf("SplitTarget(%q) = %q %q %v", c.in, p, q, err)
		}
	}
	for _, in := range []string{"/a#frag", "/a?x=#", "/a?x=\n", "/" + strings.Repeat("a", MaxTargetBytes)} {
		if _, _, err := SplitTarget(in); !errors.Is(err, ErrAmbiguous) {
			t.Errorf("SplitTarget(%q): %v, want ErrAmbiguous", in, err)
		}
	}
}

var exampleRules = []Rule{
	{Name: "public", Path: "/public/**", Public: true},
	{Name: "cors", Path: "/api/**", Permission: "api#{level}", CORSPreflight: true, Methods: []string{"OPTIONS"}},
	{Name: "services", Host: "api.example.com", Path: "/projects/{project}/services/{service}/**", Methods: []string{"GET", "POST", "DELETE", "PROPFIND"}, Permission: "projects/{project}/services/{service}#{level}"},
	{Name: "wild-host", Host: "*.apps.example.com", Path: "/**", Permission: "apps#{level}"},
	{Name: "v2", Path: "/v2/*/items", Headers: map[string]string{"X-Api-Version": "2"}, Permission: "items#read"},
	{Name: "reports", Path: "/reports/{id}", Levels: map[string]string{"POST": "read"}, Permission: "reports/{id}#{level}"},
}

func TestMatch(t *testing.T) {
	tbl, err := Compile(exampleRules)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		method, host, path string
		header             http.Header
		outcome            Outcome
		rule, perm         string
		bad                bool
	}{
		{method: "GET", path: "/public", outcome: Public, rule: "public"},
		{method: "GET", path: "/public/a/b", outcome: Public, rule: "public"},
		{method: "GET", path: "/publicity", outcome: NoMatch},
		{method: "GET", host: "api.example.com", path: "/projects/p1/services/s1", outcome: Protected, rule: "services", perm: "projects/p1/services/s1#read"},
		{method: "POST", host: "API.Example.com", path: "/projects/p1/services/s1/x/y", outcome: Protected, rule: "services", perm: "projects/p1/services/s1#write"},
		{method: "DELETE", host: "api.example.com", path: "/projects/p1/services/s1", outcome: Protected, rule: "services", perm: "projects/p1/services/s1#admin"},
		{method: "PROPFIND", host: "api.example.com", path: "/projects/p1/services/s1", outcome: Protected, rule: "services", perm: "projects/p1/services/s1#admin"},
		{method: "PUT", host: "api.example.com", path: "/projects/p1/services/s1", outcome: NoMatch},
		{method: "GET", host: "other.example.com", path: "/projects/p1/services/s1", outcome: NoMatch},
		{method: "GET", host: "api.example.com", path: "/projects/p1/services", outcome: NoMatch},
		{method: "GET", host: "api.example.com", path: "/projects/a:b/services/s1", bad: true},
		{method: "GET", host: "api.example.com", path: "/projects/a%23b/services/s1", bad: true},
		{method: "GET", host: "x.apps.example.com", path: "/", outcome: Protected, rule: "wild-host", perm: "apps#read"},
		{method: "GET", host: "a.b.apps.example.com", path: "/z", outcome: Protected, rule: "wild-host", perm: "apps#read"},
		{method: "GET", host: "apps.example.com", path: "/z", outcome: NoMatch},
		{method: "GET", host: "evilapps.example.com", path: "/z", outcome: NoMatch},
		{method: "GET", path: "/v2/x/items", header: http.Header{"X-Api-Version": {"2"}}, outcome: Protected, rule: "v2", perm: "items#read"},
		{method: "GET", path: "/v2/x/items", header: http.Header{"X-Api-Version": {"3"}}, outcome: NoMatch},
		{method: "GET", path: "/v2/x/items", header: http.Header{"X-Api-Version": {"2", "3"}}, outcome: NoMatch},
		{method: "GET", path: "/v2/x/items", outcome: NoMatch},
		{method: "POST", path: "/reports/r1", outcome: Protected, rule: "reports", perm: "reports/r1#read"},
		{method: "DELETE", path: "/reports/r1", outcome: Protected, rule: "reports", perm: "reports/r1#admin"},
		{method: "OPTIONS", path: "/api/x", header: http.Header{"Origin": {"https://a"}, "Access-Control-Request-Method": {"PUT"}}, outcome: Public, rule: "cors"},
		{method: "OPTIONS", path: "/api/x", header: http.Header{"Origin": {"https://a"}}, outcome: Protected, rule: "cors", perm: "api#read"},
	}
	for _, c := range cases {
		p, err := NormalizePath(c.path, PathOptions{})
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		h := c.header
		if h == nil {
			h = http.Header{}
		}
		m, err := tbl.Match(Request{Method: c.method, Host: c.host, Path: p, Header: h})
		if c.bad {
			if !errors.Is(err, ErrBadCapture) {
				t.Errorf("%s %s%s: %+v %v, want ErrBadCapture", c.method, c.host, c.path, m, err)
			}
			continue
		}
		if err != nil || m.Outcome != c.outcome || m.Rule != c.rule || m.Permission != c.perm {
			t.Errorf("%s %s%s = %v %q %q %v; want %v %q %q", c.method, c.host, c.path, m.Outcome, m.Rule, m.Permission, err, c.outcome, c.rule, c.perm)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, r := range []Rule{
		{Path: "no-slash", Permission: "a#read"},
		{Path: "/a/**/b", Permission: "a#read"},
		{Path: "/a/{x}/{x}", Permission: "a/{x}#read"},
		{Path: "/a/{level}", Permission: "a#read"},
		{Path: "/a/x*", Permission: "a#read"},
		{Path: "/a/../b", Permission: "a#read"},
		{Path: "/a", Permission: "a/{y}#read"},
		{Path: "/a", Permission: "a#owner"},
		{Path: "/a"},
		{Path: "/a", Public: true, Permission: "a#read"},
		{Path: "/a", Host: "a*.example.com", Permission: "a#read"},
		{Path: "/a", Host: "example.com:8080", Permission: "a#read"},
		{Path: "/a", Levels: map[string]string{"GET": "owner"}, Permission: "a#{level}"},
		{Path: "/a", Headers: map[string]string{"x_y": "1"}, Permission: "a#read"},
		{Path: "/a", Upstream: "ftp://x", Permission: "a#read"},
		{Path: "/a", Upstream: "http://u:p@x", Permission: "a#read"},
	} {
		if _, err := Compile([]Rule{r}); err == nil {
			t.Errorf("Compile(%+v) accepted", r)
		}
	}
}

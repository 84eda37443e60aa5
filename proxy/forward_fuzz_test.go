package proxy_test

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/rules"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// FuzzForwardedRequest sends forward-auth requests from a trusted proxy
// with fuzzed descriptions of the original request (X-Forwarded-*,
// X-Original-*) for a token that may only read projects/p1. Whatever the
// bytes, an allow must be for a request whose path, normalised as the
// upstream will see it, is under /projects/p1 or /public, with a read
// method; and nothing may panic.
func FuzzForwardedRequest(f *testing.F) {
	svc := authztest.Start(f, etcdtest.NewStore(f, etcdtest.SharedEmbedded(f)), authztest.FastConfig())
	u, _, err := svc.CreateUser(bg, authz.UserInput{Username: "fuzz", Password: "fuzzpassword"}, false)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := svc.AddPermission(bg, "users/"+u.ID, "projects/p1#read"); err != nil {
		f.Fatal(err)
	}
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}})
	if err != nil {
		f.Fatal(err)
	}
	tbl, err := rules.Compile(sidecarRules)
	if err != nil {
		f.Fatal(err)
	}
	trusted, _ := proxy.ParseTrustedProxies([]string{"192.0.2.0/24"})
	srv := proxy.New(svc, proxy.Config{Routes: tbl, TrustedProxies: trusted})

	// method, X-Forwarded-Uri, X-Forwarded-Host, X-Original-Url,
	// X-Original-Uri, X-Original-Method, X-Forwarded-For
	f.Add("GET", "/projects/p1/a", "api.example.com", "", "", "", "203.0.113.7")
	f.Add("GET", "/projects/p1/../p2/a", "", "", "", "", "")
	f.Add("GET", "/projects/p2/%2e%2e/p1/a", "", "", "", "", "")
	f.Add("", "", "", "https://api.example.com/projects/p1/a?x=1", "", "GET", "")
	f.Add("", "", "", "", "/projects/p1//a", "GET", "10.0.0.1, 203.0.113.7")
	f.Add("GET", "/public/../projects/p2", "", "", "", "", "")
	f.Add("DELETE", "/projects/p1/a", "", "", "", "", "")
	f.Add("GET", "/projects/p1/a", "", "http://x/projects/p2/a", "/projects/p1/a", "GET", "")
	f.Add("GET", "/projects/p1%2fx/a", "", "", "", "", "::1")
	f.Fuzz(func(t *testing.T, method, fwdURI, fwdHost, origURL, origURI, origMethod, xff string) {
		req := httptest.NewRequest("GET", "/auth/forward", nil)
		req.RemoteAddr = "192.0.2.1:4000"
		req.Header.Set("Authorization", "Bearer "+tok)
		set := func(name, v string) {
			if v != "" {
				req.Header[name] = []string{v}
			}
		}
		set("X-Forwarded-Method", method)
		set("X-Forwarded-Uri", fwdURI)
		set("X-Forwarded-Host", fwdHost)
		set("X-Original-Url", origURL)
		set("X-Original-Uri", origURI)
		set("X-Original-Method", origMethod)
		set("X-Forwarded-For", xff)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if w.Code != 200 {
			return
		}
		// Every description present must name the same target, or the
		// request is ambiguous and must not have been allowed.
		var targets []string
		for _, raw := range []string{fwdURI, origURI} {
			if raw != "" {
				targets = append(targets, raw)
			}
		}
		if origURL != "" {
			_, _, target, ok := rules.SplitURL(origURL)
			if !ok {
				t.Fatalf("allowed with an unparseable X-Original-URL %q", origURL)
			}
			targets = append(targets, target)
		}
		if len(targets) == 0 {
			t.Fatalf("allowed without any description of the original request")
		}
		for _, target := range targets {
			rawPath, _, err := rules.SplitTarget(target)
			if err != nil {
				t.Fatalf("allowed an unsplittable target %q: %v", target, err)
			}
			p, err := rules.NormalizePath(rawPath, rules.PathOptions{})
			if err != nil {
				t.Fatalf("allowed an ambiguous path %q: %v", rawPath, err)
			}
			underP1 := len(p.Segments) >= 2 && p.Segments[0] == "projects" && p.Segments[1] == "p1"
			public := len(p.Segments) >= 1 && p.Segments[0] == "public"
			if !underP1 && !public {
				t.Fatalf("allowed %q (normalised %v): outside /projects/p1 and /public", target, p.Segments)
			}
		}
		if perm := w.Header().Get("X-Auth-Permission"); perm != "" && !strings.HasSuffix(perm, "#read") {
			t.Fatalf("allowed with permission %q for a token that may only read", perm)
		}
		// X-Original-Method counts only beside X-Original-URL/URI (nginx);
		// otherwise it is just a header the client sent.
		methods := []string{method}
		if origURL != "" || origURI != "" {
			methods = append(methods, origMethod)
		}
		for _, m := range methods {
			if m != "" && !slices.Contains([]string{"GET", "HEAD", "OPTIONS"}, m) && w.Header().Get("X-Auth-Permission") != "" {
				t.Fatalf("allowed method %q for a token that may only read", m)
			}
		}
	})
}

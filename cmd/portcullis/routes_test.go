package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const routesYAML = `
upstream: http://127.0.0.1:3000
trusted_proxies: ["10.0.0.0/8"]
routes:
  - path: /public/**
    public: true
  - name: services
    host: api.example.com
    path: /projects/{project}/services/{service}/**
    methods: [GET, POST]
    permission: "projects/{project}/services/{service}#{level}"
shadow_routes:
  - path: /projects/{project}/**
    permission: "projects/{project}#admin"
`

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "portcullis.yaml")
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestRoutesTestCommand(t *testing.T) {
	file := writeConfig(t, routesYAML)
	cases := []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"GET", "https://api.example.com/projects/p1/services/s1/x?y=1"}, exitOK, []string{"rule:       services", "permission: projects/p1/services/s1#read", "upstream:   http://127.0.0.1:3000", "shadow:     protected"}},
		{[]string{"post", "http://api.example.com:8080/projects/p1/services/s1"}, exitOK, []string{"projects/p1/services/s1#write"}},
		{[]string{"GET", "/public/a"}, exitOK, []string{"outcome:    public"}},
		{[]string{"DELETE", "https://api.example.com/projects/p1/services/s1"}, exitRoutesNoMatch, []string{"no rule matches (unmatched: deny)"}},
		{[]string{"GET", "https://api.example.com/projects/p1%2f..%2fp2/services/s1"}, exitRoutesRefused, []string{"refused with 400"}},
		{[]string{"GET", "ftp://x/y"}, exitUsage, nil},
		{[]string{"GET"}, exitUsage, nil},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		code := run(context.Background(), append([]string{"routes", "test", "--config", file}, c.args...), &out, &errOut, nil)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d\n%s%s", c.args, code, c.code, out.String(), errOut.String())
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%v: output lacks %q:\n%s", c.args, w, out.String())
			}
		}
	}

	var out bytes.Buffer
	if code := run(context.Background(), []string{"routes", "test", "--config", file, "-o", "json", "GET", "https://api.example.com/projects/p1/services/s1"}, &out, &out, nil); code != exitOK {
		t.Fatalf("json: exit %d: %s", code, out.String())
	}
	var v routeVerdict
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v.Permission != "projects/p1/services/s1#read" || v.Shadow == nil || v.Shadow.Permission != "projects/p1#admin" {
		t.Fatalf("json output %s: %v", out.String(), err)
	}
}

func TestRoutesConfigErrors(t *testing.T) {
	for name, body := range map[string]string{
		"unknown key in a rule":   "routes:\n  - path: /a\n    permision: a#read\n",
		"rule without permission": "routes:\n  - path: /a\n",
		"bad template":            "routes:\n  - path: /a\n    permission: 'b/{x}#read'\n",
		"bad trusted proxy":       "trusted_proxies: [nonsense]\n",
		"bad upstream":            "upstream: ftp://x\n",
		"bad unmatched":           "unmatched: allow\n",
	} {
		var out bytes.Buffer
		code := run(context.Background(), []string{"routes", "test", "--config", writeConfig(t, body), "GET", "/a"}, &out, &out, nil)
		if code != exitConfig {
			t.Errorf("%s: exit %d, want %d: %s", name, code, exitConfig, out.String())
		}
	}
	if _, err := loadConfig("t", nil, []string{"PORTCULLIS_ROUTES=x"}); err == nil {
		t.Error("routes accepted from the environment")
	}
}

package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// secretSet collects every secret a test used or received.
type secretSet struct {
	t    *testing.T
	list []string
}

func (s *secretSet) add(v ...string) {
	s.t.Helper()
	for _, x := range v {
		if len(x) < 8 {
			s.t.Fatalf("secret %q too short to be looked for (or missing)", x)
		}
		s.list = append(s.list, x)
	}
}

// forms are the encodings a secret could be logged in.
func forms(secret string) []string {
	b := []byte(secret)
	return []string{
		secret, url.QueryEscape(secret), url.PathEscape(secret),
		base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
		hex.EncodeToString(b),
	}
}

// scan fails the test if any form of any secret is in logs.
func (s *secretSet) scan(name, logs string) {
	s.t.Helper()
	for _, sec := range s.list {
		for _, f := range forms(sec) {
			if strings.Contains(logs, f) {
				s.t.Errorf("%s contains the secret %.6s… (as %.12s…)", name, sec, f)
			}
		}
	}
}

func randomSecret(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

type client struct {
	t    *testing.T
	base string
	http *http.Client
}

// reply is a response with its body read.
type reply struct {
	resp *http.Response
	body []byte
}

func (c *client) do(method, path string, body io.Reader, hdr ...string) reply {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Add(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp, b}
}

func (c *client) expect(status int, what string, r reply) []byte {
	c.t.Helper()
	if r.resp.StatusCode != status {
		c.t.Fatalf("%s: status %d, want %d: %s", what, r.resp.StatusCode, status, r.body)
	}
	return r.body
}

const formType = "Content-Type: application/x-www-form-urlencoded"

type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
}

func decode(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// TestLogsNeverHoldSecrets runs a full session against the binary with
// debug logging, the access log and an audit file: sign-ins (good and
// bad), users and passwords, API tokens, forward-auth and the proxy with
// tokens in headers, cookies and the query, an OAuth2 client with its
// secret, refresh, verify and revoke. Then it looks for every secret it
// used or received, in several encodings, in everything the server wrote.
func TestLogsNeverHoldSecrets(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "app") }))
	defer up.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "portcullis.yaml")
	if err := os.WriteFile(cfg, []byte("upstream: "+up.URL+"\napi_prefix: /.portcullis\nallow_query_token: true\ntrusted_proxies: [127.0.0.1]\n"+
		"routes:\n  - name: app\n    path: /app/**\n    permission: 'apps#{level}'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	auditFile := filepath.Join(dir, "audit.log")
	s := &secretSet{t: t}
	adminPassword := randomSecret("adm-")
	s.add(adminPassword)
	api, metrics, logs, stop := startServe(t, "--data-dir", filepath.Join(dir, "data"), "--admin-password", adminPassword, "--config", cfg,
		"--log-format", "json", "--log-level", "debug", "--audit-log", auditFile)
	c := &client{t: t, base: "http://" + api + "/.portcullis", http: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	app := &client{t: t, base: "http://" + api, http: c.http}

	// Sign-ins: a wrong password, then the admin's password grant.
	wrong := randomSecret("wrong-")
	s.add(wrong)
	c.expect(400, "wrong password", c.do("POST", "/auth/oauth/token", strings.NewReader(url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {wrong}}.Encode()), formType))
	var admin tokenResponse
	decode(t, c.expect(200, "admin login", c.do("POST", "/auth/oauth/token", strings.NewReader(url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {adminPassword}}.Encode()), formType)), &admin)
	s.add(admin.AccessToken, admin.RefreshToken)
	bearer := "Authorization: Bearer " + admin.AccessToken

	// A user with a password, changed once; the sign-in form, bad and good.
	alicePassword, alicePassword2 := randomSecret("alice-"), randomSecret("alice2-")
	s.add(alicePassword, alicePassword2)
	var alice struct{ ID string }
	decode(t, c.expect(200, "create user", c.do("POST", "/users", strings.NewReader(`{"username":"alice","password":"`+alicePassword+`"}`), bearer, "Content-Type: application/json")), &alice)
	c.expect(204, "change password", c.do("PUT", "/users/"+alice.ID+":change-password", strings.NewReader(`"`+alicePassword2+`"`), bearer, "Content-Type: application/json"))
	c.expect(204, "grant", c.do("POST", "/auth/permissions?resource_name=users/"+alice.ID+"&permission=apps%23write", nil, bearer))
	c.expect(401, "form login, old password", c.do("POST", "/auth/login", strings.NewReader(url.Values{"username": {"alice"}, "password": {alicePassword}}.Encode()), formType))
	resp := c.do("POST", "/auth/login", strings.NewReader(url.Values{"username": {"alice"}, "password": {alicePassword2}}.Encode()), formType).resp
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("form login: %d", resp.StatusCode)
	}
	var cookie string
	for _, ck := range resp.Cookies() {
		// ctxy_authorized_user holds the user id, which is no secret.
		if len(ck.Value) >= 8 && ck.Name != "ctxy_authorized_user" {
			s.add(ck.Value)
		}
		if ck.Name == "ct_token" {
			cookie = ck.Value
		}
	}
	if cookie == "" {
		t.Fatal("no session cookie")
	}
	// The token endpoint's cookie variant.
	r := c.do("POST", "/auth/oauth/token", strings.NewReader(url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {alicePassword2}, "set_as_cookie": {"true"}}.Encode()), formType, "Sec-Fetch-Site: same-origin")
	body := c.expect(200, "login as cookie", r)
	var aliceTok tokenResponse
	decode(t, body, &aliceTok)
	s.add(aliceTok.AccessToken, aliceTok.RefreshToken)
	for _, ck := range r.resp.Cookies() {
		// ctxy_authorized_user holds the user id, which is no secret.
		if len(ck.Value) >= 8 && ck.Name != "ctxy_authorized_user" {
			s.add(ck.Value)
		}
	}

	c.expect(200, "the API with a query token", c.do("GET", "/users/me?ct_token="+url.QueryEscape(aliceTok.AccessToken), nil))

	// An API token.
	var apiToken string
	decode(t, c.expect(200, "create token", c.do("POST", "/auth/tokens?scope=apps%23read&token_type=api-token", nil, "Cookie: ct_token="+cookie, "Sec-Fetch-Site: same-origin")), &apiToken)
	s.add(apiToken)

	// Forward-auth and the proxy, with tokens everywhere a client puts them.
	bogus := randomSecret("pct_")
	s.add(bogus)
	traefik := []string{"X-Forwarded-Method: GET", "X-Forwarded-Proto: https", "X-Forwarded-Host: app.example.com"}
	for _, tc := range []struct {
		status int
		hdr    []string
	}{
		{200, append([]string{"X-Forwarded-Uri: /app/a", "Authorization: Bearer " + apiToken}, traefik...)},
		{200, append([]string{"X-Forwarded-Uri: /app/b", "Ct_token: " + cookie}, traefik...)},
		{200, append([]string{"X-Forwarded-Uri: /app/c", "Cookie: theme=x; ct_token=" + cookie}, traefik...)},
		{200, append([]string{"X-Forwarded-Uri: /app/d?ct_token=" + url.QueryEscape(apiToken) + "&x=1"}, traefik...)},
		{401, append([]string{"X-Forwarded-Uri: /app/e?ct_token=" + bogus}, traefik...)},
		{401, append([]string{"X-Forwarded-Uri: /app/f", "Authorization: Bearer " + bogus}, traefik...)},
		{400, append([]string{"X-Forwarded-Uri: /app/a%2fg?ct_token=" + apiToken, "Authorization: Bearer " + apiToken}, traefik...)},
		{401, []string{"X-Original-Url: https://app.example.com/app/h?ct_token=" + bogus, "X-Original-Method: GET"}},
	} {
		c.expect(tc.status, "forward-auth "+tc.hdr[0], c.do("GET", "/auth/forward", nil, tc.hdr...))
	}
	c.expect(200, "envoy", c.do("GET", "/auth/forward/envoy/app/x?ct_token="+apiToken, nil, "Host: app.example.com"))
	app.expect(200, "proxy, query token", app.do("GET", "/app/q?ct_token="+url.QueryEscape(apiToken), nil))
	app.expect(200, "proxy, cookie", app.do("GET", "/app/r", nil, "Cookie: ct_token="+cookie))
	app.expect(401, "proxy, bogus", app.do("GET", "/app/s", nil, "Authorization: Bearer "+bogus))
	c.expect(200, "verify", c.do("POST", "/auth/tokens/verify", strings.NewReader(`"`+apiToken+`"`), "Content-Type: application/json"))
	c.expect(401, "verify bogus", c.do("POST", "/auth/tokens/verify", strings.NewReader(`"`+bogus+`"`), "Content-Type: application/json"))

	// An OAuth2 client: its secret, a wrong secret, client credentials.
	var cl struct {
		ID     string `json:"client_id"`
		Secret string `json:"client_secret"`
	}
	decode(t, c.expect(201, "create client", c.do("POST", "/auth/clients", strings.NewReader(`{"client_id":"robot","grant_types":["client_credentials","password","refresh_token"],"scopes":["apps#read","apps#write"]}`), bearer, "Content-Type: application/json")), &cl)
	s.add(cl.Secret, cl.ID+":"+cl.Secret)
	c.expect(204, "grant the client", c.do("POST", "/auth/permissions?resource_name=clients/robot&permission=apps%23read", nil, bearer))
	wrongSecret := randomSecret("cs-")
	s.add(wrongSecret, "robot:"+wrongSecret)
	basic := func(id, secret string) string {
		return "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
	}
	c.expect(401, "wrong client secret", c.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=client_credentials&scope=apps%23read"), formType, basic("robot", wrongSecret)))
	var cc tokenResponse
	decode(t, c.expect(200, "client credentials", c.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=client_credentials&scope=apps%23read"), formType, basic("robot", cl.Secret))), &cc)
	s.add(cc.AccessToken)
	// Password grant through the client (a refresh token bound to it), then refresh.
	var viaClient tokenResponse
	decode(t, c.expect(200, "password grant via client", c.do("POST", "/auth/oauth/token", strings.NewReader(url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {alicePassword2}, "client_id": {"robot"}, "client_secret": {cl.Secret}}.Encode()), formType)), &viaClient)
	s.add(viaClient.AccessToken, viaClient.RefreshToken)
	var refreshed tokenResponse
	decode(t, c.expect(200, "refresh", c.do("POST", "/auth/oauth/token", strings.NewReader(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {viaClient.RefreshToken}}.Encode()), formType, basic("robot", cl.Secret))), &refreshed)
	s.add(refreshed.AccessToken, refreshed.RefreshToken)
	c.expect(400, "refresh reuse", c.do("POST", "/auth/oauth/token", strings.NewReader(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {viaClient.RefreshToken}}.Encode()), formType, basic("robot", cl.Secret)))
	c.expect(200, "introspect", c.do("POST", "/auth/oauth/introspect", strings.NewReader(url.Values{"token": {apiToken}}.Encode()), formType, bearer))

	// Revocation: by value (RFC 7009), by id, and sign-out.
	c.expect(200, "revoke", c.do("POST", "/auth/oauth/revoke", strings.NewReader(url.Values{"token": {apiToken}}.Encode()), formType, bearer))
	c.expect(200, "revoke refresh", c.do("POST", "/auth/oauth/revoke", strings.NewReader(url.Values{"token": {admin.RefreshToken}}.Encode()), formType, bearer))
	c.expect(401, "revoked token", c.do("GET", "/auth/forward", nil, append([]string{"X-Forwarded-Uri: /app/a", "Authorization: Bearer " + apiToken}, traefik...)...))
	c.expect(303, "logout", c.do("POST", "/auth/logout", nil, "Cookie: ct_token="+cookie))
	c.expect(204, "delete client", c.do("DELETE", "/auth/clients/robot", nil, bearer))
	c.expect(204, "delete user", c.do("DELETE", "/users/"+alice.ID, nil, bearer))

	m := (&client{t: t, base: "http://" + metrics, http: http.DefaultClient}).do("GET", "/metrics", nil)
	if !bytes.Contains(m.body, []byte("\nportcullis_access_log_dropped_lines_total ")) {
		t.Errorf("no dropped-lines counter on /metrics")
	}
	stop() // flushes the access log and closes the audit file
	out := logs.String()
	audit, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	s.scan("the server's output", out)
	s.scan("the audit log", string(audit))

	// The scan only means something if the logs are there.
	if n := strings.Count(out, `"log":"access"`); n < 30 {
		t.Errorf("only %d access lines in the output:\n%s", n, out)
	}
	if strings.Contains(out, `"log":"audit"`) {
		t.Errorf("audit records in the output although audit_log is a file")
	}
	for _, want := range []string{`"op":"user.create"`, `"op":"user.password"`, `"op":"grant.add"`, `"op":"token.create"`, `"op":"token.revoke"`,
		`"op":"client.create"`, `"op":"client.delete"`, `"op":"user.delete"`, `"actor":"system"`, `"actor":"users/`} {
		if !bytes.Contains(audit, []byte(want)) {
			t.Errorf("audit log lacks %s:\n%s", want, audit)
		}
	}
	if info, err := os.Stat(auditFile); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("audit file mode %v (%v), want 0600", info.Mode(), err)
	}
}

// TestDefaultAuditToStderrAndAccessLogOff: audit records go to the log
// output as JSON lines marked "log":"audit" by default, and
// --access-log=false writes no access lines.
func TestDefaultAuditToStderrAndAccessLogOff(t *testing.T) {
	api, _, logs, stop := startServe(t, "--data-dir", t.TempDir(), "--admin-password", "adminpassword", "--access-log=false")
	c := &client{t: t, base: "http://" + api, http: http.DefaultClient}
	var admin tokenResponse
	decode(t, c.expect(200, "login", c.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=password&username=admin&password=adminpassword"), formType)), &admin)
	r := c.do("POST", "/auth/permissions?resource_name=roles/dev&permission=projects/p%23read", nil, "Authorization: Bearer "+admin.AccessToken)
	c.expect(204, "grant", r)
	stop()
	var grant map[string]any
	for _, ln := range strings.Split(logs.String(), "\n") {
		if strings.Contains(ln, `"op":"grant.add"`) && strings.Contains(ln, "roles/dev") {
			if err := json.Unmarshal([]byte(ln), &grant); err != nil {
				t.Fatalf("audit line %q: %v", ln, err)
			}
		}
	}
	if grant == nil || grant["log"] != "audit" || grant["permission"] != "projects/p#read" || fmt.Sprint(grant["revision"]) != r.resp.Header.Get("X-Portcullis-Revision") {
		t.Fatalf("audit record %v (revision header %s); output:\n%s", grant, r.resp.Header.Get("X-Portcullis-Revision"), logs)
	}
	if strings.Contains(logs.String(), "log=access") || strings.Contains(logs.String(), `"log":"access"`) {
		t.Fatalf("access lines with --access-log=false:\n%s", logs)
	}
}

package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy"
)

type api struct {
	t   *testing.T
	url string
	svc *authz.Service
}

func newAPI(t *testing.T, cfg proxy.Config) *api {
	t.Helper()
	return newAPIOn(t, newService(t), cfg)
}

// newAPIOn serves svc with cfg.
func newAPIOn(t *testing.T, svc *authz.Service, cfg proxy.Config) *api {
	t.Helper()
	srv := httptest.NewServer(proxy.New(svc, cfg))
	t.Cleanup(srv.Close)
	return &api{t: t, url: srv.URL, svc: svc}
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func (a *api) do(method, path string, body io.Reader, hdr map[string]string) reply {
	a.t.Helper()
	req, err := http.NewRequest(method, a.url+path, body)
	if err != nil {
		a.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}
}

func bearer(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

func (a *api) expect(r reply, status int, what string) reply {
	a.t.Helper()
	if r.status != status {
		a.t.Fatalf("%s: status %d, want %d; body %s", what, r.status, status, r.body)
	}
	return r
}

// login runs the password grant and returns the access token.
func (a *api) login(user, pw string) string {
	a.t.Helper()
	form := url.Values{"grant_type": {"password"}, "username": {user}, "password": {pw}}
	r := a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(form.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 200, "login "+user)
	var tr struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	r.json(a.t, &tr)
	if tr.AccessToken == "" || tr.TokenType != "bearer" || r.header.Get("Cache-Control") != "no-store" {
		a.t.Fatalf("token response %s %v", r.body, r.header)
	}
	return tr.AccessToken
}

// admin creates a user holding *#admin and returns its token.
func (a *api) admin() string {
	a.t.Helper()
	u, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "root", Password: "rootpassword"}, false)
	if err != nil {
		a.t.Fatal(err)
	}
	if _, err := a.svc.AddPermission(bg, "users/"+u.ID, "*#admin"); err != nil {
		a.t.Fatal(err)
	}
	return a.login("root", "rootpassword")
}

func TestCredentialsAndErrors(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	tok := a.admin()
	a.expect(a.do("GET", "/users/me", nil, bearer(tok)), 200, "bearer")
	a.expect(a.do("GET", "/users/me", nil, map[string]string{"ct_token": tok}), 200, "ct_token header")
	a.expect(a.do("GET", "/users/me", nil, map[string]string{"Cookie": "ct_token=" + tok}), 200, "ct_token cookie")
	a.expect(a.do("GET", "/users/me", nil, map[string]string{"Authorization": "Bearer " + tok, "ct_token": tok}), 200, "same token twice")
	a.expect(a.do("GET", "/users/me?ct_token="+url.QueryEscape(tok), nil, nil), 401, "query token disabled by default")
	r := a.expect(a.do("GET", "/users/me", nil, map[string]string{"Authorization": "Bearer " + tok, "ct_token": "pct_other"}), 400, "two different credentials")
	var p proxy.Problem
	r.json(t, &p)
	if p.Code != 400 || p.Message == "" {
		t.Fatalf("problem = %+v", p)
	}
	r = a.expect(a.do("GET", "/users/me", nil, nil), 401, "anonymous")
	if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("401 without WWW-Authenticate: %v", r.header)
	}
	r = a.expect(a.do("GET", "/users/me", nil, bearer("pct_nope")), 401, "bad token")
	if !strings.Contains(r.header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Fatalf("WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
	}

	q := newAPI(t, proxy.Config{AllowQueryToken: true, MaxBodyBytes: 2048})
	qt := q.admin()
	q.expect(q.do("GET", "/users/me?ct_token="+url.QueryEscape(qt), nil, nil), 200, "query token when enabled")
	big := `{"username":"` + strings.Repeat("x", 4096) + `"}`
	q.expect(q.do("POST", "/users", strings.NewReader(big), bearer(qt)), 413, "oversize body")
	q.expect(q.do("POST", "/users", strings.NewReader(`{"username": 5}`), bearer(qt)), 400, "wrong type")
	q.expect(q.do("POST", "/users", strings.NewReader(`{"username": "x"`), bearer(qt)), 400, "malformed JSON")
	q.expect(q.do("POST", "/users", strings.NewReader(`{"username": "x", "role": "admin"}`), bearer(qt)), 400, "unknown field")
	users, _ := q.svc.Users(bg)
	if len(users) != 1 {
		t.Fatalf("refused requests created users: %d", len(users))
	}
}

func TestPermissionsAPI(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	tok := a.admin()
	r := a.expect(a.do("POST", "/auth/permissions?resource_name=roles/dev&permission=projects/p%23write", nil, bearer(tok)), 204, "add")
	if rev, err := strconv.ParseInt(r.header.Get(proxy.RevisionHeader), 10, 64); err != nil || rev <= 0 {
		t.Fatalf("revision header %q", r.header.Get(proxy.RevisionHeader))
	}
	a.expect(a.do("POST", "/auth/permissions?resource_name=roles/dev&permission=projects/p/x%23read", nil, bearer(tok)), 204, "add")
	a.expect(a.do("POST", "/auth/permissions?resource_name=roles/dev&permission=projects/p%23owner", nil, bearer(tok)), 400, "bad level")
	a.expect(a.do("POST", "/auth/permissions?resource_name=roles/../x&permission=a%23read", nil, bearer(tok)), 400, "dot segment")
	a.expect(a.do("POST", "/auth/permissions?permission=a%23read", nil, bearer(tok)), 400, "missing resource")
	var perms []string
	a.expect(a.do("GET", "/auth/permissions?resource_name=roles/dev&resolve_roles=False", nil, bearer(tok)), 200, "list").json(t, &perms)
	if len(perms) != 2 {
		t.Fatalf("perms = %q", perms)
	}
	a.expect(a.do("GET", "/auth/permissions?resource_name=roles/dev&resolve_roles=maybe", nil, bearer(tok)), 400, "bad boolean")
	var res []string
	a.expect(a.do("GET", "/auth/resources?permission=projects/p%23write", nil, bearer(tok)), 200, "resources").json(t, &res)
	if len(res) != 1 || res[0] != "roles/dev" {
		t.Fatalf("resources = %q", res)
	}
	a.expect(a.do("DELETE", "/auth/permissions?resource_name=roles/dev&permission=projects%23write&remove_sub_permissions=True", nil, bearer(tok)), 204, "remove with sub")
	a.expect(a.do("GET", "/auth/permissions?resource_name=roles/dev&resolve_roles=false", nil, bearer(tok)), 200, "list").json(t, &perms)
	if len(perms) != 0 {
		t.Fatalf("after sweep perms = %q", perms)
	}

	// A plain user may not manage permissions.
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "plain", Password: "plainpassword"}, false); err != nil {
		t.Fatal(err)
	}
	ut := a.login("plain", "plainpassword")
	r = a.expect(a.do("POST", "/auth/permissions?resource_name=roles/dev&permission=x%23read", nil, bearer(ut)), 403, "non-admin add")
	var p proxy.Problem
	r.json(t, &p)
	if p.Code != 403 {
		t.Fatalf("problem %+v", p)
	}
	a.expect(a.do("GET", "/auth/resources?permission=x%23read", nil, bearer(ut)), 403, "non-admin resources")
}

func TestTokensAPI(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	a.admin()
	u, _, _ := a.svc.CreateUser(bg, authz.UserInput{Username: "tess", Password: "tesspassword"}, false)
	ut := a.login("tess", "tesspassword")
	var secret string
	a.expect(a.do("POST", "/auth/tokens?scope=users/"+u.ID+"%23read&token_type=api-token&description=ci", nil, bearer(ut)), 200, "create").json(t, &secret)
	a.expect(a.do("POST", "/auth/tokens?scope=projects/x%23read&token_type=api-token", nil, bearer(ut)), 403, "scope not held")
	a.expect(a.do("POST", "/auth/tokens?token_purpose=refresh-token", nil, bearer(ut)), 400, "reserved purpose")
	var list []map[string]any
	a.expect(a.do("GET", "/auth/tokens", nil, bearer(ut)), 200, "list").json(t, &list)
	if len(list) != 1 || list[0]["description"] != "ci" || strings.Contains(string(mustJSON(list)), secret) {
		t.Fatalf("list = %v", list)
	}
	var acc map[string]any
	body, _ := json.Marshal(secret)
	a.expect(a.do("POST", "/auth/tokens/verify?permission=users/"+u.ID+"%23read", strings.NewReader(string(body)), nil), 200, "verify body token").json(t, &acc)
	if acc["authorized_subject"] != "users/"+u.ID || acc["resource_name"] != "users/"+u.ID || acc["access_level"] != "read" {
		t.Fatalf("access = %v", acc)
	}
	a.expect(a.do("POST", "/auth/tokens/verify?permission=users/"+u.ID+"%23write", strings.NewReader(string(body)), nil), 403, "scope too narrow")
	a.expect(a.do("POST", "/auth/tokens/verify?permission=users/"+u.ID+"%23read&explain=true", strings.NewReader(string(body)), bearer(ut)), 403, "explain is for admins")
	a.expect(a.do("DELETE", "/auth/tokens/"+list[0]["id"].(string), nil, bearer(ut)), 204, "delete by id")
	a.expect(a.do("POST", "/auth/tokens/verify", strings.NewReader(string(body)), nil), 401, "deleted token")
	a.expect(a.do("DELETE", "/auth/tokens/nosuchtoken", nil, bearer(ut)), 404, "unknown id")
}

func TestUsersAPI(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	tok := a.admin()
	var u authz.User
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"vera","email":"vera@example.com","password":"verapassword"}`), bearer(tok)), 200, "create").json(t, &u)
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"VERA"}`), bearer(tok)), 409, "duplicate")
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"w@x.yz"}`), bearer(tok)), 400, "username is an email")
	vt := a.login("vera", "verapassword")
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"sneaky"}`), bearer(vt)), 403, "non-admin create")
	var me authz.User
	a.expect(a.do("GET", "/users/me", nil, bearer(vt)), 200, "me").json(t, &me)
	if me.ID != u.ID || !me.HasPassword {
		t.Fatalf("me = %+v", me)
	}
	var reduced []map[string]any
	a.expect(a.do("GET", "/users", nil, bearer(vt)), 200, "list reduced").json(t, &reduced)
	if _, ok := reduced[0]["created_at"]; ok || len(reduced) != 2 {
		t.Fatalf("reduced list = %v", reduced)
	}
	a.expect(a.do("GET", "/users/"+u.ID, nil, bearer(vt)), 200, "get self")
	a.expect(a.do("PATCH", "/users/"+u.ID, strings.NewReader(`{"username":"veronica"}`), bearer(vt)), 403, "patch needs admin on users")
	a.expect(a.do("PATCH", "/users/"+u.ID, strings.NewReader(`{"username":"veronica"}`), bearer(tok)), 200, "patch")
	a.login("veronica", "verapassword")
	a.expect(a.do("PUT", "/users/"+u.ID+":change-password", strings.NewReader(`"newverapassword"`), bearer(vt)), 204, "change own password")
	a.expect(a.do("GET", "/users/me", nil, bearer(vt)), 401, "session after password change")
	vt = a.login("veronica", "newverapassword")
	a.expect(a.do("PUT", "/users/"+u.ID+":change-password", strings.NewReader(`123`), bearer(vt)), 400, "password not a string")
	a.expect(a.do("PUT", "/users/"+u.ID+":reset", strings.NewReader(`"x"`), bearer(vt)), 405, "unknown custom method")
	var ut string
	a.expect(a.do("GET", "/users/"+u.ID+"/token?access_level=read", nil, bearer(vt)), 200, "user token").json(t, &ut)
	a.expect(a.do("GET", "/users/me", nil, bearer(ut)), 200, "user token works")
	a.expect(a.do("DELETE", "/users/"+u.ID, nil, bearer(tok)), 204, "delete")
	a.expect(a.do("GET", "/users/"+u.ID, nil, bearer(tok)), 404, "deleted")
	a.expect(a.do("GET", "/users/me", nil, bearer(ut)), 401, "deleted user's token")
}

func TestOAuthEndpoints(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	a.admin()
	form := url.Values{"grant_type": {"password"}, "username": {"root"}, "password": {"rootpassword"}, "set_as_cookie": {"true"}}
	r := a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(form.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 200, "cookie login")
	var cookieTok string
	for _, c := range (&http.Response{Header: r.header}).Cookies() {
		if c.Name == "ct_token" {
			cookieTok = c.Value
			if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" {
				t.Fatalf("ct_token cookie %+v", c)
			}
		}
	}
	if cookieTok == "" || r.header.Get("Pragma") != "no-cache" {
		t.Fatalf("no ct_token cookie: %v", r.header)
	}
	bad := url.Values{"grant_type": {"password"}, "username": {"root"}, "password": {"wrong"}}
	r = a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(bad.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 400, "wrong password")
	var oe map[string]string
	r.json(t, &oe)
	if oe["error"] != "invalid_grant" {
		t.Fatalf("oauth error %v", oe)
	}
	a.expect(a.do("POST", "/auth/oauth/token?password=x", strings.NewReader("grant_type=password"), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 400, "secret in URL")
	r = a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=magic"), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 400, "unsupported grant")
	r.json(t, &oe)
	if oe["error"] != "unsupported_grant_type" {
		t.Fatalf("oauth error %v", oe)
	}
	// Anonymous revoke/introspect change and disclose nothing.
	rv := url.Values{"token": {cookieTok}}.Encode()
	ct := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	a.expect(a.do("POST", "/auth/oauth/introspect", strings.NewReader(rv), ct), 401, "anonymous introspect")
	a.expect(a.do("POST", "/auth/oauth/revoke", strings.NewReader(rv), ct), 401, "anonymous revoke")
	a.expect(a.do("GET", "/users/me", nil, bearer(cookieTok)), 200, "still valid")
	withAuth := map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer " + cookieTok}
	var in map[string]any
	a.expect(a.do("POST", "/auth/oauth/introspect", strings.NewReader(rv), withAuth), 200, "introspect").json(t, &in)
	if in["active"] != true {
		t.Fatalf("introspect = %v", in)
	}
	a.expect(a.do("POST", "/auth/oauth/revoke", strings.NewReader(url.Values{"token": {"pct_unknown"}}.Encode()), withAuth), 200, "revoke unknown")
	a.expect(a.do("POST", "/auth/oauth/revoke", strings.NewReader(rv), withAuth), 200, "revoke own")
	a.expect(a.do("GET", "/users/me", nil, bearer(cookieTok)), 401, "revoked")
}

func TestAuthZEN(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	tok := a.admin()
	u, _, _ := a.svc.CreateUser(bg, authz.UserInput{Username: "zed", Password: "zedpassword"}, false)
	if _, err := a.svc.AddPermission(bg, "users/"+u.ID, "projects/p#read"); err != nil {
		t.Fatal(err)
	}
	zt := a.login("zed", "zedpassword")
	eval := func(body string, tok string) map[string]any {
		var out map[string]any
		a.expect(a.do("POST", "/access/v1/evaluation", strings.NewReader(body), bearer(tok)), 200, body).json(t, &out)
		return out
	}
	if d := eval(`{"subject":{"type":"user","id":"`+u.ID+`"},"resource":{"type":"projects","id":"p"},"action":{"name":"can_read"}}`, zt); d["decision"] != true {
		t.Fatalf("read = %v", d)
	}
	if d := eval(`{"resource":{"type":"projects","id":"p"},"action":{"name":"write"}}`, zt); d["decision"] != false {
		t.Fatalf("write = %v", d)
	}
	if d := eval(`{"subject":{"type":"user","id":"someone-else"},"resource":{"id":"projects/p"},"action":{"name":"read"}}`, zt); d["decision"] != false {
		t.Fatalf("mismatched subject = %v", d)
	}
	if d := eval(`{"subject":{"type":"user","id":"`+u.ID+`","properties":{"token":"`+zt+`"}},"resource":{"id":"projects/p/x"},"action":{"name":"GET"}}`, tok); d["decision"] != true {
		t.Fatalf("forwarded token = %v", d)
	}
	var batch map[string][]map[string]any
	a.expect(a.do("POST", "/access/v1/evaluations", strings.NewReader(`{"action":{"name":"read"},"evaluations":[{"resource":{"id":"projects/p"}},{"resource":{"id":"projects/q"}}]}`), bearer(zt)), 200, "batch").json(t, &batch)
	if len(batch["evaluations"]) != 2 || batch["evaluations"][0]["decision"] != true || batch["evaluations"][1]["decision"] != false {
		t.Fatalf("batch = %v", batch)
	}
	a.expect(a.do("POST", "/access/v1/evaluation", strings.NewReader(`{"resource":{"id":"p"},"action":{"name":"fly"}}`), bearer(zt)), 400, "unknown action")
	a.expect(a.do("POST", "/access/v1/evaluation", strings.NewReader(`{"resource":{"id":"p"},"action":{"name":"read"}}`), nil), 401, "anonymous")
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

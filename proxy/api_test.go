package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/store/etcdtest"
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
	// The old username is free again: nobody signs in with it, and a new
	// user may take it.
	a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(url.Values{"grant_type": {"password"}, "username": {"vera"}, "password": {"verapassword"}}.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 400, "old username")
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"vera"}`), bearer(tok)), 200, "old username taken by a new user")
	a.expect(a.do("PATCH", "/users/"+u.ID, strings.NewReader(`{"email":"veronica@example.com"}`), bearer(tok)), 200, "patch email")
	a.login("veronica@example.com", "verapassword")
	a.expect(a.do("POST", "/users", strings.NewReader(`{"email":"vera@example.com"}`), bearer(tok)), 200, "old email taken by a new user")
	a.expect(a.do("PUT", "/users/"+u.ID+":change-password", strings.NewReader(`"newverapassword"`), bearer(vt)), 204, "change own password")
	a.expect(a.do("GET", "/users/me", nil, bearer(vt)), 401, "session after password change")
	vt = a.login("veronica", "newverapassword")
	a.expect(a.do("PUT", "/users/"+u.ID+":change-password", strings.NewReader(`123`), bearer(vt)), 400, "password not a string")
	if r := a.expect(a.do("PUT", "/users/"+u.ID+":reset", strings.NewReader(`"x"`), bearer(vt)), 405, "unknown custom method"); r.header.Get("Allow") == "" {
		t.Fatal("405 without an Allow header")
	}
	var ut string
	a.expect(a.do("GET", "/users/"+u.ID+"/token?access_level=read", nil, bearer(vt)), 200, "user token").json(t, &ut)
	a.expect(a.do("GET", "/users/me", nil, bearer(ut)), 200, "user token works")
	// Deleting needs admin on that user (contaxy checks a literal
	// "users/{user_id}" instead): a grant on another user does not do,
	// one on this user does.
	var del authz.User
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"dora","password":"dorapassword"}`), bearer(tok)), 200, "create dora").json(t, &del)
	a.expect(a.do("POST", "/auth/permissions?resource_name=users/"+del.ID+"&permission=users/nobody%23admin", nil, bearer(tok)), 204, "grant on another user")
	dt := a.login("dora", "dorapassword")
	a.expect(a.do("DELETE", "/users/"+u.ID, nil, bearer(dt)), 403, "delete without admin on the user")
	a.expect(a.do("POST", "/auth/permissions?resource_name=users/"+del.ID+"&permission=users/"+u.ID+"%23admin", nil, bearer(tok)), 204, "grant on the user")
	a.expect(a.do("DELETE", "/users/"+u.ID, nil, bearer(dt)), 204, "delete")
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
	r = a.expect(a.do("POST", "/auth/oauth/introspect", strings.NewReader(rv), ct), 401, "anonymous introspect")
	if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="portcullis"` {
		t.Fatalf("anonymous 401 challenge %q: RFC 6750 §3.1 gives no error code without a token", got)
	}
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
	zed := `{"type":"user","id":"` + u.ID + `"}`
	eval := func(body string, tok string) map[string]any {
		var out map[string]any
		a.expect(a.do("POST", "/access/v1/evaluation", strings.NewReader(body), bearer(tok)), 200, body).json(t, &out)
		return out
	}
	if d := eval(`{"subject":`+zed+`,"resource":{"type":"projects","id":"p"},"action":{"name":"can_read"}}`, zt); d["decision"] != true {
		t.Fatalf("read = %v", d)
	}
	if d := eval(`{"subject":`+zed+`,"resource":{"type":"projects","id":"p"},"action":{"name":"write"}}`, zt); d["decision"] != false {
		t.Fatalf("write = %v", d)
	}
	if d := eval(`{"subject":{"type":"user","id":"someone-else"},"resource":{"type":"resource","id":"projects/p"},"action":{"name":"read"}}`, zt); d["decision"] != false {
		t.Fatalf("mismatched subject = %v", d)
	}
	if d := eval(`{"subject":{"type":"user","id":"`+u.ID+`","properties":{"token":"`+zt+`"}},"resource":{"type":"resource","id":"projects/p/x"},"action":{"name":"GET"}}`, tok); d["decision"] != true {
		t.Fatalf("forwarded token = %v", d)
	}
	var batch map[string][]map[string]any
	a.expect(a.do("POST", "/access/v1/evaluations", strings.NewReader(`{"subject":`+zed+`,"action":{"name":"read"},"evaluations":[{"resource":{"type":"resource","id":"projects/p"}},{"resource":{"type":"resource","id":"projects/q"}}]}`), bearer(zt)), 200, "batch").json(t, &batch)
	if len(batch["evaluations"]) != 2 || batch["evaluations"][0]["decision"] != true || batch["evaluations"][1]["decision"] != false {
		t.Fatalf("batch = %v", batch)
	}
	a.expect(a.do("POST", "/access/v1/evaluation", strings.NewReader(`{"subject":`+zed+`,"resource":{"type":"resource","id":"p"},"action":{"name":"fly"}}`), bearer(zt)), 400, "unknown action")
	a.expect(a.do("POST", "/access/v1/evaluation", strings.NewReader(`{"subject":`+zed+`,"resource":{"type":"resource","id":"p"},"action":{"name":"read"}}`), nil), 401, "anonymous")
}

// What the AuthZEN 1.0 specification (and the working group's
// conformance profile) asks of a PDP beyond the decision itself.
func TestAuthZENConformance(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	a.admin()
	u, _, _ := a.svc.CreateUser(bg, authz.UserInput{Username: "zoe", Password: "zoepassword"}, false)
	if _, err := a.svc.AddPermission(bg, "users/"+u.ID, "record/record-1#write"); err != nil {
		t.Fatal(err)
	}
	zt := a.login("zoe", "zoepassword")
	subject := `"subject":{"type":"user","id":"` + u.ID + `"}`
	hdr := map[string]string{"Authorization": "Bearer " + zt, "Content-Type": "application/json"}
	post := func(path, body string, h map[string]string) reply {
		return a.do("POST", path, strings.NewReader(body), h)
	}

	t.Run("X-Request-ID is echoed", func(t *testing.T) {
		h := map[string]string{"Authorization": "Bearer " + zt, "X-Request-ID": "pep-4711"}
		r := a.expect(post("/access/v1/evaluation", `{`+subject+`,"action":{"name":"read"},"resource":{"type":"record","id":"record-1"}}`, h), 200, "with request id")
		if got := r.header.Get("X-Request-Id"); got != "pep-4711" {
			t.Fatalf("X-Request-ID = %q, want pep-4711", got)
		}
	})
	t.Run("unknown members are ignored", func(t *testing.T) {
		var d map[string]any
		a.expect(post("/access/v1/evaluation", `{`+subject+`,"action":{"name":"read"},"resource":{"type":"record","id":"record-1","properties":{"owner":"bob"}},"foo":"bar","futureField":{"nested":true},"context":{"ip":"192.168.1.1"}}`, hdr), 200, "unknown fields").json(t, &d)
		if d["decision"] != true {
			t.Fatalf("decision = %v", d)
		}
	})
	for _, tc := range []struct{ name, body string }{
		{"missing subject", `{"action":{"name":"read"},"resource":{"type":"record","id":"record-1"}}`},
		{"missing action", `{` + subject + `,"resource":{"type":"record","id":"record-1"}}`},
		{"missing resource", `{` + subject + `,"action":{"name":"read"}}`},
		{"subject without type", `{"subject":{"id":"` + u.ID + `"},"action":{"name":"read"},"resource":{"type":"record","id":"record-1"}}`},
		{"subject without id", `{"subject":{"type":"user"},"action":{"name":"read"},"resource":{"type":"record","id":"record-1"}}`},
		{"action without name", `{` + subject + `,"action":{},"resource":{"type":"record","id":"record-1"}}`},
		{"resource without type", `{` + subject + `,"action":{"name":"read"},"resource":{"id":"record-1"}}`},
		{"resource without id", `{` + subject + `,"action":{"name":"read"},"resource":{"type":"record"}}`},
		{"subject is a string", `{"subject":"alice","action":{"name":"read"},"resource":{"type":"record","id":"record-1"}}`},
		{"action.name is a number", `{` + subject + `,"action":{"name":123},"resource":{"type":"record","id":"record-1"}}`},
		{"malformed JSON", `{` + subject + `,`},
		{"empty body", ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.expect(post("/access/v1/evaluation", tc.body, hdr), 400, tc.name)
		})
	}
	t.Run("Content-Type other than JSON", func(t *testing.T) {
		h := map[string]string{"Authorization": "Bearer " + zt, "Content-Type": "text/plain"}
		a.expect(post("/access/v1/evaluation", `{`+subject+`,"action":{"name":"read"},"resource":{"type":"record","id":"record-1"}}`, h), 400, "text/plain")
	})
	t.Run("evaluations without an array answer one decision", func(t *testing.T) {
		for _, extra := range []string{``, `,"evaluations":[]`} {
			var d map[string]any
			a.expect(post("/access/v1/evaluations", `{`+subject+`,"action":{"name":"read"},"resource":{"type":"record","id":"record-1"}`+extra+`}`, hdr), 200, "single").json(t, &d)
			if d["decision"] != true || d["evaluations"] != nil {
				t.Fatalf("%q: response %v, want {\"decision\": true}", extra, d)
			}
		}
	})
	t.Run("a bad evaluation is denied, not the batch", func(t *testing.T) {
		var b map[string][]map[string]any
		a.expect(post("/access/v1/evaluations", `{`+subject+`,"action":{"name":"read"},"evaluations":[{"resource":{"type":"record","id":"record-1"}},{},{"action":{"name":"fly"},"resource":{"type":"record","id":"record-1"}}]}`, hdr), 200, "item errors").json(t, &b)
		ev := b["evaluations"]
		if len(ev) != 3 || ev[0]["decision"] != true || ev[1]["decision"] != false || ev[2]["decision"] != false || ev[1]["context"] == nil {
			t.Fatalf("evaluations = %v", ev)
		}
	})
	t.Run("defaults merge per entity with type and id fallback", func(t *testing.T) {
		var b map[string][]map[string]any
		a.expect(post("/access/v1/evaluations", `{`+subject+`,"action":{"name":"write"},"resource":{"type":"record"},"evaluations":[{"resource":{"id":"record-1"}},{"resource":{"type":"record","id":"record-2"}},{"action":{"name":"read"},"resource":{"id":"record-1"}}]}`, hdr), 200, "defaults").json(t, &b)
		ev := b["evaluations"]
		if len(ev) != 3 || ev[0]["decision"] != true || ev[1]["decision"] != false || ev[2]["decision"] != true {
			t.Fatalf("evaluations = %v", ev)
		}
	})
	t.Run("evaluations_semantic", func(t *testing.T) {
		batch := func(semantic string) reply {
			return post("/access/v1/evaluations", `{`+subject+`,"action":{"name":"write"},"options":{"evaluations_semantic":"`+semantic+`"},"evaluations":[{"resource":{"type":"record","id":"record-1"}},{"resource":{"type":"record","id":"record-2"}},{"resource":{"type":"record","id":"record-1"}}]}`, hdr)
		}
		for semantic, want := range map[string]int{"execute_all": 3, "deny_on_first_deny": 2, "permit_on_first_permit": 1} {
			var b map[string][]map[string]any
			a.expect(batch(semantic), 200, semantic).json(t, &b)
			if len(b["evaluations"]) != want {
				t.Errorf("%s: %d decisions, want %d: %v", semantic, len(b["evaluations"]), want, b)
			}
		}
		a.expect(batch("first_come"), 400, "unknown semantic")
	})
}

// Error bodies say each thing once: no operation named twice by nested
// wrapping, no explanation that repeats the message.
func TestProblemsSayThingsOnce(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	tok := a.admin()
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"alice"}`), bearer(tok)), 200, "create")
	for _, tc := range []struct {
		name         string
		method, path string
		body         string
		hdr          map[string]string
		status       int
		explanation  string
	}{
		{"duplicate user", "POST", "/users", `{"username":"alice"}`, bearer(tok), 409, `create user: login id "alice"`},
		{"delete unknown user", "DELETE", "/users/nosuchuser", ``, bearer(tok), 404, `delete user "nosuchuser"`},
		{"anonymous", "GET", "/users/me", ``, nil, 401, `no token in the request (send Authorization: Bearer, or the ct_token header or cookie)`},
		{"unknown token", "GET", "/users/me", ``, bearer("pct_nope"), 401, `unknown token`},
		{"empty body", "POST", "/users", ``, bearer(tok), 400, `the body is empty; want a JSON value`},
		{"wrong type", "POST", "/users", `{"username":5}`, bearer(tok), 400, `field "username": want a string, got a JSON number`},
		{"unknown field", "POST", "/users", `{"username":"x","role":"admin"}`, bearer(tok), 400, `unknown field "role"`},
	} {
		r := a.expect(a.do(tc.method, tc.path, strings.NewReader(tc.body), tc.hdr), tc.status, tc.name)
		var p proxy.Problem
		r.json(t, &p)
		if p.Explanation != tc.explanation {
			t.Errorf("%s: explanation %q, want %q", tc.name, p.Explanation, tc.explanation)
		}
	}
}

// contaxy's Python client sends the new password as the bare body
// (requests' data=password) and the requested scopes as "scopes"; both
// work.
func TestContaxyClientQuirks(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	tok := a.admin()
	var u authz.User
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"cara","password":"carapassword"}`), bearer(tok)), 200, "create").json(t, &u)
	a.expect(a.do("PUT", "/users/"+u.ID+":change-password", strings.NewReader(`bare password 1`), bearer(tok)), 204, "bare password")
	a.login("cara", "bare password 1")
	a.expect(a.do("PUT", "/users/"+u.ID+":change-password", strings.NewReader(`bare password 2`), map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json"}), 400, "bare password declared as JSON")
	a.expect(a.do("PUT", "/users/"+u.ID+":change-password", strings.NewReader(``), bearer(tok)), 400, "empty body")
	a.login("cara", "bare password 1")

	ct := a.login("cara", "bare password 1")
	a.expect(a.do("POST", "/auth/tokens?scopes=users/"+u.ID+"%23read&token_type=api-token&description=narrow", nil, bearer(ct)), 200, "create with scopes")
	var list []map[string]any
	a.expect(a.do("GET", "/auth/tokens", nil, bearer(ct)), 200, "list").json(t, &list)
	if len(list) != 1 || fmt.Sprint(list[0]["scopes"]) != "[users/"+u.ID+"#read]" {
		t.Fatalf("tokens = %v", list)
	}
}

// Introspection shows a token's details to its own subject, an admin on
// that subject and confidential clients; to anyone else it is inactive.
func TestIntrospectionIsForOwnersAndAdmins(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	root := a.admin()
	for _, n := range []string{"ida", "ivo"} {
		a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"`+n+`","password":"`+n+`password"}`), bearer(root)), 200, "create "+n)
	}
	ida, ivo := a.login("ida", "idapassword"), a.login("ivo", "ivopassword")
	active := func(caller, token string) any {
		var in map[string]any
		h := map[string]string{"Authorization": "Bearer " + caller, "Content-Type": "application/x-www-form-urlencoded"}
		a.expect(a.do("POST", "/auth/oauth/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()), h), 200, "introspect").json(t, &in)
		if in["active"] != true && len(in) != 1 {
			t.Fatalf("inactive answer discloses %v", in)
		}
		return in["active"]
	}
	if active(ida, ida) != true || active(root, ida) != true {
		t.Fatal("own or admin introspection is inactive")
	}
	if active(ivo, ida) != false || active(ida, root) != false {
		t.Fatal("another user's token is disclosed")
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// A flood of password logins is hashed a few at a time (here one), so it
// queues behind the hash limit instead of taking every core, and token
// verification, which hashes nothing, goes on answering meanwhile.
func TestLoginFloodQueuesBehindTheHashLimit(t *testing.T) {
	cfg := authztest.FastConfig()
	cfg.BcryptCost, cfg.MaxConcurrentHashes = 11, 1
	a := newAPIOn(t, authztest.Start(t, etcdtest.NewStore(t, etcdtest.SharedEmbedded(t)), cfg), proxy.Config{})
	tok := a.admin()
	single := time.Hour
	for range 3 {
		start := time.Now()
		a.login("root", "rootpassword")
		single = min(single, time.Since(start))
	}
	const flood = 6
	start := time.Now()
	var wg sync.WaitGroup
	for range flood {
		wg.Go(func() { a.login("root", "rootpassword") })
	}
	var slowest time.Duration
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for verifying := true; verifying; {
		select {
		case <-done:
			verifying = false
		default:
			t0 := time.Now()
			a.expect(a.do("POST", "/auth/tokens/verify?permission=users%23read", nil, bearer(tok)), 200, "verify during the flood")
			slowest = max(slowest, time.Since(t0))
			time.Sleep(5 * time.Millisecond)
		}
	}
	total := time.Since(start)
	// One at a time, six logins take about six single ones; hashed in
	// parallel on this machine's cores they would take far less.
	if total < (flood-1)*single {
		t.Errorf("%d concurrent logins took %v, a single one %v: hashing was not limited to one at a time", flood, total, single)
	}
	if slowest > total/2 {
		t.Errorf("a verify during the flood took %v of the flood's %v: decisions waited for hashing", slowest, total)
	}
}

// A client reads its own writes: the revision a write reports, passed back
// as at_least_revision, gets a decision that includes the write, however
// fresh the cache believed it was. A revision the store has not reached is
// refused.
func TestVerifyAtLeastRevision(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	root := a.admin()
	var u authz.User
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"rhea","password":"rheapassword"}`), bearer(root)), 200, "create").json(t, &u)
	rt := a.login("rhea", "rheapassword")
	for i := range 10 {
		perm := fmt.Sprintf("projects/p%d%%23read", i)
		// Cache the denial first.
		a.expect(a.do("POST", "/auth/tokens/verify?permission="+perm, nil, bearer(rt)), 403, "before the grant")
		w := a.expect(a.do("POST", "/auth/permissions?resource_name=users/"+u.ID+"&permission="+perm, nil, bearer(root)), 204, "grant")
		rev := w.header.Get(proxy.RevisionHeader)
		r := a.expect(a.do("POST", "/auth/tokens/verify?permission="+perm+"&at_least_revision="+rev, nil, bearer(rt)), 200, "read own write at "+rev)
		got, _ := strconv.ParseInt(r.header.Get(proxy.RevisionHeader), 10, 64)
		want, _ := strconv.ParseInt(rev, 10, 64)
		if got < want {
			t.Fatalf("decision at revision %d, demanded %d", got, want)
		}
	}
	a.expect(a.do("POST", "/auth/tokens/verify?at_least_revision=99999999", nil, bearer(rt)), 400, "revision from the future")
	a.expect(a.do("POST", "/auth/tokens/verify?at_least_revision=-1", nil, bearer(rt)), 400, "negative revision")
	a.expect(a.do("POST", "/auth/tokens/verify?at_least_revision=soon", nil, bearer(rt)), 400, "not a number")
}

func TestAuthZENMetadata(t *testing.T) {
	a := newAPI(t, proxy.Config{PublicURL: "https://auth.example.com/pc"})
	var md map[string]string
	a.expect(a.do("GET", "/.well-known/authzen-configuration", nil, nil), 200, "metadata").json(t, &md)
	if md["policy_decision_point"] != "https://auth.example.com/pc" || md["access_evaluation_endpoint"] != "https://auth.example.com/pc/access/v1/evaluation" ||
		md["access_evaluations_endpoint"] != "https://auth.example.com/pc/access/v1/evaluations" {
		t.Fatalf("metadata = %v", md)
	}
}

// explain=true says why, for admins: on an allow the scope, grant and
// roles; on a denial what was missing, in the problem's details.
func TestVerifyExplain(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	root := a.admin()
	var u authz.User
	a.expect(a.do("POST", "/users", strings.NewReader(`{"username":"eve","password":"evepassword"}`), bearer(root)), 200, "create").json(t, &u)
	a.expect(a.do("POST", "/auth/permissions?resource_name=roles/dev&permission=projects/p%23write", nil, bearer(root)), 204, "role grant")
	a.expect(a.do("POST", "/auth/permissions?resource_name=users/"+u.ID+"&permission=roles/dev", nil, bearer(root)), 204, "role")
	et := a.login("eve", "evepassword")
	var narrow string
	a.expect(a.do("POST", "/auth/tokens?scope=projects/p%23read&token_type=api-token", nil, bearer(et)), 200, "narrow token").json(t, &narrow)
	body := func(tok string) io.Reader { return strings.NewReader(string(mustJSON(tok))) }

	var acc struct {
		Explanation authz.Explanation `json:"explanation"`
	}
	a.expect(a.do("POST", "/auth/tokens/verify?permission=projects/p/x%23write&explain=true", body(et), bearer(root)), 200, "allowed through a role").json(t, &acc)
	if ex := acc.Explanation; !ex.Allowed || ex.Grant != "projects/p#write" || ex.Holder != "roles/dev" || ex.Reason == "" {
		t.Fatalf("allow explanation %+v", ex)
	}
	for _, tc := range []struct{ name, perm, token, missing string }{
		{"no grant", "projects/q%23read", et, "grant"},
		{"scope too narrow", "projects/p%23write", narrow, "scope"},
	} {
		var p proxy.Problem
		a.expect(a.do("POST", "/auth/tokens/verify?permission="+tc.perm+"&explain=true", body(tc.token), bearer(root)), 403, tc.name).json(t, &p)
		if p.Details == nil || p.Details.Allowed || p.Details.Missing != tc.missing || p.Explanation == "" {
			t.Fatalf("%s: problem %+v details %+v, want missing %q", tc.name, p, p.Details, tc.missing)
		}
		var plain proxy.Problem
		a.expect(a.do("POST", "/auth/tokens/verify?permission="+tc.perm, body(tc.token), nil), 403, tc.name+" without explain").json(t, &plain)
		if plain.Details != nil {
			t.Fatalf("%s: details without explain=true: %+v", tc.name, plain.Details)
		}
	}
	a.expect(a.do("POST", "/auth/tokens/verify?permission=projects/q%23read&explain=true", body(et), bearer(et)), 403, "explain is for admins")
}

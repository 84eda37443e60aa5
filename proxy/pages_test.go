package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy"
)

func cookieNamed(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// After sign-in the browser goes only to a same-origin path or an allowed
// host: an attacker's link cannot turn the login page into an open redirect.
func TestLoginOpenRedirectIsRefused(t *testing.T) {
	a := newAPI(t, proxy.Config{AllowedRedirectHosts: []string{"app.example.com", ".apps.example.com"}})
	a.admin()
	cases := []struct{ rd, want string }{
		{"/projects/demo?tab=1", "/projects/demo?tab=1"},
		{"https://app.example.com/x", "https://app.example.com/x"},
		{"https://team.apps.example.com/", "https://team.apps.example.com/"},
		{"//evil.example/x", "/auth/account"},
		{"/\\evil.example/x", "/auth/account"},
		{"\\\\evil.example", "/auth/account"},
		{"https://evil.example/", "/auth/account"},
		{"https://app.example.com.evil.example/", "/auth/account"},
		{"https://user@evil.example/", "/auth/account"},
		{"javascript:alert(1)", "/auth/account"},
		{"data:text/html,x", "/auth/account"},
		{"/x\r\nSet-Cookie: a=b", "/auth/account"},
		{"/x\x00y", "/auth/account"},
		{"/x\ty", "/auth/account"},
	}
	for _, c := range cases {
		b := newBrowser(a)
		resp := b.signIn("root", "rootpassword", c.rd)
		if got := resp.Header.Get("Location"); got != c.want {
			t.Errorf("rd %q: Location %q, want %q", c.rd, got, c.want)
		}
		if resp.StatusCode != http.StatusSeeOther {
			t.Errorf("rd %q: status %d, want 303", c.rd, resp.StatusCode)
		}
	}
	// The login page does not carry an unsafe rd into its form either.
	_, body := newBrowser(a).do("GET", "/auth/login-page?rd="+url.QueryEscape("//evil.example"), nil, nil)
	if strings.Contains(body, "evil.example") {
		t.Fatal("login page keeps an unsafe rd")
	}
}

// Another site cannot make a signed-in browser change anything: state-
// changing requests that ride the ct_token cookie are refused when the
// browser marks them cross-site, while scripts (contaxy's Python client
// sends the cookie and neither header) and bearer callers keep working.
func TestCrossSiteRequestsWithTheSessionCookieAreRefused(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	tok := a.admin()
	cookie := "ct_token=" + tok
	post := func(hdr map[string]string) int {
		t.Helper()
		return a.do("POST", "/auth/tokens?token_type=api-token&description=x", nil, hdr).status
	}
	for name, hdr := range map[string]map[string]string{
		"evil Origin":               {"Cookie": cookie, "Origin": "https://evil.example"},
		"null Origin":               {"Cookie": cookie, "Origin": "null"},
		"Sec-Fetch-Site cross-site": {"Cookie": cookie, "Sec-Fetch-Site": "cross-site"},
		"Sec-Fetch-Site same-site":  {"Cookie": cookie, "Sec-Fetch-Site": "same-site"},
		"Origin of another port":    {"Cookie": cookie, "Origin": strings.Replace(a.url, "127.0.0.1:", "127.0.0.1:1", 1)},
	} {
		if got := post(hdr); got != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, got)
		}
	}
	if got := a.do("DELETE", "/auth/permissions?resource_name=x&permission=x%23read", nil, map[string]string{"Cookie": cookie, "Origin": "https://evil.example"}).status; got != 403 {
		t.Errorf("cross-site DELETE: %d", got)
	}
	for name, hdr := range map[string]map[string]string{
		"script with the cookie": {"Cookie": cookie},
		"same origin":            {"Cookie": cookie, "Origin": a.url, "Sec-Fetch-Site": "same-origin"},
		"bearer from anywhere":   {"Authorization": "Bearer " + tok, "Origin": "https://evil.example"},
		"user typed it (none)":   {"Cookie": cookie, "Sec-Fetch-Site": "none"},
	} {
		if got := post(hdr); got != http.StatusOK {
			t.Errorf("%s: %d, want 200", name, got)
		}
	}
	// Reads are not state changes.
	a.expect(a.do("GET", "/users/me", nil, map[string]string{"Cookie": cookie, "Sec-Fetch-Site": "cross-site"}), 200, "cross-site GET")
}

// Login CSRF: another site must not sign the victim's browser in to the
// attacker's account, neither through the form nor set_as_cookie.
func TestLoginCSRFIsRefused(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	a.admin()
	form := url.Values{"username": {"root"}, "password": {"rootpassword"}}
	b := newBrowser(a)
	resp, _ := b.do("POST", "/auth/login", form, map[string]string{"Origin": "https://evil.example"})
	if resp.StatusCode != 403 || cookieNamed(resp, "ct_token") != nil {
		t.Fatalf("cross-site login form: %d", resp.StatusCode)
	}
	resp, _ = b.do("POST", "/auth/login", form, map[string]string{"Origin": a.url, "Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != 403 || cookieNamed(resp, "ct_token") != nil {
		t.Fatalf("browser login without the form token: %d", resp.StatusCode)
	}
	resp, body := b.do("GET", "/auth/login-page", nil, nil)
	m := csrfRE.FindStringSubmatch(body)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("login page: %d", resp.StatusCode)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("login page can be framed: %v", resp.Header)
	}
	bad := url.Values{"username": {"root"}, "password": {"rootpassword"}, "csrf_token": {m[1] + "x"}}
	resp, _ = b.do("POST", "/auth/login", bad, map[string]string{"Origin": a.url})
	if resp.StatusCode != 403 {
		t.Fatalf("wrong form token: %d", resp.StatusCode)
	}
	form.Set("csrf_token", m[1])
	resp, _ = b.do("POST", "/auth/login", form, map[string]string{"Origin": a.url, "Sec-Fetch-Site": "same-origin"})
	if resp.StatusCode != http.StatusSeeOther || cookieNamed(resp, "ct_token") == nil {
		t.Fatalf("same-origin login with the form token: %d", resp.StatusCode)
	}
	// The token endpoint's set_as_cookie from another site.
	tf := url.Values{"grant_type": {"password"}, "username": {"root"}, "password": {"rootpassword"}, "set_as_cookie": {"true"}}
	r := a.do("POST", "/auth/oauth/token", strings.NewReader(tf.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"})
	if r.status != 403 || strings.Contains(strings.Join(r.header.Values("Set-Cookie"), ";"), "ct_token=") {
		t.Fatalf("cross-site set_as_cookie: %d %v", r.status, r.header)
	}
	// A wrong password re-renders the form with 401 and keeps no password.
	b2 := newBrowser(a)
	resp, body = b2.do("POST", "/auth/login", url.Values{"username": {"root"}, "password": {"not-it"}}, nil)
	if resp.StatusCode != 401 || !strings.Contains(body, "Invalid username or password") || strings.Contains(body, "not-it") {
		t.Fatalf("wrong password page: %d", resp.StatusCode)
	}
}

func TestLogoutRevokesTheLoginToken(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	a.admin()
	b := newBrowser(a)
	resp := b.signIn("root", "rootpassword", "")
	tok := cookieNamed(resp, "ct_token")
	user := cookieNamed(resp, "ctxy_authorized_user")
	if tok == nil || !tok.HttpOnly || tok.SameSite != http.SameSiteLaxMode || tok.Path != "/" || tok.Secure || user == nil || user.Value == "" {
		t.Fatalf("session cookies %+v %+v", tok, user)
	}
	// The account page works with the cookie.
	resp, body := b.do("GET", "/auth/account", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(body, "this session") {
		t.Fatalf("account page: %d", resp.StatusCode)
	}
	// A cross-site GET only asks for confirmation.
	resp, body = b.do("GET", "/auth/logout", nil, map[string]string{"Sec-Fetch-Site": "cross-site"})
	if resp.StatusCode != 200 || !strings.Contains(body, "confirm-logout") {
		t.Fatalf("cross-site logout: %d", resp.StatusCode)
	}
	a.expect(a.do("GET", "/users/me", nil, bearer(tok.Value)), 200, "still signed in")
	// contaxy's GET /auth/logout from a script.
	resp, _ = b.do("GET", "/auth/logout", nil, nil)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/auth/login-page") {
		t.Fatalf("logout: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if c := cookieNamed(resp, "ct_token"); c == nil || c.MaxAge >= 0 {
		t.Fatalf("ct_token not cleared: %+v", c)
	}
	if c := cookieNamed(resp, "ctxy_authorized_user"); c == nil || c.MaxAge >= 0 {
		t.Fatalf("ctxy_authorized_user not cleared: %+v", c)
	}
	a.expect(a.do("GET", "/users/me", nil, bearer(tok.Value)), 401, "the login token is revoked server-side")
	resp, _ = b.do("GET", "/auth/account", nil, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("account page after logout: %d", resp.StatusCode)
	}

	// Signing out ends a sign-in, not the API token a script put in the
	// cookie or the header: the cookies go, the token stays.
	admin := a.login("root", "rootpassword")
	var api string
	a.expect(a.do("POST", "/auth/tokens?token_type=api-token&description=script", nil, bearer(admin)), 200, "API token").json(t, &api)
	for _, hdr := range []map[string]string{{"Cookie": "ct_token=" + api}, bearer(api)} {
		resp, _ = b.do("GET", "/auth/logout", nil, hdr)
		if resp.StatusCode != http.StatusSeeOther || cookieNamed(resp, "ct_token") == nil {
			t.Fatalf("logout with an API token: %d", resp.StatusCode)
		}
		a.expect(a.do("GET", "/users/me", nil, bearer(api)), 200, "the API token after a logout that presented it")
	}
	// contaxy's sign-in (set_as_cookie) also hands out a refresh token:
	// signing out ends it too, after a rotation as well, so it cannot
	// mint a new session. Another sign-in of the same user lives on.
	other := a.login("root", "rootpassword")
	cookieGrant := func(form url.Values) (cookie, refresh string) {
		t.Helper()
		r := a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(form.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 200, "set_as_cookie grant")
		var tr struct {
			Refresh string `json:"refresh_token"`
		}
		r.json(t, &tr)
		ck := cookieNamed(&http.Response{Header: r.header}, "ct_token")
		if ck == nil || tr.Refresh == "" {
			t.Fatalf("set_as_cookie grant: %s", r.body)
		}
		return ck.Value, tr.Refresh
	}
	_, refresh := cookieGrant(url.Values{"grant_type": {"password"}, "username": {"root"}, "password": {"rootpassword"}, "set_as_cookie": {"true"}})
	cookie, refresh := cookieGrant(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}, "set_as_cookie": {"true"}})
	resp, _ = b.do("GET", "/auth/logout", nil, map[string]string{"Cookie": "ct_token=" + cookie})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	a.expect(a.do("GET", "/users/me", nil, bearer(cookie)), 401, "the login token after logout")
	r := a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}}.Encode()),
		map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 400, "the sign-in's refresh token after logout")
	if !strings.Contains(string(r.body), "invalid_grant") {
		t.Fatalf("refresh after logout: %s", r.body)
	}
	a.expect(a.do("GET", "/users/me", nil, bearer(other)), 200, "another sign-in of the same user")

	// A session JWT (the password grant's access token) is a sign-in.
	resp, _ = b.do("GET", "/auth/logout", nil, bearer(admin))
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout with a session JWT: %d", resp.StatusCode)
	}
	a.expect(a.do("GET", "/users/me", nil, bearer(admin)), 401, "the session JWT after logout")
}

// Cookies are Secure when the client used HTTPS, also through a trusted
// TLS-terminating proxy; an untrusted peer cannot claim it (nor, more to
// the point, is its claim needed for safety: it can only add Secure).
func TestSessionCookieIsSecureBehindATrustedProxy(t *testing.T) {
	trusted, _ := proxy.ParseTrustedProxies([]string{"127.0.0.1/32", "::1"})
	cases := []struct {
		name   string
		cfg    proxy.Config
		hdr    map[string]string
		secure bool
	}{
		{"plain http", proxy.Config{}, nil, false},
		{"https via trusted proxy", proxy.Config{TrustedProxies: trusted}, map[string]string{"X-Forwarded-Proto": "https"}, true},
		{"Forwarded proto via trusted proxy", proxy.Config{TrustedProxies: trusted}, map[string]string{"Forwarded": "for=1.2.3.4;proto=https"}, true},
		{"header from an untrusted peer", proxy.Config{}, map[string]string{"X-Forwarded-Proto": "https"}, false},
		{"https public URL", proxy.Config{PublicURL: "https://auth.example.com"}, nil, true},
	}
	for _, c := range cases {
		a := newAPI(t, c.cfg)
		a.admin()
		form := url.Values{"grant_type": {"password"}, "username": {"root"}, "password": {"rootpassword"}, "set_as_cookie": {"true"}}
		hdr := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
		for k, v := range c.hdr {
			hdr[k] = v
		}
		r := a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(form.Encode()), hdr), 200, c.name)
		ck := cookieNamed(&http.Response{Header: r.header}, "ct_token")
		if ck == nil || ck.Secure != c.secure || !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" {
			t.Errorf("%s: cookie %+v, want Secure=%v", c.name, ck, c.secure)
		}
		if uc := cookieNamed(&http.Response{Header: r.header}, "ctxy_authorized_user"); uc == nil || uc.Secure != c.secure {
			t.Errorf("%s: user cookie %+v", c.name, uc)
		}
	}

	// HTTPS straight to Portcullis.
	svc := newService(t)
	if _, _, err := svc.CreateUser(bg, authz.UserInput{Username: "tls", Password: "tls password"}, false); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(proxy.New(svc, proxy.Config{}))
	t.Cleanup(srv.Close)
	form := url.Values{"grant_type": {"password"}, "username": {"tls"}, "password": {"tls password"}, "set_as_cookie": {"true"}}
	resp, err := srv.Client().PostForm(srv.URL+"/auth/oauth/token", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ck := cookieNamed(resp, "ct_token"); resp.StatusCode != 200 || ck == nil || !ck.Secure || !ck.HttpOnly {
		t.Errorf("direct HTTPS: %d, cookie %+v, want Secure", resp.StatusCode, ck)
	}
}

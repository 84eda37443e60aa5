package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The OAuth2, password, header-trust and token adversarial cases of the
// reliability suite, over HTTP against the real binary in reverse-proxy
// mode. The upstream records what reached it, so every case can say both
// what the client was answered and whether anything leaked through.

// oauthTarget is a running binary, its admin, and an upstream that keeps
// the last request it saw.
type oauthTarget struct {
	*adversarialTarget
	proc *served
	top  *topology
	// noRedirect does not follow redirects: the Location is the answer.
	noRedirect *http.Client

	mu       sync.Mutex
	lastSeen *http.Request
}

const allowedRedirectHost = "app.example.com"

func startOAuthTarget(t *testing.T, extraConfig string) *oauthTarget {
	t.Helper()
	o := &oauthTarget{}
	hits := new(atomic.Int64)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		o.mu.Lock()
		o.lastSeen = r.Clone(r.Context())
		o.mu.Unlock()
		fmt.Fprintf(w, "upstream saw %s %s", r.Method, r.URL.Path)
	}))
	t.Cleanup(up.Close)
	cfg := filepath.Join(t.TempDir(), "portcullis.yaml")
	conf := "upstream: " + up.URL + "\n" +
		"allowed_redirect_hosts: [" + allowedRedirectHost + "]\n" +
		"login_url: /auth/login-page\nlogin_redirect: true\n" +
		extraConfig +
		"routes:\n  - path: /public/**\n    public: true\n  - path: /app/**\n    permission: 'apps#{level}'\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	o.proc = startServeProcess(t, "--data-dir", t.TempDir(), "--admin-password", reliabilityAdminPassword, "--bcrypt-cost", "10", "--config", cfg)
	o.top = &topology{replicas: []*replica{{api: o.proc.api}}, client: &http.Client{Timeout: 20 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	t.Cleanup(o.top.client.CloseIdleConnections)
	o.noRedirect = &http.Client{Timeout: 20 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	o.adversarialTarget = &adversarialTarget{api: o.proc.api, hits: hits, token: o.top.login(t, 0, "admin", reliabilityAdminPassword)}
	return o
}

func (o *oauthTarget) seen() *http.Request {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lastSeen
}

// answer is one HTTP exchange as the client saw it.
type answer struct {
	status int
	header http.Header
	body   string
}

// oauthError decodes an RFC 6749 §5.2 error body.
func (a answer) oauthError() string {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal([]byte(a.body), &e)
	return e.Error
}

// send makes one request; header keys are sent exactly as written (so
// "x_auth_subject" stays lower-case with underscores).
func (o *oauthTarget) send(t *testing.T, method, path string, body io.Reader, header map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+o.api+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header[k] = []string{v}
	}
	resp, err := o.noRedirect.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// grant posts a form to the token endpoint.
func (o *oauthTarget) grant(t *testing.T, form url.Values, header map[string]string) answer {
	t.Helper()
	h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	for k, v := range header {
		h[k] = v
	}
	return o.send(t, "POST", "/auth/oauth/token", strings.NewReader(form.Encode()), h)
}

type tokenPair struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
}

func (o *oauthTarget) passwordLogin(t *testing.T, user, password string) tokenPair {
	t.Helper()
	var p tokenPair
	o.top.call(t, 0, "POST", "/auth/oauth/token", "", url.Values{"grant_type": {"password"}, "username": {user}, "password": {password}}, 200, &p)
	return p
}

// user creates a user holding the given permissions on apps and returns
// its id.
func (o *oauthTarget) user(t *testing.T, name, email, password string, permissions ...string) string {
	t.Helper()
	body := map[string]any{"username": name, "password": password}
	if email != "" {
		body["email"] = email
	}
	var u struct {
		ID string `json:"id"`
	}
	o.top.call(t, 0, "POST", "/users", o.token, body, 200, &u)
	for _, p := range permissions {
		o.top.call(t, 0, "POST", "/auth/permissions?"+url.Values{"resource_name": {"users/" + u.ID}, "permission": {p}}.Encode(), o.token, nil, 204, nil)
	}
	return u.ID
}

func (o *oauthTarget) client(t *testing.T, spec map[string]any) (id, secret string) {
	t.Helper()
	var c struct {
		ID     string `json:"client_id"`
		Secret string `json:"client_secret"`
	}
	o.top.call(t, 0, "POST", "/auth/clients", o.token, spec, 201, &c)
	return c.ID, c.Secret
}

// pkce returns a verifier and its S256 challenge.
func pkce(seed string) (verifier, challenge string) {
	verifier = strings.Repeat(seed, 43/len(seed)+1)[:43]
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// authorize asks for a code as the holder of session and returns the
// answer (a 303 to the redirect_uri, or an error page).
func (o *oauthTarget) authorize(t *testing.T, session string, params url.Values) answer {
	t.Helper()
	return o.send(t, "GET", "/auth/oauth/authorize?"+params.Encode(), nil, map[string]string{"Authorization": "Bearer " + session})
}

// code gets an authorization code for a first-party client.
func (o *oauthTarget) code(t *testing.T, session, clientID, redirect, challenge string) string {
	t.Helper()
	a := o.authorize(t, session, url.Values{"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {redirect},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "state": {"st"}})
	loc, _ := url.Parse(a.header.Get("Location"))
	if a.status != http.StatusSeeOther || loc == nil || loc.Query().Get("code") == "" {
		t.Fatalf("authorize: %d Location %q %s", a.status, a.header.Get("Location"), a.body)
	}
	return loc.Query().Get("code")
}

// offSite reports whether a browser following Location would leave our
// origin for a host that is not allowed. It reads Location as browsers
// do: tabs and newlines dropped, backslashes as slashes, leading blanks
// and control characters trimmed.
func offSite(location string) bool {
	if location == "" {
		return false
	}
	l := strings.NewReplacer("\t", "", "\r", "", "\n", "", "\\", "/").Replace(location)
	l = strings.TrimLeft(l, " \x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x1f")
	if strings.HasPrefix(l, "//") {
		return true
	}
	if strings.HasPrefix(l, "/") {
		return false
	}
	u, err := url.Parse(l)
	if err != nil {
		return true
	}
	if u.Scheme == "" && u.Host == "" {
		return strings.Contains(strings.ToLower(l), "script:")
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.User != nil {
		return true
	}
	h := strings.ToLower(u.Hostname())
	return h != allowedRedirectHost && h != "127.0.0.1"
}

func TestOffSite(t *testing.T) {
	for _, c := range []struct {
		loc string
		off bool
	}{
		{"/auth/account", false}, {"/%2F/evil.example", false}, {"https://app.example.com/x", false},
		{"//evil.example", true}, {"/\\evil.example", true}, {"\t//evil.example", true}, {"/\t/evil.example", true},
		{"https:evil.example", true}, {"javascript:alert(1)", true}, {"https://evil.example", true},
		{"https://u@app.example.com", true}, {"data:text/html,x", true},
	} {
		if got := offSite(c.loc); got != c.off {
			t.Errorf("offSite(%q) = %v, want %v", c.loc, got, c.off)
		}
	}
}

// openRedirectPayloads are return targets an attacker would try.
var openRedirectPayloads = []string{
	"//evil.example", "///evil.example", "////evil.example/x", "/\\evil.example", "\\/evil.example", "\\\\evil.example",
	"https:evil.example", "https:/evil.example", "https://evil.example", "http://evil.example:443",
	"javascript:alert(1)", "JaVaScRiPt:alert(1)", "java\tscript:alert(1)", "data:text/html,<script>alert(1)</script>",
	"%2F%2Fevil.example", "%2f%2fevil.example", "/%2F/evil.example", "%5C%5Cevil.example",
	"\t//evil.example", "/\t/evil.example", " //evil.example", "\x00//evil.example", "/\r\nLocation: https://evil.example",
	"https://" + allowedRedirectHost + ".evil.example/", "https://" + allowedRedirectHost + "@evil.example/",
	"https://evil.example\\@" + allowedRedirectHost + "/", "https://evil.example#@" + allowedRedirectHost + "/",
	"https://evil.example?@" + allowedRedirectHost + "/", "https://" + allowedRedirectHost + "%2F@evil.example/",
	"https://evil.example%2F" + allowedRedirectHost, "/.//evil.example", "//evil.example/%2F..",
	"http://[::ffff:203.0.113.9]/", "https://evil。example/",
}

func TestAdversarialOAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	o := startOAuthTarget(t, "")
	const redirect = "https://" + allowedRedirectHost + "/cb"
	aliceID := o.user(t, "alice", "alice@example.com", "alice's password", "apps#read")
	confID, confSecret := o.client(t, map[string]any{"name": "Dashboard", "first_party": true, "redirect_uris": []string{redirect, "http://127.0.0.1:9/cb"}})
	ccID, ccSecret := o.client(t, map[string]any{"name": "Robot", "grant_types": []string{"client_credentials"}, "scopes": []string{"apps#read"}})
	pubID, _ := o.client(t, map[string]any{"name": "SPA", "public": true, "first_party": true, "redirect_uris": []string{redirect}})
	alice := o.passwordLogin(t, "alice", "alice's password")
	basic := func(id, secret string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
	}
	_, goodChallenge := pkce("v")
	verifier43 := strings.Repeat("q", 43)

	t.Run("token endpoint: every RFC 6749 error path", func(t *testing.T) {
		cases := []struct {
			name   string
			method string
			query  string
			body   string
			header map[string]string
			status int
			error  string
			basic  bool // WWW-Authenticate: Basic expected
		}{
			{"GET instead of POST", "GET", "?grant_type=client_credentials", "", nil, 405, "invalid_request", false},
			{"PUT instead of POST", "PUT", "", "grant_type=client_credentials", nil, 405, "invalid_request", false},
			{"missing grant_type", "POST", "", "username=alice&password=x", nil, 400, "invalid_request", false},
			{"duplicate grant_type", "POST", "", "grant_type=password&grant_type=password&username=alice&password=x", nil, 400, "invalid_request", false},
			{"duplicate username", "POST", "", "grant_type=password&username=alice&username=admin&password=x", nil, 400, "invalid_request", false},
			{"duplicate client_id", "POST", "", "grant_type=client_credentials&client_id=" + ccID + "&client_id=" + ccID + "&client_secret=" + url.QueryEscape(ccSecret), nil, 400, "invalid_request", false},
			{"password grant without password", "POST", "", "grant_type=password&username=alice", nil, 400, "invalid_request", false},
			{"refresh grant without refresh_token", "POST", "", "grant_type=refresh_token", nil, 400, "invalid_request", false},
			{"code grant without code", "POST", "", "grant_type=authorization_code&client_id=" + pubID + "&code_verifier=" + verifier43, nil, 400, "invalid_request", false},
			{"JSON body", "POST", "", `{"grant_type":"password","username":"alice","password":"alice's password"}`, map[string]string{"Content-Type": "application/json"}, 400, "invalid_request", false},
			{"malformed form body", "POST", "", "grant_type=password&username=%zz", nil, 400, "invalid_request", false},
			{"password in the query string", "POST", "?password=x", "grant_type=password&username=alice&password=alice%27s+password", nil, 400, "invalid_request", false},
			{"client_secret in the query string", "POST", "?client_secret=" + url.QueryEscape(ccSecret), "grant_type=client_credentials&client_id=" + ccID, nil, 400, "invalid_request", false},
			{"refresh_token in the query string", "POST", "?refresh_token=" + url.QueryEscape(alice.RefreshToken), "grant_type=refresh_token", nil, 400, "invalid_request", false},
			{"code in the query string", "POST", "?code=x", "grant_type=authorization_code", nil, 400, "invalid_request", false},
			{"code_verifier in the query string", "POST", "?code_verifier=" + verifier43, "grant_type=authorization_code", nil, 400, "invalid_request", false},
			{"unknown grant type", "POST", "", "grant_type=urn:ietf:params:oauth:grant-type:device_code", nil, 400, "unsupported_grant_type", false},
			{"implicit grant type", "POST", "", "grant_type=implicit", nil, 400, "unsupported_grant_type", false},
			{"malformed Basic", "POST", "", "grant_type=client_credentials", map[string]string{"Authorization": "Basic !!!"}, 401, "invalid_client", true},
			{"Basic without a colon", "POST", "", "grant_type=client_credentials", map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(ccID))}, 401, "invalid_client", true},
			{"Basic with a wrong secret", "POST", "", "grant_type=client_credentials", map[string]string{"Authorization": basic(ccID, "wrong")}, 401, "invalid_client", true},
			{"Basic with an unknown client", "POST", "", "grant_type=client_credentials", map[string]string{"Authorization": basic("no-such-client", "x")}, 401, "invalid_client", true},
			{"Basic with a bad escape", "POST", "", "grant_type=client_credentials", map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("%zz:%zz"))}, 401, "invalid_client", true},
			{"client_secret_post with a wrong secret", "POST", "", "grant_type=client_credentials&client_id=" + ccID + "&client_secret=wrong", nil, 401, "invalid_client", false},
			{"client_credentials without a client", "POST", "", "grant_type=client_credentials", nil, 401, "invalid_client", false},
			{"Basic and client_secret in the body", "POST", "", "grant_type=client_credentials&client_secret=" + url.QueryEscape(ccSecret), map[string]string{"Authorization": basic(ccID, ccSecret)}, 400, "invalid_request", false},
			{"public client sends a secret", "POST", "", "grant_type=authorization_code&code=x&client_id=" + pubID + "&client_secret=x&code_verifier=" + verifier43, nil, 401, "invalid_client", false},
			{"wrong password", "POST", "", "grant_type=password&username=alice&password=wrong", nil, 400, "invalid_grant", false},
			{"unknown refresh token", "POST", "", "grant_type=refresh_token&refresh_token=not-a-refresh-token", nil, 400, "invalid_grant", false},
			{"access token as refresh token", "POST", "", "grant_type=refresh_token&refresh_token=" + url.QueryEscape(alice.AccessToken), nil, 400, "invalid_grant", false},
			{"unknown code", "POST", "", "grant_type=authorization_code&code=not-a-code&client_id=" + pubID + "&redirect_uri=" + url.QueryEscape(redirect) + "&code_verifier=" + verifier43, nil, 400, "invalid_grant", false},
			{"refresh token of another client", "POST", "", "grant_type=refresh_token&refresh_token=" + url.QueryEscape(alice.RefreshToken) + "&client_id=" + pubID, nil, 400, "invalid_grant", false},
			{"client_credentials for a client without that grant", "POST", "", "grant_type=client_credentials", map[string]string{"Authorization": basic(confID, confSecret)}, 400, "unauthorized_client", false},
			{"public client asks for client_credentials", "POST", "", "grant_type=client_credentials&client_id=" + pubID, nil, 400, "unauthorized_client", false},
			{"client_credentials scope beyond the client", "POST", "", "grant_type=client_credentials&scope=apps%23admin", map[string]string{"Authorization": basic(ccID, ccSecret)}, 400, "invalid_scope", false},
			{"password grant scope the user lacks", "POST", "", "grant_type=password&username=alice&password=alice%27s+password&scope=apps%23admin", nil, 400, "invalid_scope", false},
			{"malformed scope", "POST", "", "grant_type=password&username=alice&password=alice%27s+password&scope=%23%23%23", nil, 400, "invalid_scope", false},
			{"refresh scope beyond the grant", "POST", "", "grant_type=refresh_token&refresh_token=" + url.QueryEscape(o.passwordLogin(t, "alice", "alice's password").RefreshToken) + "&scope=apps%23admin", nil, 400, "invalid_scope", false},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
				for k, v := range c.header {
					h[k] = v
				}
				var body io.Reader
				if c.body != "" {
					body = strings.NewReader(c.body)
				}
				a := o.send(t, c.method, "/auth/oauth/token"+c.query, body, h)
				if a.status != c.status || a.oauthError() != c.error {
					t.Errorf("%d %s, want %d %s", a.status, a.body, c.status, c.error)
				}
				// RFC 6749 §5.2: a failed Basic authentication must answer
				// with the challenge; elsewhere it is allowed, not required.
				if c.basic && !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Basic") {
					t.Errorf("WWW-Authenticate %q, want Basic", a.header.Get("WWW-Authenticate"))
				}
				if !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
					t.Errorf("Content-Type %q, want JSON", a.header.Get("Content-Type"))
				}
				for _, secret := range []string{"alice's password", ccSecret, confSecret, alice.RefreshToken, alice.AccessToken} {
					if strings.Contains(a.body, secret) || strings.Contains(a.body, url.QueryEscape(secret)) {
						t.Errorf("the answer repeats a secret: %s", a.body)
					}
				}
			})
		}
		t.Run("the answers are not cacheable", func(t *testing.T) {
			a := o.grant(t, url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice's password"}}, nil)
			if a.status != 200 || a.header.Get("Cache-Control") != "no-store" || a.header.Get("Pragma") != "no-cache" {
				t.Errorf("%d Cache-Control %q Pragma %q", a.status, a.header.Get("Cache-Control"), a.header.Get("Pragma"))
			}
		})
	})

	t.Run("refresh token reuse 20-way revokes the family", func(t *testing.T) {
		first := o.passwordLogin(t, "alice", "alice's password")
		// One honest rotation first, so the family has history.
		var second tokenPair
		o.top.call(t, 0, "POST", "/auth/oauth/token", "", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {first.RefreshToken}}, 200, &second)
		results := race(20, func() answer {
			return o.grant(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {second.RefreshToken}}, nil)
		})
		won := raceWinners(t, "refresh", results)
		if len(won) != 1 {
			t.Fatalf("%d of 20 racing refreshes succeeded, want exactly 1", len(won))
		}
		// The reuse revoked the family: every refresh token of it, the
		// winner's too, is dead.
		for name, rt := range map[string]string{"the first": first.RefreshToken, "the reused": second.RefreshToken, "the winner's": won[0].RefreshToken} {
			if a := o.grant(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, nil); a.status != 400 || a.oauthError() != "invalid_grant" {
				t.Errorf("%s refresh token after reuse: %d %s", name, a.status, a.body)
			}
		}
		// And so is every access token issued from it, the winner's too.
		for name, at := range map[string]string{"the first": first.AccessToken, "the reused": second.AccessToken, "the winner's": won[0].AccessToken} {
			for _, path := range []string{"/users/me", "/app/x"} {
				if a := o.send(t, "GET", path, nil, map[string]string{"Authorization": "Bearer " + at}); a.status != 401 {
					t.Errorf("%s access token after reuse, GET %s: %d, want 401", name, path, a.status)
				}
			}
		}
		// A login of its own is another family and unaffected.
		if a := o.send(t, "GET", "/app/x", nil, map[string]string{"Authorization": "Bearer " + alice.AccessToken}); a.status != 200 {
			t.Errorf("another family's access token: %d", a.status)
		}
	})

	t.Run("authorization code reuse 20-way", func(t *testing.T) {
		verifier, challenge := pkce("race")
		code := o.code(t, alice.AccessToken, pubID, redirect, challenge)
		results := race(20, func() answer {
			return o.grant(t, url.Values{"grant_type": {"authorization_code"}, "code": {code}, "client_id": {pubID}, "redirect_uri": {redirect}, "code_verifier": {verifier}}, nil)
		})
		won := raceWinners(t, "redemption", results)
		if len(won) != 1 {
			t.Fatalf("%d of 20 racing redemptions succeeded, want exactly 1", len(won))
		}
		if won[0].AccessToken == "" || won[0].RefreshToken == "" {
			t.Fatalf("the winner got %+v, want an access and a refresh token", won[0])
		}
		// The losers were replays already, so the winner's tokens may be
		// dead by now; after one more replay they must be (RFC 6749
		// §4.1.2): its access token on every protected path, its refresh
		// token at the token endpoint.
		if a := o.grant(t, url.Values{"grant_type": {"authorization_code"}, "code": {code}, "client_id": {pubID}, "redirect_uri": {redirect}, "code_verifier": {verifier}}, nil); a.status != 400 || a.oauthError() != "invalid_grant" {
			t.Errorf("a replay after the race: %d %s", a.status, a.body)
		}
		refreshWith := func(rt string) answer {
			return o.grant(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {pubID}}, nil)
		}
		if a := refreshWith(won[0].RefreshToken); a.status != 400 || a.oauthError() != "invalid_grant" {
			t.Errorf("the winner's refresh token after the replay: %d %q, want 400 invalid_grant", a.status, a.oauthError())
		}
		for _, path := range []string{"/users/me", "/app/x"} {
			if a := o.send(t, "GET", path, nil, map[string]string{"Authorization": "Bearer " + won[0].AccessToken}); a.status != 401 {
				t.Errorf("the winner's access token after the replay, GET %s: %d, want 401", path, a.status)
			}
		}
		// The same checks pass for a code redeemed once: they fail for
		// the replay's sake only.
		fresh := o.code(t, alice.AccessToken, pubID, redirect, challenge)
		var once tokenPair
		o.top.call(t, 0, "POST", "/auth/oauth/token", "", url.Values{"grant_type": {"authorization_code"}, "code": {fresh}, "client_id": {pubID}, "redirect_uri": {redirect}, "code_verifier": {verifier}}, 200, &once)
		for _, path := range []string{"/users/me", "/app/x"} {
			if a := o.send(t, "GET", path, nil, map[string]string{"Authorization": "Bearer " + once.AccessToken}); a.status != 200 {
				t.Errorf("a code redeemed once, GET %s: %d, want 200", path, a.status)
			}
		}
		if a := refreshWith(once.RefreshToken); a.status != 200 {
			t.Errorf("the refresh token of a code redeemed once: %d %q", a.status, a.oauthError())
		}
	})

	t.Run("PKCE downgrade", func(t *testing.T) {
		verifier, challenge := pkce("pkce")
		redeem := func(extra url.Values) answer {
			code := o.code(t, alice.AccessToken, pubID, redirect, challenge)
			form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "client_id": {pubID}, "redirect_uri": {redirect}}
			for k, v := range extra {
				form[k] = v
			}
			a := o.grant(t, form, nil)
			// A well-formed wrong verifier spends the code: the right
			// verifier cannot finish what a guess started. (A malformed
			// or missing one is refused before the code is looked up,
			// which spends nothing and gives nothing.)
			if v := form.Get("code_verifier"); len(v) >= 43 && len(v) <= 128 && !strings.Contains(v, "+") {
				if again := o.grant(t, url.Values{"grant_type": {"authorization_code"}, "code": {code}, "client_id": {pubID}, "redirect_uri": {redirect}, "code_verifier": {verifier}}, nil); a.status != 200 && again.status == 200 {
					t.Errorf("the code survived a failed redemption")
				}
			}
			return a
		}
		for name, extra := range map[string]url.Values{
			"no verifier":                        {},
			"empty verifier":                     {"code_verifier": {""}},
			"the challenge as plain verifier":    {"code_verifier": {challenge}},
			"plain method at the token endpoint": {"code_verifier": {challenge}, "code_challenge_method": {"plain"}},
			"wrong verifier":                     {"code_verifier": {strings.Repeat("w", 43)}},
			"verifier too short":                 {"code_verifier": {verifier[:42]}},
			"verifier with a bad character":      {"code_verifier": {verifier[:42] + "+"}},
		} {
			t.Run(name, func(t *testing.T) {
				if a := redeem(extra); a.status != 400 || a.oauthError() != "invalid_grant" && a.oauthError() != "invalid_request" {
					t.Errorf("%d %s, want 400 invalid_grant", a.status, a.body)
				}
			})
		}
		t.Run("the right verifier works", func(t *testing.T) {
			if a := redeem(url.Values{"code_verifier": {verifier}}); a.status != 200 {
				t.Errorf("%d %s", a.status, a.body)
			}
		})
		for name, params := range map[string]url.Values{
			"plain challenge method":   {"code_challenge": {verifier}, "code_challenge_method": {"plain"}},
			"no challenge":             {},
			"method without challenge": {"code_challenge_method": {"S256"}},
			"challenge without method": {"code_challenge": {challenge}},
		} {
			t.Run("authorize with "+name, func(t *testing.T) {
				q := url.Values{"response_type": {"code"}, "client_id": {pubID}, "redirect_uri": {redirect}, "state": {"s"}}
				for k, v := range params {
					q[k] = v
				}
				a := o.authorize(t, alice.AccessToken, q)
				loc, _ := url.Parse(a.header.Get("Location"))
				if a.status != 303 || loc == nil || loc.Query().Get("code") != "" || loc.Query().Get("error") != "invalid_request" || !strings.HasPrefix(loc.String(), redirect+"?") {
					t.Errorf("%d Location %q, want an invalid_request error at the registered URI", a.status, a.header.Get("Location"))
				}
			})
		}
	})

	t.Run("redirect_uri near-misses", func(t *testing.T) {
		verifier, challenge := pkce("near")
		nearMisses := []string{
			redirect + "/", "https://APP.example.com/cb", "https://" + allowedRedirectHost + "/CB", redirect + "/extra", redirect + "?x=1",
			redirect + "#frag", redirect + "?", redirect + "#", "https://" + allowedRedirectHost + "@evil.example/cb", "https://evil.example@" + allowedRedirectHost + "/cb",
			"https://" + allowedRedirectHost + ":8443/cb", "https://" + allowedRedirectHost + ":443/cb", "http://" + allowedRedirectHost + "/cb",
			"https://" + allowedRedirectHost + "/%63b", "https://" + allowedRedirectHost + "/cb%2F..%2Fevil", "https://" + allowedRedirectHost + "/x/../cb",
			"https://" + allowedRedirectHost + ".evil.example/cb", "https://" + allowedRedirectHost + "%2F@evil.example/cb", " " + redirect, redirect + " ",
			redirect + "\t", "HTTPS://" + allowedRedirectHost + "/cb", "https://" + allowedRedirectHost + "./cb", "http://127.0.0.1:10/cb", "http://localhost:9/cb",
		}
		nearMisses = append(nearMisses, openRedirectPayloads...)
		for _, uri := range nearMisses {
			t.Run(fmt.Sprintf("authorize %q", uri), func(t *testing.T) {
				a := o.authorize(t, alice.AccessToken, url.Values{"response_type": {"code"}, "client_id": {pubID}, "redirect_uri": {uri},
					"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "state": {"s"}})
				if a.status != 400 || a.header.Get("Location") != "" {
					t.Errorf("%d Location %q, want the 400 error page and no redirect", a.status, a.header.Get("Location"))
				}
			})
		}
		// A code issued for the registered URI is not redeemed with a
		// near-miss (and is spent by the attempt).
		for _, uri := range nearMisses[:6] {
			t.Run(fmt.Sprintf("token %q", uri), func(t *testing.T) {
				code := o.code(t, alice.AccessToken, pubID, redirect, challenge)
				a := o.grant(t, url.Values{"grant_type": {"authorization_code"}, "code": {code}, "client_id": {pubID}, "redirect_uri": {uri}, "code_verifier": {verifier}}, nil)
				if a.status != 400 || a.oauthError() != "invalid_grant" {
					t.Errorf("%d %s, want 400 invalid_grant", a.status, a.body)
				}
			})
		}
	})

	t.Run("open redirect payloads", func(t *testing.T) {
		// Every parameter that decides where a browser goes next.
		routes := []struct {
			name string
			do   func(t *testing.T, rd string) answer
		}{
			{"GET /auth/login-page rd, signed in", func(t *testing.T, rd string) answer {
				return o.send(t, "GET", "/auth/login-page?rd="+url.QueryEscape(rd), nil, map[string]string{"Cookie": "ct_token=" + alice.AccessToken})
			}},
			{"GET /auth/login-page rd, signed out", func(t *testing.T, rd string) answer {
				return o.send(t, "GET", "/auth/login-page?rd="+url.QueryEscape(rd), nil, nil)
			}},
			{"GET /auth/login rd", func(t *testing.T, rd string) answer {
				return o.send(t, "GET", "/auth/login?rd="+url.QueryEscape(rd), nil, nil)
			}},
			{"POST /auth/login rd", func(t *testing.T, rd string) answer {
				return o.send(t, "POST", "/auth/login", strings.NewReader(url.Values{"username": {"alice"}, "password": {"alice's password"}, "rd": {rd}}.Encode()),
					map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
			}},
			{"GET /auth/logout rd", func(t *testing.T, rd string) answer {
				return o.send(t, "GET", "/auth/logout?rd="+url.QueryEscape(rd), nil, nil)
			}},
			{"POST /auth/logout rd", func(t *testing.T, rd string) answer {
				return o.send(t, "POST", "/auth/logout", strings.NewReader(url.Values{"rd": {rd}}.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
			}},
			{"proxied app, browser without a session, Host spoofed", func(t *testing.T, rd string) answer {
				host := strings.TrimPrefix(strings.TrimPrefix(rd, "https:"), "//")
				if strings.ContainsAny(host, "/\\ \t\r\n\x00%?#@[") || host == "" {
					host = "evil.example"
				}
				return o.send(t, "GET", "/app/x", nil, map[string]string{"Accept": "text/html", "Host": host})
			}},
		}
		for _, r := range routes {
			t.Run(r.name, func(t *testing.T) {
				for _, rd := range openRedirectPayloads {
					a := r.do(t, rd)
					loc := a.header.Get("Location")
					if offSite(loc) {
						t.Errorf("rd %q: %d redirects off-site to %q", rd, a.status, loc)
					}
					if a.status >= 500 {
						t.Errorf("rd %q: %d", rd, a.status)
					}
					if a.status == 200 && offSite(rd) && strings.Contains(a.body, "evil.example") {
						t.Errorf("rd %q: the page carries the payload on", rd)
					}
				}
			})
		}
	})

	t.Cleanup(func() {
		checkLogClean(t, o.proc.logs.String(), "alice's password", reliabilityAdminPassword, ccSecret, confSecret, alice.AccessToken, alice.RefreshToken, o.token)
	})

	t.Run("token-type confusion", func(t *testing.T) {
		code := o.code(t, alice.AccessToken, pubID, redirect, goodChallenge)
		fresh := o.passwordLogin(t, "alice", "alice's password")
		for name, tok := range map[string]string{
			"refresh token": fresh.RefreshToken, "authorization code": code, "client secret": ccSecret, "client id": ccID,
			"user id": aliceID, "password": "alice's password", "admin password": reliabilityAdminPassword,
		} {
			for _, where := range []string{"Authorization", "ct_token header", "ct_token cookie"} {
				t.Run(name+" in "+where, func(t *testing.T) {
					h := map[string]string{}
					switch where {
					case "Authorization":
						h["Authorization"] = "Bearer " + tok
					case "ct_token header":
						h["ct_token"] = tok
					default:
						h["Cookie"] = "ct_token=" + tok
					}
					before := o.hits.Load()
					for _, path := range []string{"/users/me", "/app/x"} {
						if a := o.send(t, "GET", path, nil, h); a.status != 401 {
							t.Errorf("GET %s: %d, want 401", path, a.status)
						}
					}
					if o.hits.Load() != before {
						t.Error("the request reached the upstream")
					}
				})
			}
		}
		t.Run("client credentials as Basic on the API", func(t *testing.T) {
			if a := o.send(t, "GET", "/app/x", nil, map[string]string{"Authorization": basic(ccID, ccSecret)}); a.status != 401 {
				t.Errorf("%d, want 401", a.status)
			}
		})
		t.Run("the refresh token still works as a refresh token", func(t *testing.T) {
			if a := o.grant(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {fresh.RefreshToken}}, nil); a.status != 200 {
				t.Errorf("%d %s", a.status, a.body)
			}
		})
	})

	t.Run("two credentials in one request", func(t *testing.T) {
		other := o.passwordLogin(t, "admin", reliabilityAdminPassword).AccessToken
		for name, h := range map[string]map[string]string{
			"Authorization and cookie":   {"Authorization": "Bearer " + alice.AccessToken, "Cookie": "ct_token=" + other},
			"Authorization and ct_token": {"Authorization": "Bearer " + alice.AccessToken, "ct_token": other},
			"ct_token header and cookie": {"ct_token": alice.AccessToken, "Cookie": "ct_token=" + other},
			"two ct_token cookies":       {"Cookie": "ct_token=" + alice.AccessToken + "; ct_token=" + other},
			"valid and garbage":          {"Authorization": "Bearer " + alice.AccessToken, "Cookie": "ct_token=garbage"},
		} {
			t.Run(name, func(t *testing.T) {
				before := o.hits.Load()
				for _, path := range []string{"/users/me", "/app/x"} {
					if a := o.send(t, "GET", path, nil, h); a.status != 400 {
						t.Errorf("GET %s: %d, want 400", path, a.status)
					}
				}
				if o.hits.Load() != before {
					t.Error("the request reached the upstream")
				}
			})
		}
		t.Run("the same token twice is one credential", func(t *testing.T) {
			if a := o.send(t, "GET", "/app/x", nil, map[string]string{"Authorization": "Bearer " + alice.AccessToken, "Cookie": "ct_token=" + alice.AccessToken}); a.status != 200 {
				t.Errorf("%d", a.status)
			}
		})
	})

	t.Run("tokens in the URL are refused", func(t *testing.T) {
		for _, q := range []string{"ct_token", "access_token", "token"} {
			t.Run(q, func(t *testing.T) {
				before := o.hits.Load()
				for _, path := range []string{"/users/me", "/app/x"} {
					if a := o.send(t, "GET", path+"?"+q+"="+url.QueryEscape(alice.AccessToken), nil, nil); a.status != 401 {
						t.Errorf("GET %s?%s=…: %d, want 401", path, q, a.status)
					}
				}
				if o.hits.Load() != before {
					t.Error("the request reached the upstream")
				}
			})
		}
		for _, ep := range []string{"/auth/oauth/revoke", "/auth/oauth/introspect"} {
			t.Run("token parameter in the URL of "+ep, func(t *testing.T) {
				a := o.send(t, "POST", ep+"?token="+url.QueryEscape(alice.AccessToken), strings.NewReader(""),
					map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer " + alice.AccessToken})
				if a.status != 400 {
					t.Errorf("%d %s, want 400", a.status, a.body)
				}
			})
		}
	})
}

// Nothing secret that this test sent or received is in the log.
func checkLogClean(t *testing.T, logs string, secrets ...string) {
	t.Helper()
	for i, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("secret %d of the test is in the server's log", i)
		}
	}
}

// race runs fn n times at once, released together, and returns every answer.
func race(n int, fn func() answer) []answer {
	out := make([]answer, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			out[i] = fn()
		})
	}
	close(start)
	wg.Wait()
	return out
}

func TestAdversarialPasswords(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	// Loopback is a trusted proxy here, so each guess can come from its
	// own client address (X-Forwarded-For) and only the per-account
	// budget is in play.
	const limit = 20
	o := startOAuthTarget(t, fmt.Sprintf("trusted_proxies: [127.0.0.1]\nlogin_failure_limit: %d\n", limit))
	var from atomic.Int64
	guess := func(login, password string) answer {
		n := from.Add(1)
		return o.grant(t, url.Values{"grant_type": {"password"}, "username": {login}, "password": {password}},
			map[string]string{"X-Forwarded-For": fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255)})
	}

	t.Run("300 parallel guesses over username, email and case aliases", func(t *testing.T) {
		o.user(t, "carol", "carol@example.com", "carol's password")
		o.user(t, "dave", "", "dave's password")
		aliases := []string{"carol", "CAROL", "Carol", "carol@example.com", "CAROL@EXAMPLE.COM", "Carol@Example.Com", " carol "}
		var next atomic.Int64
		results := race(300, func() answer {
			return guess(aliases[int(next.Add(1))%len(aliases)], "wrong guess")
		})
		counts := map[string]int{}
		for _, a := range results {
			counts[fmt.Sprintf("%d %s", a.status, a.oauthError())]++
			if a.status == 429 && a.header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		}
		t.Logf("answers: %v", counts)
		if counts["400 invalid_grant"] != limit || counts["429 temporarily_unavailable"] != 300-limit {
			t.Errorf("answers %v, want exactly %d checked (400 invalid_grant) and the rest 429 temporarily_unavailable", counts, limit)
		}
		// Counted once across the aliases: the right password, under any
		// of them, is now refused too.
		for _, login := range []string{"carol", "carol@example.com", "CAROL"} {
			if a := guess(login, "carol's password"); a.status != 429 {
				t.Errorf("right password as %q after the budget: %d, want 429", login, a.status)
			}
		}
		if a := guess("dave", "dave's password"); a.status != 200 {
			t.Errorf("another account: %d %s", a.status, a.body)
		}
	})

	t.Run("user enumeration", func(t *testing.T) {
		o.user(t, "erin", "erin@example.com", "erin's password")
		const tries = 11
		var known, unknown []time.Duration
		for i := range tries {
			for _, who := range []string{"erin", "nobody-by-that-name"} {
				start := time.Now()
				a := guess(who, "wrong password")
				took := time.Since(start)
				if a.status != 400 || a.body != `{"error":"invalid_grant","error_description":"invalid username or password"}`+"\n" {
					t.Fatalf("try %d as %s: %d %q", i, who, a.status, a.body)
				}
				if who == "erin" {
					known = append(known, took)
				} else {
					unknown = append(unknown, took)
				}
			}
		}
		// Both paths run one bcrypt comparison; a shared machine makes
		// single timings noisy, so compare medians with a wide margin.
		k, u := median(known), median(unknown)
		t.Logf("median time: known user %v, unknown user %v", k, u)
		if u < k/2 || k < u/2 {
			t.Errorf("median time of a wrong password %v for a known user, %v for an unknown one: the difference tells accounts apart", k, u)
		}
		t.Run("sign-in page", func(t *testing.T) {
			var bodies []string
			for _, who := range []string{"erin", "nobody-by-that-name"} {
				a := o.send(t, "POST", "/auth/login", strings.NewReader(url.Values{"username": {who}, "password": {"wrong password"}}.Encode()),
					map[string]string{"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": "10.200.0.1"})
				if a.status != 401 {
					t.Errorf("%s: %d, want 401", who, a.status)
				}
				bodies = append(bodies, csrfValue.ReplaceAllString(strings.ReplaceAll(a.body, who, "USER"), ""))
			}
			if bodies[0] != bodies[1] {
				t.Error("the sign-in page answers a known and an unknown user differently")
			}
		})
	})

	t.Run("bcrypt 72-byte boundary", func(t *testing.T) {
		p72 := strings.Repeat("p", 71) + "1"
		for name, c := range map[string]struct {
			password string
			status   int
		}{
			"73 bytes":                   {p72 + "x", 400},
			"100 bytes":                  {strings.Repeat("p", 100), 400},
			"25 three-byte runes (75 B)": {strings.Repeat("€", 25), 400},
			"24 three-byte runes (72 B)": {strings.Repeat("€", 24), 200},
			"72 bytes":                   {p72, 200},
		} {
			t.Run("create with "+name, func(t *testing.T) {
				login := "b-" + strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(name)
				var got answer
				b, _ := json.Marshal(map[string]any{"username": login, "password": c.password})
				got = o.send(t, "POST", "/users", strings.NewReader(string(b)), map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + o.token})
				if got.status != c.status {
					t.Fatalf("%d %s, want %d", got.status, got.body, c.status)
				}
				if c.status == 400 && !strings.Contains(got.body, "72") {
					t.Errorf("the refusal does not say why: %s", got.body)
				}
				if strings.Contains(got.body, c.password) {
					t.Error("the answer repeats the password")
				}
				if a := guess(login, c.password); (a.status == 200) != (c.status == 200) {
					t.Errorf("sign-in with the same password: %d", a.status)
				}
			})
		}
		// Passwords that agree on the first 72 bytes do not collide: the
		// stored password is the whole 72 bytes, and a longer guess sharing
		// them is refused rather than truncated onto it.
		for name, p := range map[string]string{"73 bytes sharing the 72": p72 + "x", "80 bytes sharing the 72": p72 + "12345678", "72 bytes differing in the last": strings.Repeat("p", 71) + "2"} {
			t.Run("sign in with "+name, func(t *testing.T) {
				if a := guess("b-72-bytes", p); a.status != 400 || a.oauthError() != "invalid_grant" {
					t.Errorf("%d %s, want 400 invalid_grant", a.status, a.body)
				}
			})
		}
	})
}

var csrfValue = regexp.MustCompile(`value="[A-Za-z0-9_\-=]{16,}"`)

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func TestAdversarialHeaderTrust(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	// No trusted proxies: the test client on loopback is an untrusted
	// peer, as an attacker on the pod network would be.
	o := startOAuthTarget(t, "")
	readerID := o.user(t, "reader", "reader@example.com", "reader's password", "apps#read")
	o.user(t, "writer", "", "writer's password", "apps#write")
	reader := o.passwordLogin(t, "reader", "reader's password").AccessToken
	writer := o.passwordLogin(t, "writer", "writer's password").AccessToken
	admin := o.passwordLogin(t, "admin", reliabilityAdminPassword).AccessToken
	spoofed := map[string]string{
		"X-Forwarded-For": "203.0.113.7", "X-Real-Ip": "203.0.113.8", "Forwarded": "for=203.0.113.9;proto=https;host=evil.example",
		"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", "X-Forwarded-Prefix": "/public",
		"X-Original-Url": "/public/x", "X-Original-Uri": "/public/x", "X-Original-Method": "GET", "X-Forwarded-Uri": "/public/x",
		"X-Forwarded-Method": "GET", "X-Rewrite-Url": "/public/x", "X-Client-Ip": "203.0.113.10", "True-Client-Ip": "203.0.113.11",
		"X-Original-Forwarded-For": "203.0.113.12", "Cf-Connecting-Ip": "203.0.113.13",
	}
	with := func(base map[string]string, extra map[string]string) map[string]string {
		h := map[string]string{}
		for k, v := range base {
			h[k] = v
		}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}

	t.Run("spoofed forwarding headers do not change the decision", func(t *testing.T) {
		for _, c := range []struct {
			name, method, token string
			status              int
		}{
			{"anonymous GET of a protected path", "GET", "", 401},
			{"reader DELETE described as a GET", "DELETE", reader, 403},
			{"reader POST described as a GET", "POST", reader, 403},
			{"reader GET (control)", "GET", reader, 200},
		} {
			t.Run(c.name, func(t *testing.T) {
				h := with(spoofed, nil)
				if c.token != "" {
					h["Authorization"] = "Bearer " + c.token
				}
				before := o.hits.Load()
				a := o.send(t, c.method, "/app/secret", nil, h)
				if a.status != c.status {
					t.Fatalf("%d %s, want %d", a.status, a.body, c.status)
				}
				if c.status != 200 {
					if o.hits.Load() != before {
						t.Error("the request reached the upstream")
					}
					return
				}
				seen := o.seen()
				if seen.URL.Path != "/app/secret" || seen.Method != c.method {
					t.Errorf("the upstream saw %s %s", seen.Method, seen.URL.Path)
				}
				for name, want := range map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Real-Ip": "127.0.0.1", "X-Forwarded-Host": o.api, "X-Forwarded-Proto": "http",
					"Forwarded": "", "X-Original-Url": "", "X-Original-Uri": "", "X-Original-Method": "", "X-Forwarded-Uri": "", "X-Forwarded-Method": "", "X-Forwarded-Prefix": "", "X-Forwarded-Port": ""} {
					if got := strings.Join(seen.Header.Values(name), ","); got != want {
						t.Errorf("the upstream saw %s %q, want %q", name, got, want)
					}
				}
			})
		}
	})

	t.Run("forward-auth from an untrusted peer is judged on the connection", func(t *testing.T) {
		// The forwarded description names a public path; from an
		// untrusted peer it is not believed, and /auth/forward itself
		// matches no rule.
		for _, h := range []map[string]string{
			{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/public/x", "X-Forwarded-Host": "a", "X-Forwarded-Proto": "https"},
			{"X-Original-Url": "http://a/public/x", "X-Original-Method": "GET"},
			{"X-Original-Uri": "/public/x", "X-Original-Method": "GET", "Forwarded": "for=203.0.113.9;host=a"},
		} {
			if a := o.send(t, "GET", "/auth/forward", nil, h); a.status == 200 {
				t.Errorf("%v: allowed", h)
			}
		}
	})

	t.Run("spoofed forwarding headers do not move the issuer", func(t *testing.T) {
		// Without public_url the issuer and form origin come from the
		// request; X-Forwarded-Host/-Proto count only from a trusted proxy.
		a := o.send(t, "GET", "/.well-known/oauth-authorization-server", nil, with(spoofed, nil))
		var meta struct {
			Issuer        string `json:"issuer"`
			TokenEndpoint string `json:"token_endpoint"`
		}
		if err := json.Unmarshal([]byte(a.body), &meta); err != nil || a.status != 200 {
			t.Fatalf("%d %s", a.status, a.body)
		}
		if meta.Issuer != "http://"+o.api || !strings.HasPrefix(meta.TokenEndpoint, "http://"+o.api+"/") {
			t.Errorf("issuer %q, token endpoint %q under spoofed forwarding headers", meta.Issuer, meta.TokenEndpoint)
		}
	})

	t.Run("client-sent identity headers never reach the upstream", func(t *testing.T) {
		fake := map[string]string{
			"X-Auth-Subject": "users/admin", "X-AUTH-USER-ID": "admin", "x-auth-username": "admin", "X-Auth-Email": "admin@example.com",
			"X-Auth-Permission": "*#admin", "X-Auth-Assertion": "eyJhbGciOiJub25lIn0.e30.", "x.auth.subject": "users/admin", "X.Auth.User.Id": "admin",
		}
		a := o.send(t, "GET", "/app/x", nil, with(fake, map[string]string{"Authorization": "Bearer " + reader}))
		if a.status != 200 {
			t.Fatalf("%d %s", a.status, a.body)
		}
		seen := o.seen()
		for name, vs := range seen.Header {
			folded := strings.ToLower(strings.NewReplacer("_", "-", ".", "-").Replace(name))
			if !strings.HasPrefix(folded, "x-auth-") {
				continue
			}
			want := map[string]string{"x-auth-subject": "users/" + readerID, "x-auth-user-id": readerID, "x-auth-username": "reader",
				"x-auth-email": "reader@example.com", "x-auth-permission": "apps#read"}[folded]
			if name != http.CanonicalHeaderKey(folded) || len(vs) != 1 || vs[0] != want {
				t.Errorf("the upstream saw %s: %q", name, vs)
			}
		}
		if seen.Header.Get("X-Auth-Subject") != "users/"+readerID {
			t.Errorf("the upstream saw X-Auth-Subject %q", seen.Header.Get("X-Auth-Subject"))
		}
		for _, name := range []string{"x_auth_subject", "X_Auth_User_Id", "X-Auth_Subject", "x_forwarded_for", "X_Original_URL"} {
			t.Run("underscore alias "+name, func(t *testing.T) {
				before := o.hits.Load()
				if a := o.send(t, "GET", "/app/x", nil, map[string]string{name: "users/admin", "Authorization": "Bearer " + reader}); a.status != 400 {
					t.Errorf("%d, want 400 (underscores in header names are refused)", a.status)
				}
				if o.hits.Load() != before {
					t.Error("the request reached the upstream")
				}
			})
		}
	})

	t.Run("headers nominated in Connection", func(t *testing.T) {
		for _, c := range []struct {
			name, headers string
			status        int
		}{
			{"Authorization dropped with a token", "Authorization: Bearer " + reader + "\r\nConnection: Authorization, X-Auth-Subject, X-Auth-User-Id, X-Forwarded-For\r\nX-Auth-Subject: users/admin\r\n", 200},
			{"Authorization nominated, no token", "Connection: Authorization, X-Auth-Subject\r\nX-Auth-Subject: users/admin\r\n", 401},
			{"ct_token and Cookie nominated", "Cookie: ct_token=" + reader + "\r\nConnection: Cookie, ct_token, X-Auth-Subject\r\n", 200},
			{"identity headers nominated, spoofed", "Connection: keep-alive, X-Auth-Subject, X-Auth-Permission\r\nX-Auth-Subject: users/admin\r\nX-Auth-Permission: *#admin\r\n", 401},
		} {
			t.Run(c.name, func(t *testing.T) {
				before := o.hits.Load()
				got := o.exchange(t, "GET /app/x HTTP/1.1\r\nHost: a\r\n"+c.headers+"\r\n", time.Second)
				if len(got) == 0 || got[0] != c.status {
					t.Fatalf("statuses %v, want %d", got, c.status)
				}
				if c.status != 200 {
					if o.hits.Load() != before {
						t.Error("the request reached the upstream")
					}
					return
				}
				seen := o.seen()
				if got := seen.Header.Get("X-Auth-Subject"); got != "users/"+readerID {
					t.Errorf("the upstream saw X-Auth-Subject %q", got)
				}
				if got := seen.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
					t.Errorf("the upstream saw X-Forwarded-For %q", got)
				}
				if seen.Header.Get("Authorization") != "" || strings.Contains(seen.Header.Get("Cookie"), "ct_token") {
					t.Error("the credential reached the upstream")
				}
			})
		}
	})

	t.Run("method override headers never change the level", func(t *testing.T) {
		for _, c := range []struct {
			name, method, token, header, value string
			status                             int
		}{
			{"writer POST overridden to DELETE", "POST", writer, "X-HTTP-Method-Override", "DELETE", 400},
			{"writer POST overridden to delete (lower case)", "POST", writer, "X-Http-Method-Override", "delete", 400},
			{"writer POST with X-HTTP-Method: DELETE", "POST", writer, "X-HTTP-Method", "DELETE", 400},
			{"writer POST with X-Method-Override: PURGE", "POST", writer, "X-Method-Override", "PURGE", 400},
			{"reader GET overridden to DELETE", "GET", reader, "X-HTTP-Method-Override", "DELETE", 400},
			{"reader GET overridden to POST", "GET", reader, "X-HTTP-Method-Override", "POST", 400},
			{"reader POST overridden to GET", "POST", reader, "X-HTTP-Method-Override", "GET", 400},
			{"anonymous GET overridden to DELETE", "GET", "", "X-HTTP-Method-Override", "DELETE", 400},
			{"reader GET naming its own method", "GET", reader, "X-HTTP-Method-Override", "GET", 200},
			{"admin DELETE naming its own method", "DELETE", admin, "X-HTTP-Method-Override", "DELETE", 200},
		} {
			t.Run(c.name, func(t *testing.T) {
				h := map[string]string{c.header: c.value}
				if c.token != "" {
					h["Authorization"] = "Bearer " + c.token
				}
				before := o.hits.Load()
				a := o.send(t, c.method, "/app/x", strings.NewReader(""), h)
				if a.status != c.status {
					t.Errorf("%d %s, want %d", a.status, a.body, c.status)
				}
				if c.status != 200 && o.hits.Load() != before {
					t.Error("the request reached the upstream")
				}
			})
		}
	})

	t.Run("probe user agents get the same decision", func(t *testing.T) {
		for _, ua := range []string{"", "kube-probe/1.31", "ELB-HealthChecker/2.0", "GoogleHC/1.0", "Prometheus/2.53.0", "Googlebot/2.1 (+http://www.google.com/bot.html)",
			"curl/8.5.0", "Consul Health Check", "Blackbox Exporter/0.25.0", "Envoy/HC", "Traefik", "portcullis"} {
			t.Run(fmt.Sprintf("%q", ua), func(t *testing.T) {
				before := o.hits.Load()
				if a := o.send(t, "GET", "/app/x", nil, map[string]string{"User-Agent": ua}); a.status != 401 {
					t.Errorf("anonymous: %d, want 401", a.status)
				}
				if o.hits.Load() != before {
					t.Error("the anonymous probe reached the upstream")
				}
				if a := o.send(t, "DELETE", "/app/x", nil, map[string]string{"User-Agent": ua, "Authorization": "Bearer " + reader}); a.status != 403 {
					t.Errorf("reader DELETE: %d, want 403", a.status)
				}
				if a := o.send(t, "GET", "/app/x", nil, map[string]string{"User-Agent": ua, "Authorization": "Bearer " + reader}); a.status != 200 {
					t.Errorf("reader GET: %d, want 200", a.status)
				}
			})
		}
	})

	// Last: it spends this address's sign-in budget.
	t.Run("spoofed addresses do not escape the per-address sign-in throttle", func(t *testing.T) {
		// 30 failures from this peer (proxy.DefaultLoginFailureRateLimit),
		// each claiming another address in every header a proxy might
		// use; each under another unknown login id, so that no account
		// budget is involved.
		// The budget refills at 0.1/s, and on a loaded machine 30 bcrypt
		// comparisons take long enough to earn one or two more: go on
		// until the first 429, which must come within a few extra tries.
		throttled := false
		for i := range 40 {
			ip := fmt.Sprintf("198.51.100.%d", i+1)
			h := map[string]string{"X-Forwarded-For": ip, "X-Real-Ip": ip, "Forwarded": "for=" + ip, "True-Client-Ip": ip, "Cf-Connecting-Ip": ip}
			a := o.grant(t, url.Values{"grant_type": {"password"}, "username": {fmt.Sprintf("ghost-%d", i)}, "password": {"x"}}, h)
			if a.status == 429 && i >= 30 {
				throttled = true
				break
			}
			if a.status != 400 {
				t.Fatalf("guess %d: %d %s", i, a.status, a.body)
			}
		}
		if !throttled {
			t.Fatal("40 failures from one peer under spoofed addresses were never throttled")
		}
		a := o.grant(t, url.Values{"grant_type": {"password"}, "username": {"reader"}, "password": {"reader's password"}},
			map[string]string{"X-Forwarded-For": "192.0.2.99", "X-Real-Ip": "192.0.2.99", "Forwarded": "for=192.0.2.99"})
		if a.status != 429 || a.oauthError() != "temporarily_unavailable" {
			t.Errorf("after 30 failures from one peer under spoofed addresses: %d %s, want 429", a.status, a.body)
		}
		logs := o.proc.logs.String()
		for _, ip := range []string{"198.51.100.", "192.0.2.99", "203.0.113."} {
			if strings.Contains(logs, ip) {
				t.Errorf("a spoofed address %s… is in the log as if it were the client's", ip)
			}
		}
		checkLogClean(t, logs, "reader's password", "writer's password", reader, writer, admin, reliabilityAdminPassword)
	})
}

// raceWinners returns the token pairs of the racing grants that succeeded;
// every other answer must be invalid_grant.
func raceWinners(t *testing.T, what string, results []answer) []tokenPair {
	t.Helper()
	var won []tokenPair
	for _, a := range results {
		switch {
		case a.status == 200:
			var p tokenPair
			if err := json.Unmarshal([]byte(a.body), &p); err != nil {
				t.Errorf("a racing %s answered 200 with %q: %v", what, a.body, err)
			}
			won = append(won, p)
		case a.status == 400 && a.oauthError() == "invalid_grant":
		default:
			t.Errorf("a racing %s answered %d %s", what, a.status, a.body)
		}
	}
	return won
}

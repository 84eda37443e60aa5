package proxy_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// newAPIWith is newAPI with an authz configuration.
func newAPIWith(t *testing.T, acfg authz.Config, cfg proxy.Config) *api {
	t.Helper()
	svc := authztest.Start(t, etcdtest.NewStore(t, etcdtest.SharedEmbedded(t)), acfg)
	return newAPIOn(t, svc, cfg)
}

var formCT = map[string]string{"Content-Type": "application/x-www-form-urlencoded"}

// registerClient registers an OAuth2 client through the admin API and
// returns its id and secret.
func (a *api) registerClient(admin string, spec map[string]any) (string, string) {
	a.t.Helper()
	body, _ := json.Marshal(spec)
	h := bearer(admin)
	h["Content-Type"] = "application/json"
	r := a.expect(a.do("POST", "/auth/clients", strings.NewReader(string(body)), h), 201, "register client")
	var out struct {
		ID     string `json:"client_id"`
		Secret string `json:"client_secret"`
	}
	r.json(a.t, &out)
	if r.header.Get("Cache-Control") != "no-store" {
		a.t.Errorf("client registration answer is cacheable: %v", r.header)
	}
	return out.ID, out.Secret
}

func retrieveError(t *testing.T, err error, status int, code string) *oauth2.RetrieveError {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("error %v, want an *oauth2.RetrieveError (%d %s)", err, status, code)
	}
	if re.Response.StatusCode != status || re.ErrorCode != code {
		t.Fatalf("token endpoint answered %d %q (%s), want %d %q", re.Response.StatusCode, re.ErrorCode, re.ErrorDescription, status, code)
	}
	if re.Response.Header.Get("Cache-Control") != "no-store" || re.Response.Header.Get("Pragma") != "no-cache" {
		t.Errorf("error response without no-store/no-cache: %v", re.Response.Header)
	}
	return re
}

// noStore checks the caching headers of a token-bearing response, which
// x/oauth2 does not expose: it asks again by hand.
func (a *api) checkNoStore(form url.Values, hdr map[string]string) {
	a.t.Helper()
	h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	for k, v := range hdr {
		h[k] = v
	}
	r := a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(form.Encode()), h), 200, "token")
	if r.header.Get("Cache-Control") != "no-store" || r.header.Get("Pragma") != "no-cache" {
		a.t.Fatalf("token response headers %v, want Cache-Control: no-store and Pragma: no-cache", r.header)
	}
}

func TestOAuth2PasswordGrantWithGoClient(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	ctx := context.Background()
	cfg := oauth2.Config{Endpoint: oauth2.Endpoint{TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInParams}}
	tok, err := cfg.PasswordCredentialsToken(ctx, "root", "rootpassword")
	if err != nil {
		t.Fatal(err)
	}
	if tok.TokenType != "bearer" || tok.RefreshToken == "" || tok.Expiry.IsZero() || tok.Extra("scope") != "*#admin" {
		t.Fatalf("token %+v scope %v", tok, tok.Extra("scope"))
	}
	a.expect(a.do("GET", "/users/me", nil, bearer(tok.AccessToken)), 200, "use the access token")
	a.checkNoStore(url.Values{"grant_type": {"password"}, "username": {"root"}, "password": {"rootpassword"}}, nil)

	// Refresh with the Go client: rotation gives a new refresh token.
	ts := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken})
	tok2, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok2.RefreshToken == "" || tok2.RefreshToken == tok.RefreshToken {
		t.Fatalf("refresh token not rotated: %q", tok2.RefreshToken)
	}
	a.expect(a.do("GET", "/users/me", nil, bearer(tok2.AccessToken)), 200, "use the refreshed token")
	a.checkNoStore(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok2.RefreshToken}}, nil)

	// Failures.
	_, err = cfg.PasswordCredentialsToken(ctx, "root", "wrong password")
	retrieveError(t, err, 400, "invalid_grant")
	_, err = cfg.PasswordCredentialsToken(ctx, "nobody", "wrong password")
	retrieveError(t, err, 400, "invalid_grant")
	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: "not-a-refresh-token"}).Token()
	retrieveError(t, err, 400, "invalid_grant")

	// A confidential client may use the password grant too; a wrong
	// secret sent with Basic is 401 invalid_client with WWW-Authenticate.
	id, secret := a.registerClient(admin, map[string]any{"name": "cli", "grant_types": []string{"password", "refresh_token"}})
	ccfg := oauth2.Config{ClientID: id, ClientSecret: secret, Endpoint: oauth2.Endpoint{TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInHeader}}
	if _, err := ccfg.PasswordCredentialsToken(ctx, "root", "rootpassword"); err != nil {
		t.Fatalf("password grant of a confidential client: %v", err)
	}
	ccfg.ClientSecret = "wrong"
	re := retrieveError(t, func() error { _, err := ccfg.PasswordCredentialsToken(ctx, "root", "rootpassword"); return err }(), 401, "invalid_client")
	if !strings.HasPrefix(re.Response.Header.Get("WWW-Authenticate"), "Basic") {
		t.Fatalf("invalid_client after Basic without WWW-Authenticate: Basic: %v", re.Response.Header)
	}
}

func TestOAuth2ClientCredentialsWithGoClient(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	ctx := context.Background()
	id, secret := a.registerClient(admin, map[string]any{"name": "batch job", "grant_types": []string{"client_credentials"}, "scopes": []string{"projects/demo#read"}})
	a.expect(a.do("POST", "/auth/permissions?resource_name=clients/"+id+"&permission=projects/demo%23read", nil, bearer(admin)), 204, "grant the client")
	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		cc := clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: a.url + "/auth/oauth/token", Scopes: []string{"projects/demo#read"}, AuthStyle: style}
		tok, err := cc.Token(ctx)
		if err != nil {
			t.Fatalf("auth style %d: %v", style, err)
		}
		if tok.RefreshToken != "" {
			t.Errorf("client_credentials issued a refresh token")
		}
		a.expect(a.do("POST", "/auth/tokens/verify?permission=projects/demo%23read", nil, bearer(tok.AccessToken)), 200, "client token grants its scope")
		a.expect(a.do("POST", "/auth/tokens/verify?permission=projects/demo%23write", nil, bearer(tok.AccessToken)), 403, "and no more")

		cc.ClientSecret = "wrong"
		_, err = cc.Token(ctx)
		re := retrieveError(t, err, 401, "invalid_client")
		if style == oauth2.AuthStyleInHeader && !strings.HasPrefix(re.Response.Header.Get("WWW-Authenticate"), "Basic") {
			t.Fatalf("no WWW-Authenticate: Basic after failed Basic auth: %v", re.Response.Header)
		}
		cc.ClientSecret, cc.Scopes = secret, []string{"projects/other#read"}
		_, err = cc.Token(ctx)
		retrieveError(t, err, 400, "invalid_scope")
	}
	basic := map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))}
	a.checkNoStore(url.Values{"grant_type": {"client_credentials"}}, basic)
	// A client without the grant is unauthorized_client.
	id2, secret2 := a.registerClient(admin, map[string]any{"redirect_uris": []string{"https://app.example.com/cb"}})
	_, err := (&clientcredentials.Config{ClientID: id2, ClientSecret: secret2, TokenURL: a.url + "/auth/oauth/token"}).Token(ctx)
	retrieveError(t, err, 400, "unauthorized_client")
}

// browser is a cookie-keeping HTTP client that does not follow redirects.
type browser struct {
	t      *testing.T
	a      *api
	client *http.Client
}

func newBrowser(a *api) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: a.t, a: a, client: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) do(method, target string, form url.Values, hdr map[string]string) (*http.Response, string) {
	b.t.Helper()
	if strings.HasPrefix(target, "/") {
		target = b.a.url + target
	}
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp, sb.String()
}

// signIn posts the login form like a script (no browser headers).
func (b *browser) signIn(user, pw, rd string) *http.Response {
	b.t.Helper()
	resp, body := b.do("POST", "/auth/login", url.Values{"username": {user}, "password": {pw}, "rd": {rd}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("sign in: %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Pragma") != "no-cache" || cookieNamed(resp, "ct_token") == nil {
		b.t.Fatalf("sign-in answer with the session cookie is cacheable: %v", resp.Header)
	}
	return resp
}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

func TestOAuth2AuthorizationCodeWithPKCE(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	ctx := context.Background()
	const redirect = "http://127.0.0.1:9/callback"
	id, secret := a.registerClient(admin, map[string]any{"name": "Third Party App", "redirect_uris": []string{redirect, "https://app.example.com/cb"},
		"grant_types": []string{"authorization_code", "refresh_token"}})
	cfg := oauth2.Config{ClientID: id, ClientSecret: secret, RedirectURL: redirect, Scopes: []string{"users#read"},
		Endpoint: oauth2.Endpoint{AuthURL: a.url + "/auth/oauth/authorize", TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInHeader}}
	b := newBrowser(a)

	authorize := func(state, verifier string, opts ...oauth2.AuthCodeOption) url.Values {
		t.Helper()
		u := cfg.AuthCodeURL(state, append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}, opts...)...)
		resp, body := b.do("GET", u, nil, nil)
		if resp.StatusCode == http.StatusOK { // the consent page: allow, as a browser would
			m := csrfRE.FindStringSubmatch(body)
			if m == nil || !strings.Contains(body, "Third Party App") || !strings.Contains(body, "users#read") {
				t.Fatalf("consent page without form token, client name or scope: %s", body)
			}
			q, _ := url.Parse(u)
			form := q.Query()
			form.Set("decision", "allow")
			form.Set("csrf_token", m[1])
			resp, body = b.do("POST", "/auth/oauth/authorize", form, map[string]string{"Origin": a.url, "Sec-Fetch-Site": "same-origin"})
		}
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("authorize: %d %s", resp.StatusCode, body)
		}
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if !strings.HasPrefix(loc.String(), redirect+"?") {
			t.Fatalf("authorize redirected to %s, want the client's redirect_uri", loc)
		}
		if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Pragma") != "no-cache" {
			t.Fatalf("the redirect with the code is cacheable: %v", resp.Header)
		}
		return loc.Query()
	}

	// Not signed in: to the login page and back.
	verifier := oauth2.GenerateVerifier()
	u := cfg.AuthCodeURL("st-1", oauth2.S256ChallengeOption(verifier))
	resp, _ := b.do("GET", u, nil, nil)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/auth/login-page?rd=") {
		t.Fatalf("authorize without a session: %d → %q, want 303 to the login page", resp.StatusCode, loc)
	}
	back, _ := url.Parse(loc)
	resp = b.signIn("root", "rootpassword", back.Query().Get("rd"))
	if got := resp.Header.Get("Location"); !strings.HasPrefix(got, "/auth/oauth/authorize?") {
		t.Fatalf("after sign-in: Location %q, want back to the authorization request", got)
	}

	q := authorize("st-1", verifier)
	if q.Get("state") != "st-1" || q.Get("code") == "" || q.Get("iss") != a.url {
		t.Fatalf("authorization response %v", q)
	}
	tok, err := cfg.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" || tok.Extra("scope") != "users#read" {
		t.Fatalf("token %+v", tok)
	}
	a.expect(a.do("POST", "/auth/tokens/verify?permission=users%23read", nil, bearer(tok.AccessToken)), 200, "code token")
	a.expect(a.do("POST", "/auth/tokens/verify?permission=users%23write", nil, bearer(tok.AccessToken)), 403, "code token is bounded by its scope")

	// Single use: presenting the code again revokes what it was redeemed
	// for (RFC 6749 §4.1.2).
	_, err = cfg.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
	retrieveError(t, err, 400, "invalid_grant")
	a.expect(a.do("POST", "/auth/tokens/verify?permission=users%23read", nil, bearer(tok.AccessToken)), 401, "code token after the code's replay")
	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	retrieveError(t, err, 400, "invalid_grant")

	// Refresh: rotation; the old refresh token replayed revokes the family.
	if tok, err = cfg.Exchange(ctx, authorize("st-1b", verifier).Get("code"), oauth2.VerifierOption(verifier)); err != nil {
		t.Fatal(err)
	}
	tok2, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	if err != nil {
		t.Fatal(err)
	}
	// The client must authenticate to refresh (RFC 6749 §6, §5.2).
	anonymous := oauth2.Config{Endpoint: oauth2.Endpoint{TokenURL: cfg.Endpoint.TokenURL, AuthStyle: oauth2.AuthStyleInParams}}
	_, err = anonymous.TokenSource(ctx, &oauth2.Token{RefreshToken: tok2.RefreshToken}).Token()
	retrieveError(t, err, 401, "invalid_client")
	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	retrieveError(t, err, 400, "invalid_grant")
	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: tok2.RefreshToken}).Token()
	retrieveError(t, err, 400, "invalid_grant")

	// Wrong or missing verifier, other redirect_uri at the token endpoint.
	v2 := oauth2.GenerateVerifier()
	q = authorize("st-2", v2)
	_, err = cfg.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(oauth2.GenerateVerifier()))
	retrieveError(t, err, 400, "invalid_grant")
	q = authorize("st-3", v2)
	_, err = cfg.Exchange(ctx, q.Get("code"))
	retrieveError(t, err, 400, "invalid_grant")
	q = authorize("st-4", v2)
	other := cfg
	other.RedirectURL = "https://app.example.com/cb"
	_, err = other.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(v2))
	retrieveError(t, err, 400, "invalid_grant")

	// Without PKCE: the error goes back to the registered URI, with state.
	resp, _ = b.do("GET", cfg.AuthCodeURL("st-5"), nil, nil)
	eq, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != 303 || eq.Query().Get("error") != "invalid_request" || eq.Query().Get("state") != "st-5" || !strings.HasPrefix(eq.String(), redirect) {
		t.Fatalf("authorize without PKCE: %d %s", resp.StatusCode, eq)
	}
	// Denied consent.
	resp, body := b.do("GET", cfg.AuthCodeURL("st-6", oauth2.S256ChallengeOption(v2)), nil, nil)
	m := csrfRE.FindStringSubmatch(body)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("consent page: %d", resp.StatusCode)
	}
	pu, _ := url.Parse(cfg.AuthCodeURL("st-6", oauth2.S256ChallengeOption(v2)))
	form := pu.Query()
	form.Set("decision", "deny")
	form.Set("csrf_token", m[1])
	resp, _ = b.do("POST", "/auth/oauth/authorize", form, map[string]string{"Origin": a.url})
	eq, _ = url.Parse(resp.Header.Get("Location"))
	if eq.Query().Get("error") != "access_denied" || eq.Query().Get("state") != "st-6" {
		t.Fatalf("denied consent: %s", eq)
	}
	// A consent form posted from another site does not count.
	form.Set("decision", "allow")
	resp, _ = b.do("POST", "/auth/oauth/authorize", form, map[string]string{"Origin": "https://evil.example"})
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Location") != "" {
		t.Fatalf("cross-site consent: %d, Location %q; want 403 and no redirect", resp.StatusCode, resp.Header.Get("Location"))
	}

	// An unregistered redirect_uri or client is never redirected to.
	evil := cfg
	evil.RedirectURL = "https://evil.example/cb"
	resp, _ = b.do("GET", evil.AuthCodeURL("st-7", oauth2.S256ChallengeOption(v2)), nil, nil)
	if resp.StatusCode != 400 || resp.Header.Get("Location") != "" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("unregistered redirect_uri: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	unknown := cfg
	unknown.ClientID = "no-such-client"
	resp, _ = b.do("GET", unknown.AuthCodeURL("st-8", oauth2.S256ChallengeOption(v2)), nil, nil)
	if resp.StatusCode != 400 || resp.Header.Get("Location") != "" {
		t.Fatalf("unknown client: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}

	// A first-party public client: no consent page, no secret, PKCE only.
	pid, psecret := a.registerClient(admin, map[string]any{"name": "Our SPA", "public": true, "first_party": true, "redirect_uris": []string{redirect}})
	if psecret != "" {
		t.Fatal("a public client got a secret")
	}
	pcfg := oauth2.Config{ClientID: pid, RedirectURL: redirect, Endpoint: oauth2.Endpoint{AuthURL: a.url + "/auth/oauth/authorize", TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInParams}}
	v3 := oauth2.GenerateVerifier()
	resp, _ = b.do("GET", pcfg.AuthCodeURL("st-9", oauth2.S256ChallengeOption(v3)), nil, nil)
	pq, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != 303 || pq.Query().Get("code") == "" {
		t.Fatalf("first-party client: %d %s, want a code without consent", resp.StatusCode, pq)
	}
	if _, err := pcfg.Exchange(ctx, pq.Query().Get("code"), oauth2.VerifierOption(v3)); err != nil {
		t.Fatalf("public client exchange: %v", err)
	}

	// prompt=none without a session.
	resp, _ = newBrowser(a).do("GET", pcfg.AuthCodeURL("st-10", oauth2.S256ChallengeOption(v3), oauth2.SetAuthURLParam("prompt", "none")), nil, nil)
	nq, _ := url.Parse(resp.Header.Get("Location"))
	if nq.Query().Get("error") != "login_required" || nq.Query().Get("state") != "st-10" {
		t.Fatalf("prompt=none without a session: %s", nq)
	}
}

// Every authorization request error that is not about the client or its
// redirect_uri goes back to the registered redirect_uri with the RFC 6749
// §4.1.2.1 code, the state and the issuer (RFC 9207).
func TestAuthorizeErrorsGoBackToTheClient(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	const redirect = "https://app.example.com/cb?keep=1"
	id, _ := a.registerClient(admin, map[string]any{"first_party": true, "redirect_uris": []string{redirect}, "scopes": []string{"projects/demo#read"}})
	noCode, _ := a.registerClient(admin, map[string]any{"first_party": true, "redirect_uris": []string{redirect}, "grant_types": []string{"client_credentials"}})
	// A third-party client: the errors come before the consent page.
	third, _ := a.registerClient(admin, map[string]any{"redirect_uris": []string{redirect}, "scopes": []string{"projects/demo#read"}})
	b := newBrowser(a)
	b.signIn("root", "rootpassword", "")
	challenge := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	good := url.Values{"response_type": {"code"}, "client_id": {id}, "redirect_uri": {redirect}, "state": {"xyz"},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	cases := []struct {
		name   string
		change url.Values // "" deletes the parameter
		want   string
	}{
		{"no response_type", url.Values{"response_type": {""}}, "invalid_request"},
		{"implicit grant", url.Values{"response_type": {"token"}}, "unsupported_response_type"},
		{"hybrid", url.Values{"response_type": {"code token"}}, "unsupported_response_type"},
		{"no PKCE", url.Values{"code_challenge": {""}, "code_challenge_method": {""}}, "invalid_request"},
		{"plain PKCE", url.Values{"code_challenge_method": {"plain"}}, "invalid_request"},
		{"short challenge", url.Values{"code_challenge": {"abc"}}, "invalid_request"},
		{"malformed scope", url.Values{"scope": {"no-level"}}, "invalid_scope"},
		{"scope the client may not ask for", url.Values{"scope": {"projects/demo#write"}}, "invalid_scope"},
		{"client without the grant", url.Values{"client_id": {noCode}}, "unauthorized_client"},
		{"third party, scope it may not ask for", url.Values{"client_id": {third}, "scope": {"projects/demo#write"}}, "invalid_scope"},
		{"third party, malformed scope", url.Values{"client_id": {third}, "scope": {"no-level"}}, "invalid_scope"},
		{"third party, plain PKCE", url.Values{"client_id": {third}, "code_challenge_method": {"plain"}}, "invalid_request"},
		{"third party, prompt=none and a bad scope", url.Values{"client_id": {third}, "scope": {"projects/demo#write"}, "prompt": {"none"}}, "invalid_scope"},
		{"third party, prompt=none", url.Values{"client_id": {third}, "prompt": {"none"}}, "consent_required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q := url.Values{}
			for k, v := range good {
				q[k] = v
			}
			for k, v := range c.change {
				if v[0] == "" {
					q.Del(k)
				} else {
					q[k] = v
				}
			}
			resp, body := b.do("GET", "/auth/oauth/authorize?"+q.Encode(), nil, nil)
			loc, err := url.Parse(resp.Header.Get("Location"))
			if resp.StatusCode != http.StatusSeeOther || err != nil || !strings.HasPrefix(loc.String(), "https://app.example.com/cb?") {
				t.Fatalf("%d Location %q, want 303 to the redirect_uri; body %s", resp.StatusCode, resp.Header.Get("Location"), body)
			}
			got := loc.Query()
			if got.Get("error") != c.want || got.Get("error_description") == "" || got.Get("state") != "xyz" || got.Get("iss") != a.url || got.Get("keep") != "1" || got.Has("code") {
				t.Fatalf("redirected with %v, want error %q, state, iss and the registered query", got, c.want)
			}
		})
	}
	// The good request itself gets a code: the cases above fail for their change only.
	resp, _ := b.do("GET", "/auth/oauth/authorize?"+good.Encode(), nil, nil)
	if loc, _ := url.Parse(resp.Header.Get("Location")); loc == nil || loc.Query().Get("code") == "" {
		t.Fatalf("the good request: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// A native app registers its loopback redirect URI without a port and
// listens on whatever port it gets (RFC 8252 §7.3); the code is bound to
// the port it was asked for. A URI registered with a port stays exact.
func TestNativeAppLoopbackRedirectOnAnyPort(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	id, _ := a.registerClient(admin, map[string]any{"public": true, "first_party": true, "redirect_uris": []string{"http://127.0.0.1/callback"}})
	fixed, _ := a.registerClient(admin, map[string]any{"public": true, "first_party": true, "redirect_uris": []string{"http://127.0.0.1:9/callback"}})
	b := newBrowser(a)
	b.signIn("root", "rootpassword", "")
	ctx := context.Background()
	config := func(client, redirect string) oauth2.Config {
		return oauth2.Config{ClientID: client, RedirectURL: redirect,
			Endpoint: oauth2.Endpoint{AuthURL: a.url + "/auth/oauth/authorize", TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInParams}}
	}
	verifier := oauth2.GenerateVerifier()
	cfg := config(id, "http://127.0.0.1:53121/callback")
	resp, body := b.do("GET", cfg.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)), nil, nil)
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusSeeOther || loc == nil || !strings.HasPrefix(loc.String(), "http://127.0.0.1:53121/callback?") || loc.Query().Get("code") == "" {
		t.Fatalf("a loopback port of the native app: %d %q %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	if _, err := cfg.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier)); err != nil {
		t.Fatalf("exchange on the port asked for: %v", err)
	}
	resp, _ = b.do("GET", cfg.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)), nil, nil)
	loc, _ = url.Parse(resp.Header.Get("Location"))
	other := config(id, "http://127.0.0.1:53122/callback")
	_, err := other.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	retrieveError(t, err, 400, "invalid_grant")

	for _, c := range []oauth2.Config{config(fixed, "http://127.0.0.1:10/callback"), config(id, "http://127.0.0.1:53121/other"), config(id, "http://localhost:53121/callback")} {
		resp, _ = b.do("GET", c.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)), nil, nil)
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
			t.Fatalf("%s for %s: %d Location %q, want the error page", c.RedirectURL, c.ClientID, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
}

// RFC 6749 §4.1.3: the token request must repeat the redirect_uri of the
// authorization request; when that had none (the client has one
// registered URI), the token request may omit it or name that URI.
func TestRedirectURIAtTheTokenEndpoint(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	const registered = "https://app.example.com/cb"
	id, secret := a.registerClient(admin, map[string]any{"first_party": true, "redirect_uris": []string{registered}})
	b := newBrowser(a)
	b.signIn("root", "rootpassword", "")
	ctx := context.Background()
	verifier := oauth2.GenerateVerifier()
	code := func(redirect string) string {
		t.Helper()
		cfg := oauth2.Config{ClientID: id, RedirectURL: redirect, Endpoint: oauth2.Endpoint{AuthURL: a.url + "/auth/oauth/authorize"}}
		resp, body := b.do("GET", cfg.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)), nil, nil)
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusSeeOther || loc == nil || loc.Query().Get("code") == "" || !strings.HasPrefix(loc.String(), registered+"?") {
			t.Fatalf("authorize with redirect_uri %q: %d %q %s", redirect, resp.StatusCode, resp.Header.Get("Location"), body)
		}
		return loc.Query().Get("code")
	}
	exchange := func(c, redirect string) error {
		cfg := oauth2.Config{ClientID: id, ClientSecret: secret, RedirectURL: redirect,
			Endpoint: oauth2.Endpoint{TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInHeader}}
		_, err := cfg.Exchange(ctx, c, oauth2.VerifierOption(verifier))
		return err
	}
	for _, c := range []struct {
		authorize, token string
		ok               bool
	}{
		{registered, registered, true},
		{registered, "", false},
		{"", "", true},
		{"", registered, true},
		{"", "https://app.example.com/other", false},
	} {
		err := exchange(code(c.authorize), c.token)
		if c.ok && err != nil {
			t.Errorf("authorize with %q, token with %q: %v", c.authorize, c.token, err)
		}
		if !c.ok {
			var re *oauth2.RetrieveError
			if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
				t.Errorf("authorize with %q, token with %q: %v, want invalid_grant", c.authorize, c.token, err)
			}
		}
	}
}

func TestTokenEndpointRules(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	// RFC 6749 §2.3.1: Basic credentials are form-urlencoded first; a
	// client that escapes every byte is understood.
	id, secret := a.registerClient(admin, map[string]any{"client_id": "batch-job.v2", "grant_types": []string{"client_credentials"}})
	escapeAll := func(v string) string {
		var sb strings.Builder
		for i := 0; i < len(v); i++ {
			fmt.Fprintf(&sb, "%%%02X", v[i])
		}
		return sb.String()
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(escapeAll(id)+":"+escapeAll(secret)))
	a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=client_credentials"), map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": basic}), 200, "percent-encoded Basic credentials")
	r := a.expect(a.do("GET", "/auth/oauth/token?grant_type=password&username=root&password=rootpassword", nil, nil), 405, "GET token")
	var oe map[string]string
	r.json(t, &oe)
	if oe["error"] != "invalid_request" || !strings.Contains(r.header.Get("Allow"), "POST") {
		t.Fatalf("GET token: %v %v", oe, r.header)
	}
	for _, p := range []string{"password=x", "client_secret=x", "refresh_token=x", "code=x", "code_verifier=x"} {
		a.expect(a.do("POST", "/auth/oauth/token?"+p, strings.NewReader("grant_type=password&username=root&password=rootpassword"), formCT), 400, "secret in URL: "+p)
	}
	r = a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=client_credentials"), map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Basic !!!"}), 401, "malformed Basic")
	if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic") {
		t.Fatalf("malformed Basic: %v", r.header)
	}
	r = a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=client_credentials&client_id=nope&client_secret=nope"), formCT), 401, "unknown client")
	r.json(t, &oe)
	if oe["error"] != "invalid_client" {
		t.Fatalf("unknown client: %v", oe)
	}
	a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=password&grant_type=password"), formCT), 400, "repeated parameter")
	for ct, want := range map[string]string{"": "Content-Type is missing", "application/json": "x-www-form-urlencoded", "text/plain": "x-www-form-urlencoded"} {
		r = a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader("grant_type=password&username=root&password=rootpassword"), map[string]string{"Content-Type": ct}), 400, "Content-Type "+ct)
		r.json(t, &oe)
		if oe["error"] != "invalid_request" || !strings.Contains(oe["error_description"], want) {
			t.Fatalf("Content-Type %q: %v, want invalid_request saying %q", ct, oe, want)
		}
	}
}

// An attacker guessing passwords of one account is cut off after the
// budget, whichever login id he uses; the victim's other accounts and
// other users are unaffected. The client address throttle stops one
// address guessing across many accounts.
func TestPasswordGuessingIsThrottled(t *testing.T) {
	acfg := authztest.FastConfig()
	acfg.LoginFailureLimit = 4
	a := newAPIWith(t, acfg, proxy.Config{LoginFailureRateLimit: proxy.RateLimit{Rate: -1}})
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "alice", Email: "alice@example.com", Password: "alice's password"}, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "bob", Password: "bob's password"}, false); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg := oauth2.Config{Endpoint: oauth2.Endpoint{TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInParams}}
	for _, login := range []string{"alice", "alice@example.com", "ALICE", "Alice@Example.com"} {
		_, err := cfg.PasswordCredentialsToken(ctx, login, "guess")
		retrieveError(t, err, 400, "invalid_grant")
	}
	_, err := cfg.PasswordCredentialsToken(ctx, "alice", "alice's password")
	re := retrieveError(t, err, 429, "temporarily_unavailable")
	if re.Response.Header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	if _, err := cfg.PasswordCredentialsToken(ctx, "bob", "bob's password"); err != nil {
		t.Fatalf("another account: %v", err)
	}
	// The sign-in page shares the budget.
	b := newBrowser(a)
	resp, body := b.do("POST", "/auth/login", url.Values{"username": {"alice@example.com"}, "password": {"alice's password"}}, nil)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "Too many failed sign-in attempts") {
		t.Fatalf("login page for a locked account: %d", resp.StatusCode)
	}

	// Concurrent guesses on a fresh account: exactly the budget is checked.
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "carol", Password: "carol's password"}, false); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			_, err := cfg.PasswordCredentialsToken(ctx, "carol", "guess")
			var re *oauth2.RetrieveError
			if errors.As(err, &re) {
				mu.Lock()
				codes[re.Response.StatusCode]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if codes[400] != 4 || codes[429] != 12 {
		t.Fatalf("concurrent guesses answered %v, want 4×400 and 12×429", codes)
	}

	// Per address: a tiny budget, spread over accounts.
	a2 := newAPIWith(t, authztest.FastConfig(), proxy.Config{LoginFailureRateLimit: proxy.RateLimit{Rate: 0.001, Burst: 3}})
	a2.admin()
	cfg2 := oauth2.Config{Endpoint: oauth2.Endpoint{TokenURL: a2.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInParams}}
	for _, login := range []string{"u1", "u2", "u3"} {
		_, err := cfg2.PasswordCredentialsToken(ctx, login, "guess")
		retrieveError(t, err, 400, "invalid_grant")
	}
	_, err = cfg2.PasswordCredentialsToken(ctx, "root", "rootpassword")
	retrieveError(t, err, 429, "temporarily_unavailable")
}

// Guesses sent at once from one address, each at another account, get no
// more than the address's budget checked: the budget is spent before the
// password is, not after. Successes give their share back.
func TestConcurrentGuessesFromOneAddressKeepToItsBudget(t *testing.T) {
	a := newAPIWith(t, authztest.FastConfig(), proxy.Config{LoginFailureRateLimit: proxy.RateLimit{Rate: 0.001, Burst: 3}})
	a.admin()
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "dave", Password: "dave's password"}, false); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg := oauth2.Config{Endpoint: oauth2.Endpoint{TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInParams}}
	// Successes, one after another, do not spend the budget.
	for range 5 {
		if _, err := cfg.PasswordCredentialsToken(ctx, "dave", "dave's password"); err != nil {
			t.Fatalf("a right password: %v", err)
		}
	}
	for _, path := range []string{"/auth/oauth/token", "/auth/login"} {
		b := newAPIWith(t, authztest.FastConfig(), proxy.Config{LoginFailureRateLimit: proxy.RateLimit{Rate: 0.001, Burst: 3}})
		start := make(chan struct{})
		var mu sync.Mutex
		codes := map[int]int{}
		var wg sync.WaitGroup
		for i := range 24 {
			wg.Go(func() {
				form := url.Values{"grant_type": {"password"}, "username": {fmt.Sprintf("guess-%d", i)}, "password": {"guess"}}
				<-start
				r := b.do("POST", path, strings.NewReader(form.Encode()), formCT)
				mu.Lock()
				codes[r.status]++
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
		checked := codes[http.StatusBadRequest] + codes[http.StatusUnauthorized]
		if checked != 3 || codes[http.StatusTooManyRequests] != 21 {
			t.Fatalf("%s: 24 guesses at once answered %v, want 3 checked and 21×429", path, codes)
		}
	}
}

func TestRevokeAndIntrospectSemantics(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "eve", Password: "eve's password"}, false); err != nil {
		t.Fatal(err)
	}
	eve := a.login("eve", "eve's password")
	rootSession := a.login("root", "rootpassword")
	ct := func(tok string) map[string]string {
		return map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer " + tok}
	}
	introspect := func(caller, tok string) map[string]any {
		t.Helper()
		var in map[string]any
		r := a.expect(a.do("POST", "/auth/oauth/introspect", strings.NewReader(url.Values{"token": {tok}}.Encode()), ct(caller)), 200, "introspect")
		r.json(t, &in)
		if r.header.Get("Cache-Control") != "no-store" {
			t.Errorf("introspection is cacheable")
		}
		return in
	}
	in := introspect(admin, rootSession)
	for _, k := range []string{"active", "scope", "sub", "username", "token_type", "exp", "iat", "jti"} {
		if _, ok := in[k]; !ok {
			t.Errorf("introspection lacks %q: %v", k, in)
		}
	}
	if in["active"] != true || in["username"] != "root" {
		t.Fatalf("introspect = %v", in)
	}
	for _, bad := range []string{"garbage", "pct_unknown", rootSession + "x"} {
		if got := introspect(admin, bad); len(got) != 1 || got["active"] != false {
			t.Fatalf("introspect(%q) = %v, want exactly {\"active\": false}", bad, got)
		}
	}
	// The token parameter is required (RFC 7662 §2.1), as at revocation.
	for _, path := range []string{"/auth/oauth/introspect", "/auth/oauth/revoke"} {
		a.expect(a.do("POST", path, strings.NewReader(url.Values{"token_type_hint": {"access_token"}}.Encode()), ct(admin)), 400, path+" without a token")
	}
	// Someone else's valid token: not revocable by eve.
	a.expect(a.do("POST", "/auth/oauth/revoke", strings.NewReader(url.Values{"token": {rootSession}}.Encode()), ct(eve)), 403, "revoke another subject's token")
	a.expect(a.do("GET", "/users/me", nil, bearer(rootSession)), 200, "still valid")
	// A session JWT is revocable by its holder, at once.
	a.expect(a.do("POST", "/auth/oauth/revoke", strings.NewReader(url.Values{"token": {rootSession}, "token_type_hint": {"access_token"}}.Encode()), ct(rootSession)), 200, "revoke own session JWT")
	a.expect(a.do("GET", "/users/me", nil, bearer(rootSession)), 401, "revoked session")
	if got := introspect(admin, rootSession); got["active"] != false {
		t.Fatalf("revoked session introspects as %v", got)
	}
	// A client revokes the tokens issued to it.
	id, secret := a.registerClient(admin, map[string]any{"grant_types": []string{"password", "refresh_token"}})
	form := url.Values{"grant_type": {"password"}, "username": {"eve"}, "password": {"eve's password"}, "client_id": {id}, "client_secret": {secret}}
	var tr struct {
		Access  string `json:"access_token"`
		Refresh string `json:"refresh_token"`
	}
	a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(form.Encode()), formCT), 200, "client password grant").json(t, &tr)
	cl := url.Values{"token": {tr.Refresh}, "client_id": {id}, "client_secret": {secret}}
	if got := introspect(admin, tr.Refresh); got["active"] != true || got["client_id"] != id {
		t.Fatalf("refresh token introspects as %v", got)
	}
	a.expect(a.do("POST", "/auth/oauth/revoke", strings.NewReader(cl.Encode()), formCT), 200, "client revokes its refresh token")
	if got := introspect(admin, tr.Refresh); got["active"] != false {
		t.Fatalf("revoked refresh token introspects as %v", got)
	}
	cl.Set("client_secret", "wrong")
	a.expect(a.do("POST", "/auth/oauth/revoke", strings.NewReader(cl.Encode()), formCT), 401, "revoke with a wrong client secret")
}

// RFC 7009 §2.1: a client revokes the tokens issued to it, whatever
// subject it acts as, and a public client, which has no secret to
// authenticate with, identifies itself by its client_id. Neither may
// revoke a token issued to someone else: that is an RFC 6749 §5.2 error.
func TestClientsRevokeTheTokensIssuedToThem(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "eve", Password: "eve's password"}, false); err != nil {
		t.Fatal(err)
	}
	grant := func(extra url.Values) (access, refresh string) {
		t.Helper()
		form := url.Values{"grant_type": {"password"}, "username": {"eve"}, "password": {"eve's password"}}
		for k, v := range extra {
			form[k] = v
		}
		var tr struct {
			Access  string `json:"access_token"`
			Refresh string `json:"refresh_token"`
		}
		a.expect(a.do("POST", "/auth/oauth/token", strings.NewReader(form.Encode()), formCT), 200, "password grant").json(t, &tr)
		return tr.Access, tr.Refresh
	}
	revoke := func(form url.Values, status int, code, what string) {
		t.Helper()
		r := a.expect(a.do("POST", "/auth/oauth/revoke", strings.NewReader(form.Encode()), formCT), status, what)
		if code != "" {
			var oe map[string]string
			r.json(t, &oe)
			if oe["error"] != code {
				t.Fatalf("%s: error %v, want %q", what, oe, code)
			}
		}
	}
	active := func(tok string) bool {
		t.Helper()
		var in map[string]any
		a.expect(a.do("POST", "/auth/oauth/introspect", strings.NewReader(url.Values{"token": {tok}}.Encode()),
			map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer " + admin}), 200, "introspect").json(t, &in)
		return in["active"] == true
	}

	// A confidential client acting as another subject.
	conf, secret := a.registerClient(admin, map[string]any{"subject": "services/dashboard", "grant_types": []string{"password", "refresh_token"}})
	access, refresh := grant(url.Values{"client_id": {conf}, "client_secret": {secret}})
	other, _ := grant(nil)
	revoke(url.Values{"token": {other}, "client_id": {conf}, "client_secret": {secret}}, 400, "unauthorized_client", "a token not issued to the client")
	if !active(other) {
		t.Fatal("a client revoked a token not issued to it")
	}
	revoke(url.Values{"token": {refresh}, "client_id": {conf}, "client_secret": {secret}}, 200, "", "the client's refresh token")
	revoke(url.Values{"token": {access}, "client_id": {conf}, "client_secret": {secret}}, 200, "", "the client's access token")
	if active(refresh) || active(access) {
		t.Fatal("the client's tokens survived their revocation")
	}

	// A public client.
	pub, _ := a.registerClient(admin, map[string]any{"public": true, "grant_types": []string{"password", "refresh_token"}})
	access, refresh = grant(url.Values{"client_id": {pub}})
	revoke(url.Values{"token": {other}, "client_id": {pub}}, 400, "unauthorized_client", "a token not issued to the public client")
	revoke(url.Values{"token": {"unknown"}, "client_id": {pub}}, 200, "", "an unknown token")
	revoke(url.Values{"token": {refresh}, "client_id": {pub}}, 200, "", "the public client's refresh token")
	revoke(url.Values{"token": {access}, "client_id": {pub}}, 200, "", "the public client's access token")
	if active(refresh) || active(access) || !active(other) {
		t.Fatal("the public client's revocation missed or went too far")
	}
	revoke(url.Values{"token": {other}, "client_id": {pub}, "client_secret": {"guess"}}, 401, "invalid_client", "a public client with a secret")
	revoke(url.Values{"token": {other}, "client_id": {"no-such-client"}}, 401, "invalid_client", "an unknown client")
	// Identifying as a public client is not enough to introspect.
	a.expect(a.do("POST", "/auth/oauth/introspect", strings.NewReader(url.Values{"token": {other}, "client_id": {pub}}.Encode()), formCT), 401, "introspect as a public client")
}

func TestDiscoveryAndJWKS(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	for _, p := range []string{"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"} {
		var md map[string]any
		a.expect(a.do("GET", p, nil, nil), 200, p).json(t, &md)
		if md["issuer"] != a.url || md["token_endpoint"] != a.url+"/auth/oauth/token" || md["authorization_endpoint"] != a.url+"/auth/oauth/authorize" ||
			md["jwks_uri"] != a.url+"/.well-known/jwks.json" || md["revocation_endpoint"] == nil || md["introspection_endpoint"] == nil {
			t.Fatalf("%s = %v", p, md)
		}
		if m, _ := md["code_challenge_methods_supported"].([]any); len(m) != 1 || m[0] != "S256" {
			t.Fatalf("code_challenge_methods_supported = %v", md["code_challenge_methods_supported"])
		}
		// RFC 8414 §2 (and OpenID Connect discovery's required members),
		// as the server behaves.
		for k, want := range map[string]string{
			"response_types_supported":                       "[code]",
			"grant_types_supported":                          "[authorization_code refresh_token client_credentials password]",
			"token_endpoint_auth_methods_supported":          "[client_secret_basic client_secret_post none]",
			"revocation_endpoint_auth_methods_supported":     "[client_secret_basic client_secret_post none]",
			"introspection_endpoint_auth_methods_supported":  "[client_secret_basic client_secret_post]",
			"subject_types_supported":                        "[public]",
			"id_token_signing_alg_values_supported":          "[EdDSA]",
			"authorization_response_iss_parameter_supported": "true",
		} {
			if got := fmt.Sprint(md[k]); got != want {
				t.Errorf("%s: %s = %s, want %s", p, k, got, want)
			}
		}
	}
	// With a configured public URL, that is the issuer whatever the Host.
	b := newAPIOn(t, a.svc, proxy.Config{PublicURL: "https://auth.example.com/"})
	var md map[string]any
	b.expect(b.do("GET", "/.well-known/oauth-authorization-server", nil, map[string]string{"Host": "evil.example"}), 200, "metadata").json(t, &md)
	if md["issuer"] != "https://auth.example.com" {
		t.Fatalf("issuer %v", md["issuer"])
	}

	// Under an API prefix the issuer has a path: its metadata is found
	// both where RFC 8414 §3.1 puts it (the path after the well-known
	// URI) and where OpenID Connect discovery does (before it), and it
	// names endpoints that answer.
	const prefix = "/.portcullis"
	p := newAPIOn(t, a.svc, proxy.Config{APIPrefix: prefix})
	for _, path := range []string{"/.well-known/oauth-authorization-server" + prefix, prefix + "/.well-known/oauth-authorization-server", prefix + "/.well-known/openid-configuration"} {
		var md map[string]any
		p.expect(p.do("GET", path, nil, nil), 200, path).json(t, &md)
		if md["issuer"] != p.url+prefix || md["token_endpoint"] != p.url+prefix+"/auth/oauth/token" || md["jwks_uri"] != p.url+prefix+"/.well-known/jwks.json" {
			t.Fatalf("%s = %v", path, md)
		}
	}
	p.expect(p.do("GET", "/.well-known/oauth-authorization-server/other", nil, nil), 404, "another issuer's metadata")

	// An upstream verifies a session JWT offline with the published key.
	a.admin()
	session := a.login("root", "rootpassword")
	var set struct {
		Keys []struct{ Kty, Crv, X, Kid, Alg, Use string } `json:"keys"`
	}
	a.expect(a.do("GET", "/.well-known/jwks.json", nil, nil), 200, "jwks").json(t, &set)
	keys := map[string]ed25519.PublicKey{}
	for _, k := range set.Keys {
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if err != nil || k.Kty != "OKP" || k.Crv != "Ed25519" || k.Alg != "EdDSA" || k.Use != "sig" || len(x) != ed25519.PublicKeySize {
			t.Fatalf("jwk %+v", k)
		}
		keys[k.Kid] = ed25519.PublicKey(x)
	}
	parsed, err := jwt.Parse(session, func(tk *jwt.Token) (any, error) {
		k, ok := keys[tk.Header["kid"].(string)]
		if !ok {
			return nil, errors.New("unknown kid")
		}
		return k, nil
	}, jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithIssuer("portcullis"))
	if err != nil || !parsed.Valid {
		t.Fatalf("session JWT does not verify with the JWKS: %v", err)
	}
	forged := session[:len(session)-4] + "AAAA"
	if _, err := jwt.Parse(forged, func(tk *jwt.Token) (any, error) { return keys[tk.Header["kid"].(string)], nil }, jwt.WithValidMethods([]string{"EdDSA"})); err == nil {
		t.Fatal("a tampered JWT verified")
	}

	// Rotation: admins only; the new key signs from now on, is published at
	// once, and sessions signed with the old one keep working.
	a.expect(a.do("POST", "/auth/keys/rotate", nil, nil), 401, "rotate without a token")
	bearer := map[string]string{"Authorization": "Bearer " + session}
	var rotated struct {
		Kid string `json:"kid"`
	}
	a.expect(a.do("POST", "/auth/keys/rotate", nil, bearer), 200, "rotate").json(t, &rotated)
	if _, old := keys[rotated.Kid]; rotated.Kid == "" || old {
		t.Fatalf("rotation answered kid %q (known before: %v)", rotated.Kid, keys)
	}
	a.expect(a.do("GET", "/users/me", nil, bearer), 200, "a session signed with the retired key")
	a.expect(a.do("GET", "/.well-known/jwks.json", nil, nil), 200, "jwks after rotation").json(t, &set)
	published := map[string]bool{}
	for _, k := range set.Keys {
		published[k.Kid] = true
	}
	if !published[rotated.Kid] || !published[parsed.Header["kid"].(string)] {
		t.Fatalf("after rotation the JWKS has %v, want the new %s and the retired %s", published, rotated.Kid, parsed.Header["kid"])
	}
	next, _, err := jwt.NewParser().ParseUnverified(a.login("root", "rootpassword"), jwt.MapClaims{})
	if err != nil || next.Header["kid"] != rotated.Kid {
		t.Fatalf("a new session is signed with %v, want %s (%v)", next.Header["kid"], rotated.Kid, err)
	}
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "plain", Password: "plainpassword"}, false); err != nil {
		t.Fatal(err)
	}
	a.expect(a.do("POST", "/auth/keys/rotate", nil, map[string]string{"Authorization": "Bearer " + a.login("plain", "plainpassword")}), 403, "rotate as a plain user")
}

func TestClientRegistry(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	id, secret := a.registerClient(admin, map[string]any{"client_id": "dashboard", "name": "Dashboard", "redirect_uris": []string{"https://dash.example.com/cb"}})
	if id != "dashboard" || len(secret) < 32 {
		t.Fatalf("registered %q with secret %q", id, secret)
	}
	r := a.expect(a.do("GET", "/auth/clients", nil, bearer(admin)), 200, "list")
	if strings.Contains(string(r.body), secret) || strings.Contains(string(r.body), "secret_digest") {
		t.Fatalf("list shows the secret: %s", r.body)
	}
	var list []map[string]any
	r.json(t, &list)
	if len(list) != 1 || list[0]["client_id"] != "dashboard" {
		t.Fatalf("list = %v", list)
	}
	r = a.expect(a.do("GET", "/auth/clients/dashboard", nil, bearer(admin)), 200, "get")
	if strings.Contains(string(r.body), secret) {
		t.Fatal("get shows the secret")
	}
	h := bearer(admin)
	h["Content-Type"] = "application/json"
	a.expect(a.do("POST", "/auth/clients", strings.NewReader(`{"client_id":"dashboard","redirect_uris":["https://x.example/cb"]}`), h), 409, "duplicate id")
	a.expect(a.do("POST", "/auth/clients", strings.NewReader(`{"redirect_uris":["http://evil.example/cb"]}`), h), 400, "plain http redirect")
	a.expect(a.do("POST", "/auth/clients", strings.NewReader(`{"unknown":1}`), h), 400, "unknown field")
	if _, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "mallory", Password: "mallory's password"}, false); err != nil {
		t.Fatal(err)
	}
	m := a.login("mallory", "mallory's password")
	a.expect(a.do("GET", "/auth/clients", nil, bearer(m)), 403, "non-admin list")
	a.expect(a.do("GET", "/auth/clients/dashboard", nil, bearer(m)), 403, "non-admin get")
	mh := bearer(m)
	mh["Content-Type"] = "application/json"
	a.expect(a.do("POST", "/auth/clients", strings.NewReader(`{"redirect_uris":["https://m.example/cb"]}`), mh), 403, "non-admin create")
	a.expect(a.do("GET", "/auth/clients", nil, nil), 401, "anonymous list")
	a.expect(a.do("POST", "/auth/clients", strings.NewReader(`{"redirect_uris":["https://m.example/cb"]}`), map[string]string{"Content-Type": "application/json"}), 401, "anonymous create")
	a.expect(a.do("DELETE", "/auth/clients/dashboard", nil, bearer(m)), 403, "non-admin delete")
	a.expect(a.do("DELETE", "/auth/clients/dashboard", nil, bearer(admin)), 204, "delete")
	a.expect(a.do("GET", "/auth/clients/dashboard", nil, bearer(admin)), 404, "gone")
}

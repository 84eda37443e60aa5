package proxy_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy"
)

// The tests below run a real OpenID provider on loopback: zitadel's op
// package with the in-memory storage and login UI its module ships. The
// wrapper opStorage only adds a groups claim, a code lifetime and, for the
// audience test, a request issued for another client; everything else
// (discovery, JWKS, signing, PKCE, code exchange) is the library's.

const (
	opClientID     = "portcullis"
	opClientSecret = "portcullis-client-secret"
)

// opUsers is the provider's user directory.
type opUsers map[string]*storage.User

func (u opUsers) GetUserByID(id string) *storage.User { return u[id] }
func (u opUsers) GetUserByUsername(name string) *storage.User {
	for _, x := range u {
		if x.Username == name {
			return x
		}
	}
	return nil
}
func (u opUsers) ExampleClientID() string { return "service" }

func newOPUsers() opUsers {
	mk := func(id, name, email string, verified bool) *storage.User {
		return &storage.User{ID: id, Username: name, Password: name + "-password", FirstName: name, LastName: "Test",
			Email: email, EmailVerified: verified, PreferredLanguage: language.English}
	}
	return opUsers{
		"sub-alice": mk("sub-alice", "alice", "alice@example.com", true),
		"sub-bob":   mk("sub-bob", "bob", "bob@other.org", true),
		"sub-carol": mk("sub-carol", "carol", "carol@example.com", false),
		"sub-dave":  mk("sub-dave", "dave", "alice@example.com", true),
	}
}

// testOP is a running provider and the knobs the tests turn.
type testOP struct {
	srv    *httptest.Server
	issuer string

	mu            sync.Mutex
	groups        map[string][]string // by subject
	codeTTL       time.Duration
	codeIssued    map[string]time.Time
	wrongAudience bool
	// smallIDToken keeps email and profile out of the ID token, as some
	// providers do; they are then only at the userinfo endpoint.
	smallIDToken  bool
	tamper        bool
	tokenRequests int
}

func (o *testOP) set(f func(o *testOP)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f(o)
}

type opStorage struct {
	*storage.Storage
	op *testOP
}

// SetUserinfoFromRequest adds the groups claim to the ID token.
func (s *opStorage) SetUserinfoFromRequest(ctx context.Context, ui *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, req, scopes); err != nil {
		return err
	}
	s.op.mu.Lock()
	defer s.op.mu.Unlock()
	ui.AppendClaims("groups", append([]string{}, s.op.groups[req.GetSubject()]...))
	return nil
}

// GetClientByClientID makes the provider put the profile and email claims
// into the ID token, as Keycloak, Dex and Google do.
func (s *opStorage) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	c, err := s.Storage.GetClientByClientID(ctx, id)
	if err != nil {
		return nil, err
	}
	s.op.mu.Lock()
	wrongAud, small := s.op.wrongAudience, s.op.smallIDToken
	s.op.mu.Unlock()
	if wrongAud {
		return anotherApp{claimsInIDToken{c}}, nil
	}
	if small {
		return c, nil
	}
	return claimsInIDToken{c}, nil
}

type claimsInIDToken struct{ op.Client }

func (claimsInIDToken) IDTokenUserinfoClaimsAssertion() bool { return true }

// anotherApp is the client as a provider confused about it would see it:
// the tokens it issues are for another application.
type anotherApp struct{ op.Client }

func (anotherApp) GetID() string { return "another-app" }

func (s *opStorage) SaveAuthCode(ctx context.Context, id, code string) error {
	s.op.set(func(o *testOP) { o.codeIssued[code] = time.Now() })
	return s.Storage.SaveAuthCode(ctx, id, code)
}

// AuthRequestByCode refuses codes older than the provider's code lifetime.
func (s *opStorage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	s.op.mu.Lock()
	issued, ttl, wrongAud := s.op.codeIssued[code], s.op.codeTTL, s.op.wrongAudience
	s.op.mu.Unlock()
	if time.Since(issued) > ttl {
		return nil, oidc.ErrInvalidGrant().WithDescription("code expired")
	}
	req, err := s.Storage.AuthRequestByCode(ctx, code)
	if err != nil || !wrongAud {
		return req, err
	}
	return otherAudience{req}, nil
}

// otherAudience is an authorization issued for another application.
type otherAudience struct{ op.AuthRequest }

func (otherAudience) GetAudience() []string { return []string{"another-app"} }
func (otherAudience) GetClientID() string   { return "another-app" }

// startOP starts the provider; the client's redirect URI is filled in by
// register once Portcullis's address is known.
func startOP(t *testing.T) (*testOP, func(callback string)) {
	t.Helper()
	o := &testOP{groups: map[string][]string{}, codeTTL: time.Minute, codeIssued: map[string]time.Time{}}
	var handler http.Handler = http.NotFoundHandler()
	var hmu sync.RWMutex
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hmu.RLock()
		h := handler
		hmu.RUnlock()
		o.mu.Lock()
		tamper := o.tamper
		if r.URL.Path == "/oauth/token" {
			o.tokenRequests++
		}
		o.mu.Unlock()
		if tamper && r.URL.Path == "/oauth/token" {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			body := tamperIDToken(t, rec.Body.Bytes())
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(rec.Code)
			_, _ = w.Write(body)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(o.srv.Close)
	o.issuer = o.srv.URL
	register := func(callback string) {
		client := storage.WebClient(opClientID, opClientSecret, callback)
		st := &opStorage{Storage: storage.NewStorageWithClients(newOPUsers(), map[string]*storage.Client{opClientID: client}), op: o}
		h := exampleop.SetupServer(o.issuer, st, nil, false)
		hmu.Lock()
		handler = h
		hmu.Unlock()
	}
	return o, register
}

// tamperIDToken rewrites the ID token's subject to another person's,
// keeping the provider's signature: what an attacker between the parties
// would try.
func tamperIDToken(t *testing.T, body []byte) []byte {
	var resp map[string]any
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Errorf("token response: %v", err)
		return body
	}
	idt, _ := resp["id_token"].(string)
	parts := strings.Split(idt, ".")
	if len(parts) != 3 {
		t.Errorf("no ID token in %s", body)
		return body
	}
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	payload = []byte(strings.Replace(string(payload), `"sub":"sub-bob"`, `"sub":"sub-alice"`, 1))
	parts[1] = base64.RawURLEncoding.EncodeToString(payload)
	resp["id_token"] = strings.Join(parts, ".")
	out, _ := json.Marshal(resp)
	return out
}

// ssoEnv is Portcullis with one provider, and the provider.
type ssoEnv struct {
	*api
	op   *testOP
	logs *lockedLog
}

// lockedLog collects Portcullis's log for the tests to read.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newSSO(t *testing.T, p proxy.OIDCProvider, cfg proxy.Config) *ssoEnv {
	t.Helper()
	o, register := startOP(t)
	p.ID, p.Issuer, p.ClientID, p.ClientSecret = "testop", o.issuer, opClientID, opClientSecret
	if p.Name == "" {
		p.Name = "Test OP"
	}
	cfg.OIDCProviders = []proxy.OIDCProvider{p}
	logs := &lockedLog{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	a := newAPI(t, cfg)
	register(a.url + "/auth/oauth/callback")
	return &ssoEnv{api: a, op: o, logs: logs}
}

// browserless is an http.Client with a cookie jar that stops at
// Portcullis's callback, so that the test can look at it.
func browserless(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Path == "/auth/oauth/callback" {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

func noFollow(c *http.Client) *http.Client {
	c2 := *c
	c2.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c2
}

// signInAtOP starts the sign-in at Portcullis, signs in at the provider's
// login page and returns the callback URL the provider sends the browser to.
func (e *ssoEnv) signInAtOP(t *testing.T, c *http.Client, user, rd string) string {
	t.Helper()
	start := e.url + "/auth/oauth/login/testop"
	if rd != "" {
		start += "?rd=" + url.QueryEscape(rd)
	}
	resp, err := c.Get(start)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	reqID := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != 200 || reqID == "" {
		t.Fatalf("provider login page: %d at %s: %s", resp.StatusCode, resp.Request.URL, page)
	}
	resp, err = c.PostForm(e.op.issuer+"/login/username", url.Values{"id": {reqID}, "username": {user}, "password": {user + "-password"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cb := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(cb, e.url+"/auth/oauth/callback?") {
		t.Fatalf("provider did not send us back: %d %q", resp.StatusCode, cb)
	}
	return cb
}

// callback follows the provider's redirect to Portcullis.
func callback(t *testing.T, c *http.Client, cb string) (int, string, string) {
	t.Helper()
	resp, err := noFollow(c).Get(cb)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Location"), string(body)
}

// me asks /users/me with the browser's cookies.
func me(t *testing.T, c *http.Client, base string) (int, authz.User) {
	t.Helper()
	resp, err := c.Get(base + "/users/me")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var u authz.User
	if resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(&u); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, u
}

func (e *ssoEnv) userCount(t *testing.T) int {
	t.Helper()
	us, err := e.svc.Users(bg)
	if err != nil {
		t.Fatal(err)
	}
	return len(us)
}

func (e *ssoEnv) grantsOf(t *testing.T, id string) []string {
	t.Helper()
	g, err := e.svc.ListPermissions(bg, "users/"+id, false, false)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

var ssoMapping = map[string][]string{"admins": {"roles/admin"}, "devs": {"roles/dev", "roles/reader"}}

// First sign-in creates the user (no password, default grants plus the
// mapped roles), signs the browser in and lands on the target; the next
// sign-in finds the same user by provider and subject, gives the roles of
// new groups and takes away those of groups left, never a role an admin
// granted by hand.
func TestSSOProvisioningAndGroupRoles(t *testing.T) {
	e := newSSO(t, proxy.OIDCProvider{OpenRegistration: true, RoleMapping: ssoMapping}, proxy.Config{})
	e.op.set(func(o *testOP) { o.groups["sub-alice"] = []string{"admins", "unmapped"} })
	before := e.userCount(t)

	c := browserless(t)
	status, loc, body := callback(t, c, e.signInAtOP(t, c, "alice", "/somewhere"))
	if status != http.StatusSeeOther || loc != "/somewhere" {
		t.Fatalf("callback: %d to %q: %s", status, loc, body)
	}
	code, u := me(t, c, e.url)
	if code != 200 || u.Username != "alice" || u.Email != "alice@example.com" || u.HasPassword {
		t.Fatalf("signed in as %d %+v", code, u)
	}
	if n := e.userCount(t); n != before+1 {
		t.Fatalf("%d users after the first sign-in, want %d", n, before+1)
	}
	g := e.grantsOf(t, u.ID)
	for _, want := range []string{"users/" + u.ID + "#admin", "roles/user", "roles/admin"} {
		if !slices.Contains(g, want) {
			t.Fatalf("grants %v lack %s", g, want)
		}
	}
	if _, err := e.svc.ChangePassword(bg, u.ID, "a new password"); !errors.Is(err, authz.ErrPermissionDenied) {
		t.Fatalf("an SSO user set a password: %v", err)
	}

	// An admin grants a role by hand; alice moves from admins to devs.
	if _, err := e.svc.AddPermission(bg, "users/"+u.ID, "roles/ops"); err != nil {
		t.Fatal(err)
	}
	e.op.set(func(o *testOP) { o.groups["sub-alice"] = []string{"devs"} })
	c2 := browserless(t)
	status, loc, body = callback(t, c2, e.signInAtOP(t, c2, "alice", ""))
	if status != http.StatusSeeOther || loc != "/auth/account" {
		t.Fatalf("second callback: %d to %q: %s", status, loc, body)
	}
	if _, u2 := me(t, c2, e.url); u2.ID != u.ID {
		t.Fatalf("second sign-in is user %q, want %q", u2.ID, u.ID)
	}
	g = e.grantsOf(t, u.ID)
	slices.Sort(g)
	want := []string{"roles/dev", "roles/ops", "roles/reader", "roles/user", "users/" + u.ID + "#admin"}
	if !slices.Equal(g, want) {
		t.Fatalf("grants after leaving admins for devs: %v, want %v", g, want)
	}
	if n := e.userCount(t); n != before+1 {
		t.Fatalf("the second sign-in created a user: %d users", n)
	}

	// The provider's later sign-in of another person with the same email
	// is not linked to alice by email: refused, nothing created.
	c3 := browserless(t)
	status, _, body = callback(t, c3, e.signInAtOP(t, c3, "dave", ""))
	if status != http.StatusConflict || !strings.Contains(body, "not connected") {
		t.Fatalf("same email, other subject: %d %s", status, body)
	}
	if code, _ := me(t, c3, e.url); code != 401 {
		t.Fatalf("dave got a session: %d", code)
	}
}

// A provider that puts only the subject (and groups) into the ID token:
// the email comes from the userinfo endpoint, and with it the right to an
// account by email domain.
func TestSSOUserInfoFallback(t *testing.T) {
	e := newSSO(t, proxy.OIDCProvider{AllowedEmailDomains: []string{"example.com"}, RoleMapping: ssoMapping}, proxy.Config{})
	e.op.set(func(o *testOP) {
		o.smallIDToken = true
		o.groups["sub-alice"] = []string{"admins"}
	})
	c := browserless(t)
	if status, _, body := callback(t, c, e.signInAtOP(t, c, "alice", "")); status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	code, u := me(t, c, e.url)
	if code != 200 || u.Email != "alice@example.com" || !slices.Contains(e.grantsOf(t, u.ID), "roles/admin") {
		t.Fatalf("user %d %+v", code, u)
	}
}

// Without open registration only verified emails of allowed domains get a
// user; everyone else gets the "no account" page and nothing is created.
// A required group keeps people outside it out.
func TestSSONoAccountAndRequiredGroup(t *testing.T) {
	e := newSSO(t, proxy.OIDCProvider{AllowedEmailDomains: []string{"example.com"}, RequiredGroups: []string{"staff"}}, proxy.Config{})
	e.op.set(func(o *testOP) {
		o.groups["sub-alice"] = []string{"staff"}
		o.groups["sub-bob"] = []string{"staff"}
		o.groups["sub-carol"] = []string{"staff"}
	})
	before := e.userCount(t)
	for _, tc := range []struct{ user, why string }{
		{"bob", "email domain not allowed"},
		{"carol", "email not verified"},
	} {
		c := browserless(t)
		status, _, body := callback(t, c, e.signInAtOP(t, c, tc.user, ""))
		if status != http.StatusForbidden || !strings.Contains(body, "no account") {
			t.Fatalf("%s (%s): %d %s", tc.user, tc.why, status, body)
		}
	}
	if n := e.userCount(t); n != before {
		t.Fatalf("refused sign-ins created users: %d, want %d", n, before)
	}
	c := browserless(t)
	if status, _, body := callback(t, c, e.signInAtOP(t, c, "alice", "")); status != http.StatusSeeOther {
		t.Fatalf("alice of an allowed domain: %d %s", status, body)
	}

	e.op.set(func(o *testOP) { o.groups["sub-alice"] = []string{"contractors"} })
	c = browserless(t)
	status, _, body := callback(t, c, e.signInAtOP(t, c, "alice", ""))
	if status != http.StatusForbidden || !strings.Contains(body, "not in a group") {
		t.Fatalf("outside the required group: %d %s", status, body)
	}
	if code, _ := me(t, c, e.url); code != 401 {
		t.Fatalf("signed in outside the required group: %d", code)
	}
}

// Attacks on the callback: each is refused with a page, no session, no user.
func TestSSOCallbackAttacks(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newSSO(t, proxy.OIDCProvider{OpenRegistration: true}, proxy.Config{Registerer: reg})
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		got := ssoCallbackCounts(t, reg)
		want := map[string]float64{"/400": 3, "testop/401": 4, "testop/ok": 1}
		if !maps.Equal(got, want) {
			t.Errorf("portcullis_sso_callbacks_total: %v, want %v", got, want)
		}
	})
	refused := func(t *testing.T, c *http.Client, cb string, status int, text string) {
		t.Helper()
		before := e.userCount(t)
		got, _, body := callback(t, c, cb)
		if got != status || !strings.Contains(body, text) {
			t.Fatalf("callback: %d, want %d with %q: %s", got, status, text, body)
		}
		if code, _ := me(t, c, e.url); code != 401 {
			t.Fatalf("a refused callback signed the browser in: %d", code)
		}
		if n := e.userCount(t); n != before {
			t.Fatalf("a refused callback created a user")
		}
	}

	t.Run("replayed state", func(t *testing.T) {
		c := browserless(t)
		cb := e.signInAtOP(t, c, "alice", "")
		ck := ssoCookieOf(t, c, e.url)
		if status, _, body := callback(t, c, cb); status != http.StatusSeeOther {
			t.Fatalf("first use: %d %s", status, body)
		}
		// The attacker replays the callback with the pending sign-in's cookie.
		c2 := browserless(t)
		u, _ := url.Parse(e.url + "/auth/oauth/callback")
		c2.Jar.SetCookies(u, []*http.Cookie{ck})
		refused(t, c2, cb, http.StatusBadRequest, "already used")
	})
	t.Run("callback in another browser", func(t *testing.T) {
		c := browserless(t)
		cb := e.signInAtOP(t, c, "alice", "")
		refused(t, browserless(t), cb, http.StatusBadRequest, "another browser")
	})
	t.Run("state of another sign-in", func(t *testing.T) {
		// The victim's browser has its own pending sign-in; the attacker
		// makes it load the callback of the attacker's sign-in.
		attacker := browserless(t)
		cb := e.signInAtOP(t, attacker, "bob", "")
		victim := browserless(t)
		resp, err := noFollow(victim).Get(e.url + "/auth/oauth/login/testop")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		refused(t, victim, cb, http.StatusBadRequest, "state mismatch")
	})
	t.Run("expired code", func(t *testing.T) {
		e.op.set(func(o *testOP) { o.codeTTL = time.Nanosecond })
		defer e.op.set(func(o *testOP) { o.codeTTL = time.Minute })
		c := browserless(t)
		refused(t, c, e.signInAtOP(t, c, "carol", ""), http.StatusUnauthorized, "expired")
	})
	t.Run("tampered ID token", func(t *testing.T) {
		e.op.set(func(o *testOP) { o.tamper = true })
		defer e.op.set(func(o *testOP) { o.tamper = false })
		c := browserless(t)
		refused(t, c, e.signInAtOP(t, c, "bob", ""), http.StatusUnauthorized, "ID token was rejected")
		if !strings.Contains(e.logs.String(), "failed to verify signature") {
			t.Fatalf("the log does not say why:\n%s", e.logs)
		}
	})
	t.Run("wrong audience", func(t *testing.T) {
		c := browserless(t)
		cb := e.signInAtOP(t, c, "bob", "")
		// The provider issues the tokens of this code for another client.
		e.op.set(func(o *testOP) { o.wrongAudience = true })
		defer e.op.set(func(o *testOP) { o.wrongAudience = false })
		refused(t, c, cb, http.StatusUnauthorized, "ID token was rejected")
		if !strings.Contains(e.logs.String(), "expected audience") {
			t.Fatalf("the log does not say why:\n%s", e.logs)
		}
	})
	t.Run("provider error", func(t *testing.T) {
		c := browserless(t)
		cb := e.signInAtOP(t, c, "bob", "")
		u, _ := url.Parse(cb)
		q := u.Query()
		q.Del("code")
		q.Set("error", "access_denied")
		u.RawQuery = q.Encode()
		refused(t, c, u.String(), http.StatusUnauthorized, "did not sign you in")
	})
}

// ssoCallbackCounts reads portcullis_sso_callbacks_total as "provider/result" → count.
func ssoCallbackCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "portcullis_sso_callbacks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[labels["provider"]+"/"+labels["result"]] = m.GetCounter().GetValue()
		}
	}
	return out
}

func ssoCookieOf(t *testing.T, c *http.Client, base string) *http.Cookie {
	t.Helper()
	u, _ := url.Parse(base + "/auth/oauth/callback")
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == "portcullis_sso" {
			return &http.Cookie{Name: ck.Name, Value: ck.Value}
		}
	}
	t.Fatal("no portcullis_sso cookie after starting a sign-in")
	return nil
}

// A provider that is down gives a clear page at the start and at the
// callback; nothing is half-created.
func TestSSOProviderDown(t *testing.T) {
	e := newSSO(t, proxy.OIDCProvider{OpenRegistration: true}, proxy.Config{})
	c := browserless(t)
	cb := e.signInAtOP(t, c, "alice", "")
	before := e.userCount(t)
	e.op.srv.Close()
	status, _, body := callback(t, c, cb)
	if status != http.StatusBadGateway || !strings.Contains(body, "cannot be reached") {
		t.Fatalf("callback with the provider down: %d %s", status, body)
	}
	if n := e.userCount(t); n != before {
		t.Fatal("a user was created although the provider was down")
	}
	if code, _ := me(t, c, e.url); code != 401 {
		t.Fatalf("signed in with the provider down: %d", code)
	}

	// A Portcullis that never reached the provider cannot start a sign-in.
	dead := newAPI(t, proxy.Config{OIDCProviders: []proxy.OIDCProvider{{ID: "dead", Name: "Dead", Issuer: e.op.issuer, ClientID: "x", ClientSecret: "y"}}})
	r := dead.do("GET", "/auth/oauth/login/dead", nil, nil)
	if r.status != http.StatusBadGateway || !strings.Contains(string(r.body), "cannot be reached") {
		t.Fatalf("start with the provider down: %d %s", r.status, r.body)
	}
	dead.expect(dead.do("GET", "/auth/oauth/login/nope", nil, nil), 404, "an unknown provider")
}

// Starting sign-ins writes to etcd, so one address cannot start them
// without bound.
func TestSSOStartFlood(t *testing.T) {
	e := newSSO(t, proxy.OIDCProvider{}, proxy.Config{})
	c := noFollow(browserless(t))
	for i := range 40 {
		resp, err := c.Get(e.url + "/auth/oauth/login/testop")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			if i < 30 || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("refused at start %d (Retry-After %q)", i, resp.Header.Get("Retry-After"))
			}
			return
		}
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("start %d: %d", i, resp.StatusCode)
		}
	}
	t.Fatal("40 starts in a row were all accepted")
}

// GET /auth/oauth/enabled answers "1" or "0" as contaxy does.
func TestSSOEnabled(t *testing.T) {
	on := newSSO(t, proxy.OIDCProvider{}, proxy.Config{})
	if r := on.do("GET", "/auth/oauth/enabled", nil, nil); r.status != 200 || string(r.body) != "1" {
		t.Fatalf("with a provider: %d %q", r.status, r.body)
	}
	off := newAPI(t, proxy.Config{})
	if r := off.do("GET", "/auth/oauth/enabled", nil, nil); r.status != 200 || string(r.body) != "0" {
		t.Fatalf("without: %d %q", r.status, r.body)
	}
}

// With the password form switched off the login page goes straight to the
// only provider and POST /auth/login is refused; logout ends the session
// and offers the provider's logout (RP-initiated).
func TestSSOPasswordOffAndLogout(t *testing.T) {
	e := newSSO(t, proxy.OIDCProvider{OpenRegistration: true}, proxy.Config{DisablePasswordLogin: true})
	resp, err := noFollow(browserless(t)).Get(e.url + "/auth/login-page?rd=/app")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/auth/oauth/login/testop?rd=%2Fapp" {
		t.Fatalf("login page: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	e.expect(e.do("POST", "/auth/login", strings.NewReader("username=a&password=b"), formCT), 403, "password sign-in when switched off")

	c := browserless(t)
	if status, _, body := callback(t, c, e.signInAtOP(t, c, "alice", "")); status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	resp, err = noFollow(c).Get(e.url + "/auth/logout")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	end, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(end.String(), e.op.issuer+"/") ||
		end.Query().Get("client_id") != opClientID || end.Query().Get("post_logout_redirect_uri") != e.url+"/auth/login-page?logged_out=1" {
		t.Fatalf("logout: %d to %s", resp.StatusCode, end)
	}
	if code, _ := me(t, c, e.url); code != 401 {
		t.Fatalf("still signed in after logout: %d", code)
	}
}

// A person signs in through the provider's own login page in Chromium.
func TestBrowserSSOSignIn(t *testing.T) {
	e := newSSO(t, proxy.OIDCProvider{OpenRegistration: true, RoleMapping: ssoMapping}, proxy.Config{})
	e.op.set(func(o *testOP) { o.groups["sub-alice"] = []string{"devs"} })
	ctx := chromium(t)
	do := browserSteps(t, ctx)
	do("open the account page", chromedp.Navigate(e.url+"/auth/account"), chromedp.WaitVisible(css("#sso-testop")))
	do("choose the provider", chromedp.Click(css("#sso-testop")), chromedp.WaitVisible(css("#username")))
	if loc := inBrowser(t, ctx, "location", chromedp.Location()); !strings.HasPrefix(loc, e.op.issuer+"/login/") {
		t.Fatalf("not at the provider's login page: %s", loc)
	}
	do("sign in at the provider",
		chromedp.SendKeys(css("#username"), "alice"),
		chromedp.SendKeys(css("#password"), "alice-password"),
		chromedp.Click(css("button[type=submit]")),
		chromedp.WaitVisible(css("#create-token")))
	who := inBrowser(t, ctx, "who", chromedp.Text(css("#who")))
	if loc := inBrowser(t, ctx, "location", chromedp.Location()); who != "alice" || !strings.HasSuffix(loc, "/auth/account") {
		t.Fatalf("signed in as %q at %s", who, loc)
	}
	us, err := e.svc.Users(bg)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(us, func(u authz.User) bool { return u.Username == "alice" })
	if i < 0 || us[i].HasPassword || !slices.Contains(e.grantsOf(t, us[i].ID), "roles/dev") {
		t.Fatalf("provisioned user: %+v", us)
	}
}

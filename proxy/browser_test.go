package proxy_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/oauth2"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy"
)

// SkipBrowserEnv, set to 1, lets the browser tests skip when Chromium is
// missing; otherwise a missing browser fails them, so that CI cannot go
// green without running them.
const SkipBrowserEnv = "PORTCULLIS_SKIP_BROWSER"

// chromium starts Debian's headless Chromium (installed by
// scripts/install-test-deps.sh) with a fresh profile and everything that
// would reach the network switched off, and returns a browser context.
func chromium(t *testing.T) context.Context {
	t.Helper()
	path := os.Getenv("PORTCULLIS_CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(path); err != nil {
		if os.Getenv(SkipBrowserEnv) == "1" {
			t.Skipf("no Chromium at %s and %s=1", path, SkipBrowserEnv)
		}
		t.Fatalf("no Chromium at %s: run scripts/install-test-deps.sh (or set %s=1 to skip browser tests)", path, SkipBrowserEnv)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("safebrowsing-disable-auto-update", true),
		chromedp.WindowSize(1280, 900),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(bcancel)
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return bctx
}

// inBrowser runs one action that returns a value, failing t with the page's
// HTML when it fails.
func inBrowser[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
		t.Fatalf("%s: %v\npage: %s", what, err, html)
	}
	return v
}

// browserSteps returns a function that runs steps in ctx's tab, failing
// the test with the page's HTML when one does not complete.
func browserSteps(t *testing.T, ctx context.Context) func(what string, steps ...chromedp.Action[chromedp.Void]) {
	return func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		inBrowser(t, ctx, what, chromedp.Steps(steps...))
	}
}

// css selects elements by a CSS selector.
func css(selector string) chromedp.CSS { return chromedp.CSS(selector) }

// A person signs in, creates an API token on the account page, uses it
// against the API, revokes it and signs out, in a real browser.
func TestBrowserSignInTokenLifecycleSignOut(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	u, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "alice", Email: "alice@example.com", Password: "alice's password"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.AddPermission(bg, "users/"+u.ID, "projects/demo#read"); err != nil {
		t.Fatal(err)
	}
	ctx := chromium(t)
	do := browserSteps(t, ctx)

	// The account page sends a stranger to sign in, and back after.
	do("open the account page", chromedp.Navigate(a.url+"/auth/account"), chromedp.WaitVisible(css("#login-form")))
	if loc := inBrowser(t, ctx, "location", chromedp.Location()); !strings.Contains(loc, "/auth/login-page?rd=") {
		t.Fatalf("not sent to the login page: %s", loc)
	}
	do("sign in with a wrong password",
		chromedp.SendKeys(css("#username"), "alice"),
		chromedp.SendKeys(css("#password"), "not my password"),
		chromedp.Click(css("#sign-in")),
		chromedp.WaitVisible(css("#error")))
	if e := inBrowser(t, ctx, "error text", chromedp.Text(css("#error"))); !strings.Contains(e, "Invalid username or password") {
		t.Fatalf("error shown: %q", e)
	}
	do("sign in",
		chromedp.SetValue(css("#username"), "alice@example.com"),
		chromedp.SendKeys(css("#password"), "alice's password"),
		chromedp.Click(css("#sign-in")),
		chromedp.WaitVisible(css("#create-token")))
	who := inBrowser(t, ctx, "who", chromedp.Text(css("#who")))
	if loc := inBrowser(t, ctx, "location", chromedp.Location()); who != "alice" || !strings.HasSuffix(loc, "/auth/account") {
		t.Fatalf("signed in as %q at %s", who, loc)
	}

	// Create a token: shown once, with a copy button.
	do("create a token",
		chromedp.SendKeys(css("#description"), "e2e token"),
		chromedp.SendKeys(css("#scope"), "projects/demo#read"),
		chromedp.Click(css("#create")),
		chromedp.WaitVisible(css("#new-token")))
	token := inBrowser(t, ctx, "new token", chromedp.Value(css("#new-token")))
	if label := inBrowser(t, ctx, "copy button", chromedp.Text(css("button.copy"))); !strings.HasPrefix(token, "pct_") || label != "Copy" {
		t.Fatalf("new token %q, copy button %q", token, label)
	}
	do("the copy button works with JavaScript",
		chromedp.Click(css("button.copy")),
		chromedp.WaitVisible(chromedp.Search(`//button[contains(., "Copied")]`)))

	// Use it against the API.
	a.expect(a.do("POST", "/auth/tokens/verify?permission=projects/demo%23read", nil, bearer(token)), 200, "the new token works")
	a.expect(a.do("POST", "/auth/tokens/verify?permission=projects/demo%23write", nil, bearer(token)), 403, "within its scope")

	// It is listed (without its secret) and can be revoked.
	do("reload the account page", chromedp.Navigate(a.url+"/auth/account"), chromedp.WaitVisible(css("#tokens")))
	if table := inBrowser(t, ctx, "token table", chromedp.OuterHTML(css("#tokens"))); !strings.Contains(table, "e2e token") || strings.Contains(table, token) {
		t.Fatalf("token table: %s", table)
	}
	do("revoke it",
		chromedp.Click(chromedp.Search(`//tr[td[contains(., "e2e token")]]//button`)),
		chromedp.WaitVisible(css("#notice")))
	notice := inBrowser(t, ctx, "notice", chromedp.Text(css("#notice")))
	if table := inBrowser(t, ctx, "token table", chromedp.OuterHTML(css("#tokens"))); !strings.Contains(notice, "revoked") || strings.Contains(table, "e2e token") {
		t.Fatalf("after revoke: notice %q, table %s", notice, table)
	}
	a.expect(a.do("POST", "/auth/tokens/verify", nil, bearer(token)), 401, "the revoked token")

	// Sign out: the login token is revoked, the cookies are gone.
	do("sign out", chromedp.Click(css("#logout")), chromedp.WaitVisible(css("#login-form")))
	if n := inBrowser(t, ctx, "notice", chromedp.Text(css("#notice"))); !strings.Contains(n, "signed out") {
		t.Fatalf("after sign-out: %q", n)
	}
	do("the account page wants a sign-in again", chromedp.Navigate(a.url+"/auth/account"), chromedp.WaitVisible(css("#login-form")))
	toks, err := a.svc.ListAPITokens(bg, "users/"+u.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks {
		if tk.Purpose == authz.PurposeLogin {
			t.Fatalf("a login token survived sign-out: %+v", tk)
		}
	}
}

// A person lets a third-party application act for them: the application
// (golang.org/x/oauth2, PKCE S256) sends the browser to the authorization
// endpoint, the person signs in, reads the consent page and allows it;
// the browser arrives at the application's redirect_uri with a code and
// the state, and the code buys a token bounded by the asked scope. A
// second request is denied on the consent page.
func TestBrowserAuthorizationCodeWithConsent(t *testing.T) {
	a := newAPI(t, proxy.Config{})
	admin := a.admin()
	u, _, err := a.svc.CreateUser(bg, authz.UserInput{Username: "alice", Password: "alice's password"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.AddPermission(bg, "users/"+u.ID, "projects/demo#write"); err != nil {
		t.Fatal(err)
	}
	// The application's callback: it keeps what the browser brought.
	arrived := make(chan url.Values, 2)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/callback" {
			arrived <- r.URL.Query()
		}
		_, _ = w.Write([]byte("<!doctype html><title>back at the app</title><p id=app>back at the app</p>"))
	}))
	t.Cleanup(app.Close)
	id, secret := a.registerClient(admin, map[string]any{"name": "Demo Dashboard", "redirect_uris": []string{app.URL + "/callback"},
		"scopes": []string{"projects/demo#read"}})
	cfg := oauth2.Config{ClientID: id, ClientSecret: secret, RedirectURL: app.URL + "/callback", Scopes: []string{"projects/demo#read"},
		Endpoint: oauth2.Endpoint{AuthURL: a.url + "/auth/oauth/authorize", TokenURL: a.url + "/auth/oauth/token", AuthStyle: oauth2.AuthStyleInHeader}}
	verifier := oauth2.GenerateVerifier()

	ctx := chromium(t)
	do := browserSteps(t, ctx)
	do("start the authorization", chromedp.Navigate(cfg.AuthCodeURL("state-1", oauth2.S256ChallengeOption(verifier))),
		chromedp.WaitVisible(css("#login-form")))
	do("sign in",
		chromedp.SendKeys(css("#username"), "alice"),
		chromedp.SendKeys(css("#password"), "alice's password"),
		chromedp.Click(css("#sign-in")),
		chromedp.WaitVisible(css("#allow")))
	page := inBrowser(t, ctx, "consent page", chromedp.OuterHTML(css("main")))
	if !strings.Contains(page, "Demo Dashboard") || !strings.Contains(page, "projects/demo#read") || !strings.Contains(page, app.URL) {
		t.Fatalf("the consent page does not say who asks for what and where it goes: %s", page)
	}
	do("allow", chromedp.Click(css("#allow")), chromedp.WaitVisible(css("#app")))
	var q url.Values
	select {
	case q = <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the browser did not come back to the application")
	}
	if q.Get("state") != "state-1" || q.Get("code") == "" || q.Get("iss") != a.url || q.Has("error") {
		t.Fatalf("authorization response %v", q)
	}
	tok, err := cfg.Exchange(context.Background(), q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	a.expect(a.do("POST", "/auth/tokens/verify?permission=projects/demo%23read", nil, bearer(tok.AccessToken)), 200, "the application's token")
	a.expect(a.do("POST", "/auth/tokens/verify?permission=projects/demo%23write", nil, bearer(tok.AccessToken)), 403, "bounded by the scope it asked for")

	// Signed in already: straight to the consent page, and a denial goes
	// back to the application as access_denied.
	do("ask again and deny", chromedp.Navigate(cfg.AuthCodeURL("state-2", oauth2.S256ChallengeOption(verifier))),
		chromedp.WaitVisible(css("#deny")), chromedp.Click(css("#deny")), chromedp.WaitVisible(css("#app")))
	select {
	case q = <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the browser did not come back to the application after the denial")
	}
	if q.Get("error") != "access_denied" || q.Get("state") != "state-2" || q.Has("code") {
		t.Fatalf("denied authorization response %v", q)
	}
}

package proxy

import (
	"bytes"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

//go:embed web/templates/*.html web/static/*
var webFS embed.FS

// pages holds one parsed template set per page, each with the layout.
var pages = func() map[string]*template.Template {
	out := map[string]*template.Template{}
	for _, name := range []string{"login", "consent", "account", "message"} {
		out[name] = template.Must(template.ParseFS(webFS, "web/templates/layout.html", "web/templates/"+name+".html"))
	}
	return out
}()

// pageData is what every page template may use.
type pageData struct {
	Title  string
	Prefix string
	CSRF   string
	Error  string
	Notice string
	User   *authz.User

	// login
	Username      string
	RD            string
	Providers     []providerButton
	PasswordLogin bool
	// consent
	Client       authz.Client
	Scopes       []string
	Params       map[string]string
	RedirectHost string
	// account
	Tokens   []tokenRow
	NewToken string
	// message
	Message       string
	Link          string
	LinkText      string
	ConfirmLogout bool
}

type tokenRow struct {
	authz.TokenInfo
	Created, Expires string
	Current          bool
}

// pageError makes the error handler answer with an HTML page instead of
// JSON: the caller is a person in a browser.
type pageError struct {
	status int
	msg    string
	err    error
}

func (e *pageError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

func (e *pageError) Unwrap() error { return e.err }

// page wraps a page handler so that every error it returns is shown as a
// page, with the status and message the API would have used.
func (s *Server) page(h echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := h(c)
		if err == nil {
			return nil
		}
		var pe *pageError
		if errors.As(err, &pe) {
			return err
		}
		status, p := s.classify(err)
		msg := p.Message
		if p.Explanation != "" && status < 500 {
			msg += ": " + p.Explanation
		}
		return &pageError{status: status, msg: msg, err: err}
	}
}

// renderPage writes a page with the headers every page gets: no caching,
// no framing, no referrer to other sites, a CSP that allows only our own files.
func (s *Server) renderPage(c echo.Context, status int, name string, d *pageData) error {
	d.Prefix = s.cfg.APIPrefix
	if d.CSRF == "" {
		d.CSRF = s.csrfToken(c)
	}
	var buf bytes.Buffer
	if err := pages[name].ExecuteTemplate(&buf, "layout", d); err != nil {
		return err
	}
	setPageHeaders(c.Response().Header())
	return c.HTMLBlob(status, buf.Bytes())
}

func setPageHeaders(h http.Header) {
	noStore(h)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// Not no-referrer: Chromium then sends "Origin: null" with our own
	// forms. same-origin still keeps URLs from other sites.
	h.Set("Referrer-Policy", "same-origin")
	// No form-action: the consent form's answer redirects to the client.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'")
}

// noStore keeps an answer that carries a token or code out of every cache
// (RFC 6749 §5.1).
func noStore(h http.Header) {
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
}

// renderPageError is the error handler's path for *pageError.
func (s *Server) renderPageError(c echo.Context, pe *pageError) {
	d := &pageData{Title: http.StatusText(pe.status), Error: pe.msg}
	if pe.status == http.StatusUnauthorized {
		d.Link, d.LinkText = s.path("/auth/login-page"), "Sign in"
	}
	if err := s.renderPage(c, pe.status, "message", d); err != nil {
		s.log.Error("render error page", "err", err)
	}
}

// static serves the embedded stylesheet and script.
func (s *Server) static(c echo.Context) error {
	name := c.Param("file")
	b, err := fs.ReadFile(webFS, "web/static/"+name)
	if err != nil || strings.ContainsAny(name, "/\\") {
		return echo.ErrNotFound
	}
	ct := "text/css; charset=utf-8"
	if strings.HasSuffix(name, ".js") {
		ct = "text/javascript; charset=utf-8"
	}
	h := c.Response().Header()
	h.Set("Cache-Control", "public, max-age=3600")
	h.Set("X-Content-Type-Options", "nosniff")
	return c.Blob(http.StatusOK, ct, b)
}

// signedInUser returns the caller when it is a signed-in user, nil when
// there is no valid credential. Other errors (store down) are returned.
func (s *Server) signedInUser(c echo.Context) (*authz.Access, *authz.User, error) {
	acc, err := s.caller(c)
	if errors.Is(err, authz.ErrUnauthenticated) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	id, ok := strings.CutPrefix(acc.Subject, "users/")
	if !ok {
		return nil, nil, nil
	}
	u, err := s.svc.User(c.Request().Context(), id)
	if errors.Is(err, authz.ErrNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return &acc, &u, nil
}

// returnTarget validates a post-login target: a same-origin path or a URL
// on an allowed host; anything else yields "".
func (s *Server) returnTarget(rd string) string {
	if rd == "" || len(rd) > 4096 || !s.redirectAllowed(rd) {
		return ""
	}
	return rd
}

// loginRedirect sends a browser to the login page, coming back to rd.
func (s *Server) loginRedirect(c echo.Context, rd string) error {
	target := s.path("/auth/login-page")
	if rd != "" {
		target += "?rd=" + url.QueryEscape(rd)
	}
	return c.Redirect(http.StatusSeeOther, target)
}

// loginPage is GET /auth/login-page: the sign-in form. A signed-in
// browser is sent on to its target straight away.
func (s *Server) loginPage(c echo.Context) error {
	rd := s.returnTarget(c.QueryParam("rd"))
	acc, u, err := s.signedInUser(c)
	if err != nil {
		return err
	}
	if acc != nil && rd != "" {
		return c.Redirect(http.StatusSeeOther, rd)
	}
	loggedOut := c.QueryParam("logged_out") != ""
	// With only one way in, go there straight away, as contaxy does.
	if s.cfg.DisablePasswordLogin && len(s.cfg.OIDCProviders) == 1 && acc == nil && !loggedOut {
		return c.Redirect(http.StatusSeeOther, s.providerButtons(rd)[0].URL)
	}
	d := s.loginData(rd)
	d.User = u
	if loggedOut {
		d.Notice = "You have been signed out."
	}
	return s.renderPage(c, http.StatusOK, "login", d)
}

// loginData is the sign-in page's data: the password form unless it is
// switched off, and a button per external provider.
func (s *Server) loginData(rd string) *pageData {
	return &pageData{Title: "Sign in", RD: rd, Providers: s.providerButtons(rd), PasswordLogin: !s.cfg.DisablePasswordLogin}
}

// loginGet is GET /auth/login: contaxy links to it; the form lives on the
// login page (credentials never travel in a URL).
func (s *Server) loginGet(c echo.Context) error {
	return s.loginRedirect(c, s.returnTarget(c.QueryParam("rd")))
}

// login is POST /auth/login: checks the password (throttled per account
// and per client address), sets the session cookies and answers 303 (never
// 307, which would repeat the POST with the password at the target).
func (s *Server) login(c echo.Context) error {
	r := c.Request()
	if err := r.ParseForm(); err != nil {
		return badRequest("malformed form body")
	}
	if err := s.checkForm(c); err != nil {
		return err
	}
	if s.cfg.DisablePasswordLogin {
		return &problemError{status: http.StatusForbidden, msg: "password sign-in is switched off; sign in through an identity provider"}
	}
	rd := s.returnTarget(r.PostFormValue("rd"))
	username := r.PostFormValue("username")
	d := s.loginData(rd)
	d.Username = username
	if wait := s.loginLimiter.reserve(c.RealIP()); wait > 0 {
		s.metrics.throttled[throttleAddress].Inc()
		c.Response().Header().Set("Retry-After", retryAfter(wait))
		d.Error = "Too many failed sign-in attempts from your address. Try again later."
		return s.renderPage(c, http.StatusTooManyRequests, "login", d)
	}
	resp, err := s.svc.RequestToken(r.Context(), authz.TokenRequest{
		GrantType: authz.GrantPassword, Username: username, Password: r.PostFormValue("password"),
		LoginToken: true, NoRefresh: true,
	})
	var oe *authz.OAuthError
	var te *authz.ThrottledError
	if !errors.As(err, &oe) {
		s.loginLimiter.refund(c.RealIP()) // not a wrong guess
	}
	switch {
	case errors.As(err, &te):
		s.metrics.throttled[throttleAccount].Inc()
		c.Response().Header().Set("Retry-After", retryAfter(te.RetryAfter))
		d.Error = "Too many failed sign-in attempts for this account. Try again later."
		return s.renderPage(c, http.StatusTooManyRequests, "login", d)
	case oe != nil:
		d.Error = "Invalid username or password."
		return s.renderPage(c, http.StatusUnauthorized, "login", d)
	case err != nil:
		return err
	}
	setRevision(c, resp.Revision)
	s.setSessionCookies(c, resp.AccessToken, resp.UserID, int(resp.ExpiresIn))
	if rd == "" {
		rd = s.path("/auth/account")
	}
	return c.Redirect(http.StatusSeeOther, rd)
}

// logout is GET and POST /auth/logout: the presented login token is
// revoked server-side and the cookies cleared. A GET that a browser marks as
// cross-site only gets a confirmation form, so that another site cannot
// sign people out with an image tag.
func (s *Server) logout(c echo.Context) error {
	r := c.Request()
	rd := s.returnTarget(c.QueryParam("rd"))
	if r.Method == http.MethodPost {
		if err := r.ParseForm(); err != nil {
			return badRequest("malformed form body")
		}
		if err := s.checkForm(c); err != nil {
			return err
		}
		rd = s.returnTarget(r.PostFormValue("rd"))
	} else if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return s.renderPage(c, http.StatusOK, "message", &pageData{Title: "Sign out", ConfirmLogout: true, RD: rd})
	}
	tok, err := s.credential(r)
	if err != nil {
		return err
	}
	if tok != "" {
		// Only a sign-in ends here, with the refresh token it came with:
		// an API token that rode the cookie or the header (contaxy allows
		// both) is left alone, for the scripts that use it.
		rev, _, err := s.svc.SignOut(r.Context(), tok)
		if err != nil {
			return err
		}
		setRevision(c, rev)
	}
	s.clearSessionCookies(c)
	if rd == "" {
		rd = s.path("/auth/login-page") + "?logged_out=1"
		if end := s.ssoLogoutTarget(c, rd); end != "" {
			rd = end
		}
	}
	return c.Redirect(http.StatusSeeOther, rd)
}

// account is GET /auth/account: the signed-in user's tokens.
func (s *Server) account(c echo.Context) error {
	acc, u, err := s.signedInUser(c)
	if err != nil {
		return err
	}
	if acc == nil {
		return s.loginRedirect(c, s.path("/auth/account"))
	}
	d := &pageData{Title: "Your account", User: u}
	switch c.QueryParam("notice") {
	case "revoked":
		d.Notice = "The token was revoked."
	}
	return s.renderAccount(c, http.StatusOK, acc, d)
}

func (s *Server) renderAccount(c echo.Context, status int, acc *authz.Access, d *pageData) error {
	toks, err := s.svc.ListAPITokens(c.Request().Context(), acc.Subject)
	if err != nil {
		return err
	}
	for _, t := range toks {
		row := tokenRow{TokenInfo: t, Created: t.CreatedAt.UTC().Format("2006-01-02 15:04 MST"), Current: t.ID == acc.Token.ID}
		if t.ExpiresAt != nil {
			row.Expires = t.ExpiresAt.UTC().Format("2006-01-02 15:04 MST")
		}
		d.Tokens = append(d.Tokens, row)
	}
	return s.renderPage(c, status, "account", d)
}

// accountForm reads and checks a form posted on the account page. With
// no signed-in user it answers the redirect to the login page itself and
// returns a nil access.
func (s *Server) accountForm(c echo.Context) (*authz.Access, *authz.User, error) {
	if err := c.Request().ParseForm(); err != nil {
		return nil, nil, badRequest("malformed form body")
	}
	if err := s.checkForm(c); err != nil {
		return nil, nil, err
	}
	acc, u, err := s.signedInUser(c)
	if err != nil {
		return nil, nil, err
	}
	if acc == nil {
		return nil, nil, s.loginRedirect(c, s.path("/auth/account"))
	}
	return acc, u, nil
}

// createAccountToken is POST /auth/account/tokens: a new API token of the
// signed-in user, shown once in the answer (never stored in clear).
func (s *Server) createAccountToken(c echo.Context) error {
	r := c.Request()
	acc, u, err := s.accountForm(c)
	if acc == nil || err != nil {
		return err
	}
	d := &pageData{Title: "Your account", User: u}
	desc := strings.TrimSpace(r.PostFormValue("description"))
	if desc == "" {
		desc = "created on the account page " + time.Now().UTC().Format("2006-01-02 15:04 MST")
	}
	tok, info, rev, err := s.svc.CreateToken(r.Context(), *acc, authz.TokenSpec{
		Scopes: strings.Fields(r.PostFormValue("scope")), Type: authz.TokenTypeAPI,
		Purpose: authz.PurposeUserAPI, Description: desc,
	})
	if err != nil {
		if errors.Is(err, authz.ErrInvalid) || errors.Is(err, authz.ErrPermissionDenied) {
			_, p := s.classify(err)
			d.Error = "The token was not created: " + strings.TrimSpace(p.Message+" "+p.Explanation)
			return s.renderAccount(c, http.StatusBadRequest, acc, d)
		}
		return err
	}
	s.auditChange(c, acc.Subject, AuditTokenCreate, rev, append(tokenAttrs(info), slog.String("via", "account-page"))...)
	setRevision(c, rev)
	d.NewToken = tok
	d.Notice = "Token created."
	return s.renderAccount(c, http.StatusOK, acc, d)
}

// revokeAccountToken is POST /auth/account/tokens/{id}/revoke.
func (s *Server) revokeAccountToken(c echo.Context) error {
	r := c.Request()
	acc, _, err := s.accountForm(c)
	if acc == nil || err != nil {
		return err
	}
	rev, err := s.svc.RevokeTokenByID(r.Context(), acc, c.Param("id"))
	if err != nil {
		return err
	}
	s.auditChange(c, acc.Subject, AuditTokenRevoke, rev, slog.String("token_id", c.Param("id")), slog.String("via", "account-page"))
	setRevision(c, rev)
	return c.Redirect(http.StatusSeeOther, s.path("/auth/account")+"?notice=revoked")
}

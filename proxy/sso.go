package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"

	"github.com/portcullis/portcullis/authz"
)

// OIDCProvider configures sign-in through one external OpenID Connect
// provider (Keycloak, Dex, Google, …).
type OIDCProvider struct {
	// ID names the provider in URLs and in the stored links: lower-case
	// letters, digits, '-' and '_'. Changing it orphans every link.
	ID string
	// Name is shown on the sign-in button; default ID.
	Name string
	// Issuer is the provider's issuer URL; discovery reads
	// <Issuer>/.well-known/openid-configuration.
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes requested; "openid" is always added. Default openid, email, profile.
	Scopes []string
	// GroupsClaim names the ID token claim listing the person's groups
	// (a list of strings, or one string). Default "groups".
	GroupsClaim string
	// RoleMapping maps a group to the role grants ("roles/…") its members
	// get. Re-evaluated at each sign-in.
	RoleMapping map[string][]string
	// RequiredGroups, when not empty, refuses sign-in to anyone in none of them.
	RequiredGroups []string
	// AllowedEmailDomains lets people whose verified email is in one of
	// these domains get a user on first sign-in even without OpenRegistration.
	AllowedEmailDomains []string
	// OpenRegistration creates a user for anyone the provider signs in.
	OpenRegistration bool
	// DisableLogout keeps logout local even when the provider supports
	// RP-initiated logout.
	DisableLogout bool
}

// ssoStartLimit bounds the sign-ins one client address may start on a
// replica: a burst of 30, then one a second.
var ssoStartLimit = RateLimit{Rate: 1, Burst: 30}

const (
	// ssoCookie holds the random id of a pending sign-in; the state, nonce
	// and PKCE verifier stay server-side under its digest.
	ssoCookie = "portcullis_sso"
	// ssoProviderCookie remembers which provider signed the browser in, so
	// that logout can offer the provider's logout.
	ssoProviderCookie = "portcullis_sso_provider"
	ssoCallbackPath   = "/auth/oauth/callback"
	ssoTimeout        = 15 * time.Second
)

// ssoProvider is a configured provider with its discovery, done on first
// use and retried until it succeeds, so that a provider that is down at
// start-up does not keep Portcullis from starting.
type ssoProvider struct {
	cfg OIDCProvider

	mu         sync.Mutex
	provider   *oidc.Provider
	endSession string
}

// discover returns the provider's discovered metadata.
func (p *ssoProvider) discover(ctx context.Context) (*oidc.Provider, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.provider != nil {
		return p.provider, nil
	}
	ctx, cancel := context.WithTimeout(ctx, ssoTimeout)
	defer cancel()
	op, err := oidc.NewProvider(ctx, p.cfg.Issuer)
	if err == nil && op.Endpoint().TokenURL == "" {
		err = errors.New("the discovery document names no token endpoint")
	}
	if err != nil {
		return nil, err
	}
	var extra struct {
		EndSession string `json:"end_session_endpoint"`
	}
	if err := op.Claims(&extra); err == nil {
		p.endSession = extra.EndSession
	}
	p.provider = op
	return op, nil
}

func (p *ssoProvider) oauth2Config(op *oidc.Provider, redirectURL string) *oauth2.Config {
	scopes := []string{oidc.ScopeOpenID}
	for _, sc := range p.cfg.Scopes {
		if sc != oidc.ScopeOpenID {
			scopes = append(scopes, sc)
		}
	}
	return &oauth2.Config{ClientID: p.cfg.ClientID, ClientSecret: p.cfg.ClientSecret,
		Endpoint: op.Endpoint(), RedirectURL: redirectURL, Scopes: scopes}
}

// ssoProviders builds the providers from the configuration.
func newSSOProviders(cfgs []OIDCProvider) map[string]*ssoProvider {
	out := make(map[string]*ssoProvider, len(cfgs))
	for _, c := range cfgs {
		if c.Name == "" {
			c.Name = c.ID
		}
		if len(c.Scopes) == 0 {
			c.Scopes = []string{oidc.ScopeOpenID, "email", "profile"}
		}
		if c.GroupsClaim == "" {
			c.GroupsClaim = "groups"
		}
		out[c.ID] = &ssoProvider{cfg: c}
	}
	return out
}

// ValidateOIDCProvider reports every problem of one provider's configuration.
func ValidateOIDCProvider(p OIDCProvider) error {
	var errs []error
	if err := authz.ValidateProviderID(p.ID); err != nil {
		errs = append(errs, err)
	}
	if u, err := url.Parse(p.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		errs = append(errs, fmt.Errorf("issuer %q: want an absolute http(s) URL", p.Issuer))
	}
	if p.ClientID == "" {
		errs = append(errs, errors.New("client_id: required"))
	}
	for group, roles := range p.RoleMapping {
		for _, r := range roles {
			if !strings.HasPrefix(r, "roles/") || len(r) == len("roles/") || strings.ContainsAny(r, "#| ") {
				errs = append(errs, fmt.Errorf("role_mapping %q: %q is not a role (roles/<name>)", group, r))
			}
		}
	}
	for _, d := range p.AllowedEmailDomains {
		if d == "" || strings.ContainsAny(d, "@/ ") {
			errs = append(errs, fmt.Errorf("allowed_email_domains: %q is not a domain", d))
		}
	}
	return errors.Join(errs...)
}

// providerButton is a provider as the sign-in page lists it.
type providerButton struct {
	ID, Name, URL string
}

func (s *Server) providerButtons(rd string) []providerButton {
	out := make([]providerButton, 0, len(s.cfg.OIDCProviders))
	for _, p := range s.cfg.OIDCProviders {
		u := s.path("/auth/oauth/login/" + p.ID)
		if rd != "" {
			u += "?rd=" + url.QueryEscape(rd)
		}
		name := p.Name
		if name == "" {
			name = p.ID
		}
		out = append(out, providerButton{ID: p.ID, Name: name, URL: u})
	}
	return out
}

// oauthEnabled is GET /auth/oauth/enabled: "1" when an external provider
// is configured, else "0", as contaxy answers.
func (s *Server) oauthEnabled(c echo.Context) error {
	v := "0"
	if len(s.sso) > 0 {
		v = "1"
	}
	return c.String(http.StatusOK, v)
}

// ssoError is a page about a failed external sign-in.
func ssoError(status int, msg string, err error) error {
	return &pageError{status: status, msg: msg, err: err}
}

// ssoLogin is GET /auth/oauth/login/{provider}: starts the
// authorization-code flow with PKCE, state and nonce, bound to this
// browser by a short-lived cookie.
func (s *Server) ssoLogin(c echo.Context) error {
	p, ok := s.sso[c.Param("provider")]
	if !ok {
		return ssoError(http.StatusNotFound, "No such sign-in provider.", nil)
	}
	r := c.Request()
	// Each start stores a pending sign-in in etcd: bound how fast one
	// address can make Portcullis write.
	if wait := s.ssoStarts.take(c.RealIP()); wait > 0 {
		c.Response().Header().Set("Retry-After", retryAfter(wait))
		return ssoError(http.StatusTooManyRequests, "Too many sign-ins started from your address; try again shortly.", nil)
	}
	op, err := p.discover(r.Context())
	if err != nil {
		return ssoError(http.StatusBadGateway, "The identity provider "+p.cfg.Name+" cannot be reached; try again later.", err)
	}
	st := authz.ExternalLoginState{
		Provider: p.cfg.ID, State: randomToken(), Nonce: randomToken(), Verifier: oauth2.GenerateVerifier(),
		ReturnTo: s.returnTarget(c.QueryParam("rd")),
	}
	id, err := s.svc.BeginExternalLogin(r.Context(), st)
	if err != nil {
		return err
	}
	c.SetCookie(&http.Cookie{Name: ssoCookie, Value: id, Path: s.path(ssoCallbackPath), HttpOnly: true,
		Secure: s.requestHTTPS(r), SameSite: http.SameSiteLaxMode, MaxAge: int(authz.ExternalLoginTTL / time.Second)})
	target := p.oauth2Config(op, s.baseURL(r)+ssoCallbackPath).AuthCodeURL(st.State,
		oidc.Nonce(st.Nonce), oauth2.S256ChallengeOption(st.Verifier))
	setPageHeaders(c.Response().Header())
	return c.Redirect(http.StatusSeeOther, target)
}

// ssoCallback is GET /auth/oauth/callback: the provider sends the browser
// back with a code. The pending sign-in is taken (once) by the cookie's
// id; the state must match; the code is exchanged with the PKCE verifier;
// the ID token is verified (signature against the provider's keys,
// issuer, audience, expiry) and must carry the nonce. Then the person is
// mapped to a user by provider and subject and signed in like the
// password sign-in does.
func (s *Server) ssoCallback(c echo.Context) (err error) {
	r := c.Request()
	provider := ""
	defer func() { s.countSSOCallback(provider, err) }()
	ck, err := c.Cookie(ssoCookie)
	// Single use, whatever happens next.
	c.SetCookie(&http.Cookie{Name: ssoCookie, Value: "", Path: s.path(ssoCallbackPath), HttpOnly: true,
		Secure: s.requestHTTPS(r), SameSite: http.SameSiteLaxMode, MaxAge: -1})
	restart := "The sign-in took too long, was already used, or was started in another browser. Start it again."
	if err != nil || ck.Value == "" {
		return ssoError(http.StatusBadRequest, restart, err)
	}
	st, err := s.svc.FinishExternalLogin(r.Context(), ck.Value)
	if errors.Is(err, authz.ErrNotFound) {
		return ssoError(http.StatusBadRequest, restart, err)
	}
	if err != nil {
		return err
	}
	q := r.URL.Query()
	if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(st.State)) != 1 {
		return ssoError(http.StatusBadRequest, "The sign-in answer does not belong to this browser's sign-in (state mismatch). Start it again.", nil)
	}
	p, ok := s.sso[st.Provider]
	if !ok {
		return ssoError(http.StatusBadRequest, "The sign-in provider is no longer configured.", nil)
	}
	provider = p.cfg.ID
	if e := q.Get("error"); e != "" {
		return ssoError(http.StatusUnauthorized, "The identity provider did not sign you in ("+truncate(e, 64)+").", nil)
	}
	code := q.Get("code")
	if code == "" {
		return ssoError(http.StatusBadRequest, "The identity provider sent no authorization code.", nil)
	}
	ctx, cancel := context.WithTimeout(r.Context(), ssoTimeout)
	defer cancel()
	op, err := p.discover(ctx)
	if err != nil {
		return ssoError(http.StatusBadGateway, "The identity provider "+p.cfg.Name+" cannot be reached; try again later.", err)
	}
	tok, err := p.oauth2Config(op, s.baseURL(r)+ssoCallbackPath).Exchange(ctx, code, oauth2.VerifierOption(st.Verifier))
	var re *oauth2.RetrieveError
	switch {
	case errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500:
		return ssoError(http.StatusUnauthorized, "The identity provider refused the sign-in (the code is invalid, expired or was already used). Start it again.", err)
	case err != nil:
		return ssoError(http.StatusBadGateway, "The identity provider "+p.cfg.Name+" cannot be reached; try again later.", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return ssoError(http.StatusBadGateway, "The identity provider sent no ID token.", nil)
	}
	idt, err := op.Verifier(&oidc.Config{ClientID: p.cfg.ClientID}).Verify(ctx, raw)
	if err == nil && subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(st.Nonce)) != 1 {
		err = errors.New("nonce mismatch")
	}
	if err != nil {
		// Worth an operator's attention: a forged or misdirected token,
		// or a provider misconfiguration. The token itself is not logged.
		s.log.Warn("external sign-in: ID token rejected", "provider", p.cfg.ID, "err", err)
		return ssoError(http.StatusUnauthorized, "The identity provider's ID token was rejected.", err)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return ssoError(http.StatusUnauthorized, "The identity provider's ID token was rejected.", err)
	}
	if claims, err = p.addUserInfo(ctx, op, tok, idt.Subject, claims); err != nil {
		var pe *pageError
		if errors.As(err, &pe) && pe.status == http.StatusUnauthorized {
			s.log.Warn("external sign-in: userinfo rejected", "provider", p.cfg.ID, "err", err)
		}
		return err
	}
	ident := authz.ExternalIdentity{Provider: p.cfg.ID, Subject: idt.Subject}
	ident.Email, _ = claims["email"].(string)
	// Some providers send the boolean as a string.
	ident.EmailVerified = claims["email_verified"] == true || claims["email_verified"] == "true"
	ident.PreferredUsername, _ = claims["preferred_username"].(string)
	groups := claimStrings(claims[p.cfg.GroupsClaim])
	if len(p.cfg.RequiredGroups) > 0 && !slices.ContainsFunc(p.cfg.RequiredGroups, func(g string) bool { return slices.Contains(groups, g) }) {
		return ssoError(http.StatusForbidden, "Your account at "+p.cfg.Name+" is not in a group allowed to sign in here.", nil)
	}
	var roles []string
	for _, g := range groups {
		roles = append(roles, p.cfg.RoleMapping[g]...)
	}
	resp, err := s.svc.SignInExternal(r.Context(), authz.ExternalSignIn{
		Identity: ident, Roles: roles,
		MayCreate: p.cfg.OpenRegistration || (ident.EmailVerified && emailDomainAllowed(ident.Email, p.cfg.AllowedEmailDomains)),
	})
	switch {
	case errors.Is(err, authz.ErrNoAccount):
		return ssoError(http.StatusForbidden, "There is no account for you here, and "+p.cfg.Name+" sign-ins may not create one. Ask an administrator for access.", err)
	case errors.Is(err, authz.ErrUnauthenticated):
		return ssoError(http.StatusForbidden, "Your account here is disabled.", err)
	case errors.Is(err, authz.ErrConflict):
		return ssoError(http.StatusConflict, "An account with your email address exists already but is not connected to "+p.cfg.Name+". Sign in with its password, or ask an administrator.", err)
	case err != nil:
		return err
	}
	setRevision(c, resp.Revision)
	s.setSessionCookies(c, resp.AccessToken, resp.UserID, int(resp.ExpiresIn))
	c.SetCookie(&http.Cookie{Name: ssoProviderCookie, Value: p.cfg.ID, Path: "/", HttpOnly: true,
		Secure: s.requestHTTPS(r), SameSite: http.SameSiteLaxMode, MaxAge: int(resp.ExpiresIn)})
	rd := st.ReturnTo
	if rd == "" {
		rd = s.path("/auth/account")
	}
	setPageHeaders(c.Response().Header())
	return c.Redirect(http.StatusSeeOther, rd)
}

// addUserInfo completes the ID token's claims from the userinfo endpoint
// when the ID token lacks the email or the groups claim (providers that
// keep the ID token small). Claims in the ID token win; the userinfo
// answer must be about the same subject (OIDC Core §5.3.2).
func (p *ssoProvider) addUserInfo(ctx context.Context, op *oidc.Provider, tok *oauth2.Token, sub string, claims map[string]any) (map[string]any, error) {
	_, hasEmail := claims["email"]
	_, hasGroups := claims[p.cfg.GroupsClaim]
	needGroups := len(p.cfg.RoleMapping) > 0 || len(p.cfg.RequiredGroups) > 0
	if (hasEmail && (hasGroups || !needGroups)) || op.UserInfoEndpoint() == "" {
		return claims, nil
	}
	ui, err := op.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		return nil, ssoError(http.StatusBadGateway, "The identity provider "+p.cfg.Name+" did not tell who you are (userinfo failed); try again later.", err)
	}
	if ui.Subject != sub {
		return nil, ssoError(http.StatusUnauthorized, "The identity provider's answers disagree about who you are.", fmt.Errorf("userinfo sub %q differs from the ID token's", ui.Subject))
	}
	var extra map[string]any
	if err := ui.Claims(&extra); err != nil {
		return nil, ssoError(http.StatusBadGateway, "The identity provider sent a malformed userinfo answer.", err)
	}
	for k, v := range extra {
		if _, ok := claims[k]; !ok {
			claims[k] = v
		}
	}
	return claims, nil
}

// ssoLogoutTarget is where logout sends a browser that an external
// provider signed in: the provider's end_session_endpoint (RP-initiated
// logout) coming back to next, or "" to stay local. The provider cookie
// is cleared either way.
func (s *Server) ssoLogoutTarget(c echo.Context, next string) string {
	ck, err := c.Cookie(ssoProviderCookie)
	if err != nil {
		return ""
	}
	c.SetCookie(&http.Cookie{Name: ssoProviderCookie, Value: "", Path: "/", HttpOnly: true,
		Secure: s.requestHTTPS(c.Request()), SameSite: http.SameSiteLaxMode, MaxAge: -1})
	p, ok := s.sso[ck.Value]
	if !ok || p.cfg.DisableLogout {
		return ""
	}
	// Logout must not hang on a provider that is down: a short try, and
	// a local logout if it fails.
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	if _, err := p.discover(ctx); err != nil {
		return ""
	}
	p.mu.Lock()
	end := p.endSession
	p.mu.Unlock()
	u, err := url.Parse(end)
	if end == "" || err != nil {
		return ""
	}
	if !strings.HasPrefix(next, "http://") && !strings.HasPrefix(next, "https://") {
		next = s.origin(c.Request()) + next
	}
	q := u.Query()
	q.Set("client_id", p.cfg.ClientID)
	q.Set("post_logout_redirect_uri", next)
	u.RawQuery = q.Encode()
	return u.String()
}

// countSSOCallback counts a callback by provider ("" before the pending
// sign-in was found) and answer: "ok", or the status of the error page.
func (s *Server) countSSOCallback(provider string, err error) {
	if s.ssoCallbacks == nil {
		return
	}
	result := "ok"
	if err != nil {
		status, _ := s.classify(err)
		var pe *pageError
		if errors.As(err, &pe) {
			status = pe.status
		}
		result = strconv.Itoa(status)
	}
	s.ssoCallbacks.WithLabelValues(provider, result).Inc()
}

// newSSOMetrics registers the external sign-in counter when there is a
// provider (no provider: no series).
func newSSOMetrics(reg prometheus.Registerer, providers []OIDCProvider) *prometheus.CounterVec {
	if len(providers) == 0 {
		return nil
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "portcullis",
		Name:      "sso_callbacks_total",
		Help:      "External OIDC sign-in callbacks by provider (empty: no pending sign-in found) and result (ok, or the HTTP status of the error page).",
	}, []string{"provider", "result"})
	if reg != nil {
		reg.MustRegister(c)
	}
	return c
}

// claimStrings reads a groups-like claim: a list of strings or one string.
func claimStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// emailDomainAllowed compares the domain after the last '@' exactly
// (case-insensitively): "example.com" does not admit "evil-example.com"
// nor "sub.example.com".
func emailDomainAllowed(email string, domains []string) bool {
	at := strings.LastIndexByte(email, '@')
	if at < 0 {
		return false
	}
	d := email[at+1:]
	return slices.ContainsFunc(domains, func(a string) bool { return strings.EqualFold(a, d) })
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

package proxy

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// secretParams must never arrive in a URL: URLs are logged and leak through Referer.
var secretParams = []string{"password", "client_secret", "refresh_token", "code", "code_verifier", "token"}

// oauthForm parses an OAuth2 POST body (application/x-www-form-urlencoded),
// refusing secrets in the query string and repeated parameters (RFC 6749 §3.2).
func oauthForm(c echo.Context) (url.Values, error) {
	req := c.Request()
	for _, p := range secretParams {
		if req.URL.Query().Has(p) {
			return nil, oauthInvalid("invalid_request", p+" must be sent in the request body, not the URL")
		}
	}
	ct := req.Header.Get("Content-Type")
	if ct == "" && req.ContentLength != 0 {
		// net/http would ignore the body: say why rather than answer
		// that grant_type is missing.
		return nil, oauthInvalid("invalid_request", "the body must be application/x-www-form-urlencoded (Content-Type is missing)")
	}
	if ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/x-www-form-urlencoded") && !strings.HasPrefix(strings.ToLower(ct), "multipart/form-data") {
		return nil, oauthInvalid("invalid_request", "the body must be application/x-www-form-urlencoded")
	}
	if err := req.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		return nil, oauthInvalid("invalid_request", "malformed form body")
	}
	if strings.HasPrefix(strings.ToLower(ct), "multipart/form-data") {
		if err := req.ParseMultipartForm(1 << 20); err != nil {
			return nil, oauthInvalid("invalid_request", "malformed form body")
		}
	}
	form := req.PostForm
	if req.MultipartForm != nil {
		form = url.Values(req.MultipartForm.Value)
	}
	for k, v := range form {
		if len(v) > 1 {
			return nil, oauthInvalid("invalid_request", "parameter "+k+" given more than once")
		}
	}
	return form, nil
}

func oauthInvalid(code, desc string) error {
	return &oauthResponseError{status: http.StatusBadRequest, oe: &authz.OAuthError{Code: code, Description: desc}}
}

// clientCredentials reads client authentication from HTTP Basic
// (client_secret_basic, form-urlencoded per RFC 6749 §2.3.1) or the form
// (client_secret_post); using both is an error.
func clientCredentials(req *http.Request, form url.Values) (id, secret string, basic bool, err error) {
	if h := req.Header.Get("Authorization"); len(h) > 6 && strings.EqualFold(h[:6], "basic ") {
		u, p, ok := req.BasicAuth()
		if !ok {
			return "", "", true, &oauthResponseError{status: http.StatusUnauthorized, basic: true, oe: &authz.OAuthError{Code: "invalid_client", Description: "malformed Basic credentials"}}
		}
		if id, err = url.QueryUnescape(u); err == nil {
			secret, err = url.QueryUnescape(p)
		}
		if err != nil {
			return "", "", true, &oauthResponseError{status: http.StatusUnauthorized, basic: true, oe: &authz.OAuthError{Code: "invalid_client", Description: "malformed Basic credentials"}}
		}
		if form.Get("client_secret") != "" || (form.Get("client_id") != "" && form.Get("client_id") != id) {
			return "", "", true, oauthInvalid("invalid_request", "client credentials given twice")
		}
		return id, secret, true, nil
	}
	return form.Get("client_id"), form.Get("client_secret"), false, nil
}

// asOAuth turns authz's *OAuthError into an RFC 6749 §5.2 response.
func asOAuth(err error, basic bool) error {
	var oe *authz.OAuthError
	if !errors.As(err, &oe) {
		return err
	}
	status := http.StatusBadRequest
	if oe.Code == "invalid_client" {
		status = http.StatusUnauthorized
	}
	return &oauthResponseError{status: status, oe: oe, basic: basic && oe.Code == "invalid_client"}
}

func (s *Server) token(c echo.Context) (err error) {
	grantType := ""
	defer func() { s.metrics.tokenRequest(grantType, err) }()
	form, err := oauthForm(c)
	if err != nil {
		return err
	}
	grantType = form.Get("grant_type")
	id, secret, basic, err := clientCredentials(c.Request(), form)
	if err != nil {
		return err
	}
	setCookie := false
	if v := form.Get("set_as_cookie"); v != "" {
		switch v {
		case "true", "True", "1":
			setCookie = true
		case "false", "False", "0":
		default:
			return oauthInvalid("invalid_request", "set_as_cookie must be true or false")
		}
	}
	if setCookie {
		// A cookie set by another site's form would sign the browser in
		// to the attacker's account (login CSRF).
		if err := s.checkSameSite(c.Request()); err != nil {
			return err
		}
	}
	password := form.Get("grant_type") == authz.GrantPassword
	if password {
		if wait := s.loginLimiter.reserve(c.RealIP()); wait > 0 {
			s.metrics.throttled[throttleAddress].Inc()
			c.Response().Header().Set("Retry-After", retryAfter(wait))
			return &oauthResponseError{status: http.StatusTooManyRequests, oe: &authz.OAuthError{Code: "temporarily_unavailable",
				Description: "too many failed sign-in attempts from this address; retry later"}}
		}
	}
	req := authz.TokenRequest{
		GrantType: form.Get("grant_type"), Username: form.Get("username"), Password: form.Get("password"),
		Scope: form.Get("scope"), ClientID: id, ClientSecret: secret, Code: form.Get("code"),
		RedirectURI: form.Get("redirect_uri"), CodeVerifier: form.Get("code_verifier"),
		RefreshToken: form.Get("refresh_token"), LoginToken: setCookie,
	}
	resp, err := s.svc.RequestToken(c.Request().Context(), req)
	var oe *authz.OAuthError
	if wrongGuess := errors.As(err, &oe) && oe.Code == "invalid_grant"; password && !wrongGuess {
		s.loginLimiter.refund(c.RealIP())
	}
	if err != nil {
		if errors.Is(err, authz.ErrThrottled) {
			s.metrics.throttled[throttleAccount].Inc()
		}
		return asOAuth(err, basic)
	}
	h := c.Response().Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	setRevision(c, resp.Revision)
	if setCookie {
		s.setSessionCookies(c, resp.AccessToken, resp.UserID, int(resp.ExpiresIn))
	}
	return c.JSON(http.StatusOK, resp)
}

// oauthCaller authenticates the caller of revoke and introspect: a bearer
// token, or client credentials. Anonymous callers learn nothing.
func (s *Server) oauthCaller(c echo.Context, form url.Values) (*authz.Access, error) {
	id, secret, basic, err := clientCredentials(c.Request(), form)
	if err != nil {
		return nil, err
	}
	if id != "" {
		cl, err := s.svc.AuthenticateClient(c.Request().Context(), id, secret)
		if err != nil {
			return nil, asOAuth(err, basic)
		}
		return &authz.Access{Subject: cl.Subject}, nil
	}
	acc, err := s.caller(c)
	if err != nil {
		return nil, err
	}
	return &acc, nil
}

// revokeCaller is oauthCaller for revocation, where a public client,
// which has no secret, may name itself by its client_id alone (RFC 7009
// §2.1 validates credentials only "in case of a confidential client"):
// it acts as clients/<id>, which may revoke only the tokens issued to it.
// clientID is set when the caller is a client.
func (s *Server) revokeCaller(c echo.Context, form url.Values) (caller *authz.Access, clientID string, err error) {
	id, secret, _, err := clientCredentials(c.Request(), form)
	if err != nil {
		return nil, "", err
	}
	if id != "" && secret == "" {
		if cl, err := s.svc.Client(c.Request().Context(), id); err == nil && cl.Public {
			return &authz.Access{Subject: clientSubject(cl.ID)}, cl.ID, nil
		}
	}
	caller, err = s.oauthCaller(c, form)
	return caller, id, err
}

// clientSubject is the subject that stands for a client itself (and
// that authz lets revoke the tokens issued to the client).
func clientSubject(id string) string { return "clients/" + id }

func (s *Server) revoke(c echo.Context) error {
	form, err := oauthForm(c)
	if err != nil {
		return err
	}
	caller, clientID, err := s.revokeCaller(c, form)
	if err != nil {
		return err
	}
	tok := form.Get("token")
	if tok == "" {
		return oauthInvalid("invalid_request", "token is required")
	}
	// A client acts as its subject (what it administers through its
	// grants) and, when that is another one, as itself: the tokens
	// issued to it are its to revoke whatever subject it acts as.
	callers := []*authz.Access{caller}
	if clientID != "" && caller.Subject != clientSubject(clientID) {
		callers = append(callers, &authz.Access{Subject: clientSubject(clientID)})
	}
	var rev authz.Revision
	for _, who := range callers {
		if rev, err = s.svc.RevokeToken(c.Request().Context(), who, tok); !errors.Is(err, authz.ErrPermissionDenied) {
			break
		}
	}
	if clientID != "" && errors.Is(err, authz.ErrPermissionDenied) {
		// RFC 7009 §2.1: refused, with an RFC 6749 §5.2 error.
		return &oauthResponseError{status: http.StatusBadRequest, oe: &authz.OAuthError{Code: "unauthorized_client",
			Description: "the token was not issued to this client"}}
	}
	if err != nil {
		return err
	}
	// Revoked by value: the token has no id to name here.
	s.auditChange(c, caller.Subject, AuditTokenRevoke, rev, slog.String("via", "oauth-revoke"))
	setRevision(c, rev)
	return c.NoContent(http.StatusOK)
}

// mayIntrospect reports whether caller may see the details of a token of
// subject: a confidential client (a resource server, RFC 7662's caller),
// a token of the same subject, or an admin on that subject.
func (s *Server) mayIntrospect(c echo.Context, form url.Values, caller *authz.Access, subject string) (bool, error) {
	if id, _, _, _ := clientCredentials(c.Request(), form); id != "" {
		return true, nil // authenticated by oauthCaller
	}
	if caller.Subject == subject {
		return true, nil
	}
	err := s.svc.Check(c.Request().Context(), *caller, subject+"#admin")
	if errors.Is(err, authz.ErrPermissionDenied) {
		return false, nil
	}
	return err == nil, err
}

func (s *Server) introspect(c echo.Context) error {
	form, err := oauthForm(c)
	if err != nil {
		return err
	}
	caller, err := s.oauthCaller(c, form)
	if err != nil {
		return err
	}
	if form.Get("token") == "" {
		return oauthInvalid("invalid_request", "token is required") // RFC 7662 §2.1
	}
	in, err := s.svc.Introspect(c.Request().Context(), form.Get("token"))
	if err != nil {
		return err
	}
	if in.Active {
		ok, err := s.mayIntrospect(c, form, caller, in.Sub)
		if err != nil {
			return err
		}
		if !ok {
			// Someone else's token: as if it were unknown (RFC 7662 §2.2
			// lets the server answer inactive to callers not entitled).
			in = authz.Introspection{}
		}
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	c.Response().Header().Set("Pragma", "no-cache")
	return c.JSON(http.StatusOK, in)
}

package proxy

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// authorizeParams are the authorization request parameters that the
// consent form carries through to its POST.
var authorizeParams = []string{"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method", "nonce"}

// authorize is GET and POST /auth/oauth/authorize (RFC 6749 §4.1, PKCE
// S256 required). Errors about the client or its redirect_uri are shown
// as a page and never redirected: an unregistered URI could be anyone's.
// Every other error goes back to the registered redirect_uri with state.
// A browser without a session is sent to the login page and comes back;
// third-party clients need the user's consent (the POST), first-party
// clients do not.
func (s *Server) authorize(c echo.Context) error {
	r := c.Request()
	var params url.Values
	if r.Method == http.MethodPost {
		if err := r.ParseForm(); err != nil {
			return &pageError{status: http.StatusBadRequest, msg: "malformed form body"}
		}
		params = r.PostForm
	} else {
		params = r.URL.Query()
	}
	for _, k := range authorizeParams {
		if len(params[k]) > 1 {
			return &pageError{status: http.StatusBadRequest, msg: "parameter " + k + " given more than once"}
		}
	}
	ctx := r.Context()
	clientID, redirectURI := params.Get("client_id"), params.Get("redirect_uri")
	if clientID == "" {
		return &pageError{status: http.StatusBadRequest, msg: "client_id is required"}
	}
	client, err := s.svc.AuthorizeClient(ctx, clientID, redirectURI)
	switch {
	case errors.Is(err, authz.ErrNotFound), errors.Is(err, authz.ErrInvalid):
		return &pageError{status: http.StatusBadRequest, msg: "unknown client, or a redirect_uri that is not registered for it", err: err}
	case err != nil:
		return err
	}
	if redirectURI == "" {
		redirectURI = client.RedirectURIs[0]
	}
	state := params.Get("state")
	back := func(v url.Values) error {
		if state != "" {
			v.Set("state", state)
		}
		v.Set("iss", s.baseURL(r)) // RFC 9207
		noStore(c.Response().Header())
		return c.Redirect(http.StatusSeeOther, withQuery(redirectURI, v))
	}
	fail := func(code, desc string) error {
		return back(url.Values{"error": {code}, "error_description": {desc}})
	}
	switch params.Get("response_type") {
	case "code":
	case "":
		return fail("invalid_request", "response_type is required")
	default:
		return fail("unsupported_response_type", "only response_type=code is supported")
	}
	if params.Get("code_challenge_method") != "S256" || len(params.Get("code_challenge")) != 43 {
		return fail("invalid_request", "PKCE with code_challenge_method=S256 is required")
	}
	acc, u, err := s.signedInUser(c)
	if err != nil {
		return err
	}
	prompt := strings.Fields(params.Get("prompt"))
	if acc == nil {
		if hasWord(prompt, "none") {
			return fail("login_required", "the user is not signed in")
		}
		if r.Method != http.MethodGet {
			return fail("access_denied", "the session ended before consent was given")
		}
		return s.loginRedirect(c, s.cfg.APIPrefix+r.URL.RequestURI())
	}
	areq := authz.AuthorizeRequest{
		ClientID: client.ID, RedirectURI: params.Get("redirect_uri"), Subject: acc.Subject, Scopes: strings.Fields(params.Get("scope")),
		CodeChallenge: params.Get("code_challenge"), CodeChallengeMethod: params.Get("code_challenge_method"),
		Nonce: params.Get("nonce"),
	}
	var oe *authz.OAuthError
	if r.Method == http.MethodPost {
		if err := s.checkForm(c); err != nil {
			return err
		}
		if params.Get("decision") != "allow" {
			return fail("access_denied", "the user denied the request")
		}
	} else if !client.FirstParty {
		// Refuse before asking: the person should not approve a request
		// that fails anyway (a scope the client or the user lacks).
		_, shown, err := s.svc.CheckAuthorizeRequest(ctx, areq)
		if errors.As(err, &oe) {
			return fail(oe.Code, oe.Description)
		}
		if err != nil {
			return err
		}
		if hasWord(prompt, "none") {
			return fail("consent_required", "the user must approve this client")
		}
		if slices.Equal(shown, []string{"*#admin"}) {
			shown = []string{"*#admin (everything you may do)"}
		}
		hidden := map[string]string{}
		for _, k := range authorizeParams {
			if v := params.Get(k); v != "" {
				hidden[k] = v
			}
		}
		if client.Name == "" {
			client.Name = client.ID
		}
		ru, _ := url.Parse(redirectURI)
		return s.renderPage(c, http.StatusOK, "consent", &pageData{
			Title: "Authorize " + client.Name, User: u, Client: client, Scopes: shown, Params: hidden,
			RedirectHost: ru.Scheme + "://" + ru.Host,
		})
	}
	code, err := s.svc.IssueAuthCode(ctx, areq)
	if errors.As(err, &oe) {
		return fail(oe.Code, oe.Description)
	}
	if err != nil {
		return err
	}
	return back(url.Values{"code": {code}})
}

func hasWord(words []string, w string) bool {
	for _, x := range words {
		if x == w {
			return true
		}
	}
	return false
}

// withQuery adds v to the query of a (registered, hence parseable) URI.
func withQuery(uri string, v url.Values) string {
	u, err := url.Parse(uri)
	if err != nil {
		return uri
	}
	q := u.Query()
	for k, vs := range v {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	return u.String()
}

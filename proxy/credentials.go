package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// The names contaxy clients use for their token.
const (
	tokenHeader = "ct_token"
	tokenCookie = "ct_token"
	tokenQuery  = "ct_token"
	userCookie  = "ctxy_authorized_user"
	// tokenHeaderKey is tokenHeader as net/http stores it.
	tokenHeaderKey = "Ct_token"
)

// requestScope is everything the server learns about one request, kept in
// one typed struct behind an unexported context key.
type requestScope struct {
	requestID string
	// access is the verified caller, once resolved.
	access   *authz.Access
	accessed error
	resolved bool
}

type scopeKey struct{}

func scopeOf(c echo.Context) *requestScope {
	if sc, ok := c.Request().Context().Value(scopeKey{}).(*requestScope); ok {
		return sc
	}
	return &requestScope{}
}

// withScope installs a fresh request scope and a request id: the
// client's X-Request-Id when it sent a usable one (AuthZEN 1.0 requires a
// PDP to answer with the caller's id; proxies in front set it too), else
// a random one.
func withScope(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		id := req.Header.Get(requestIDHeader)
		if !usableRequestID(id) {
			var b [8]byte
			_, _ = rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		sc := &requestScope{requestID: id}
		c.SetRequest(req.WithContext(context.WithValue(req.Context(), scopeKey{}, sc)))
		c.Response().Header().Set("X-Request-Id", sc.requestID)
		return next(c)
	}
}

// usableRequestID accepts request ids that are safe to log and echo:
// 1 to 128 printable ASCII characters without spaces or quotes.
func usableRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if ch := id[i]; ch <= ' ' || ch >= 0x7f || ch == '"' || ch == '\\' {
			return false
		}
	}
	return true
}

// credential extracts the caller's token from the Authorization header
// (Bearer), the ct_token header, the ct_token cookie and, only when
// allowed, the ct_token query parameter. Two different tokens in one
// request are refused: which one counts would be a guess.
func (s *Server) credential(req *http.Request) (string, error) {
	var query url.Values
	if s.cfg.AllowQueryToken {
		query = req.URL.Query()
	}
	tok, _, err := extractCredential(req.Header, query)
	return tok, err
}

// extractCredential is credential over headers and an optional query, and
// also says where the token was found.
func extractCredential(h http.Header, query url.Values) (string, credentialSource, error) {
	var found string
	var src credentialSource
	add := func(t string, from credentialSource) error {
		if t == "" {
			return nil
		}
		if found != "" && t != found {
			return badRequest("two different credentials in one request")
		}
		found = t
		src |= from
		return nil
	}
	if v := h["Authorization"]; len(v) > 0 {
		if len(v) > 1 {
			return "", 0, badRequest("more than one Authorization header")
		}
		scheme, tok, ok := strings.Cut(v[0], " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if err := add(strings.TrimSpace(tok), fromAuthorization); err != nil {
				return "", 0, err
			}
		}
	}
	if v := h[tokenHeaderKey]; len(v) > 0 {
		if len(v) > 1 {
			return "", 0, badRequest("more than one ct_token header")
		}
		if err := add(strings.TrimSpace(v[0]), fromHeader); err != nil {
			return "", 0, err
		}
	}
	if cookie, n := tokenCookieValue(h); n > 1 {
		return "", 0, badRequest("more than one ct_token cookie")
	} else if err := add(cookie, fromCookie); err != nil {
		return "", 0, err
	}
	if q := query[tokenQuery]; len(q) > 0 {
		if len(q) > 1 {
			return "", 0, badRequest("more than one ct_token query parameter")
		}
		if err := add(q[0], fromQuery); err != nil {
			return "", 0, err
		}
	}
	return found, src, nil
}

// tokenCookieValue returns the ct_token cookie and how many there were.
// Cookie headers without the name are not parsed at all: this runs on
// every forward-auth request.
func tokenCookieValue(h http.Header) (string, int) {
	var val string
	n := 0
	for _, line := range h["Cookie"] {
		if !strings.Contains(line, tokenCookie) {
			continue
		}
		for part := range strings.SplitSeq(line, ";") {
			name, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if ok && name == tokenCookie {
				n++
				val = strings.Trim(v, `"`)
			}
		}
	}
	return val, n
}

// withoutTokenCookie returns the Cookie header values minus ct_token;
// empty when nothing else remains.
func withoutTokenCookie(h http.Header) string {
	var kept []string
	for _, line := range h["Cookie"] {
		for part := range strings.SplitSeq(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if name, _, _ := strings.Cut(part, "="); name == tokenCookie {
				continue
			}
			kept = append(kept, part)
		}
	}
	return strings.Join(kept, "; ")
}

// errNoCredential answers a request that carried no token at all.
var errNoCredential = fmt.Errorf("%w: no token in the request (send Authorization: Bearer, or the ct_token header or cookie)", authz.ErrUnauthenticated)

// caller verifies the request's token once per request.
func (s *Server) caller(c echo.Context) (authz.Access, error) {
	sc := scopeOf(c)
	if sc.resolved {
		if sc.accessed != nil {
			return authz.Access{}, sc.accessed
		}
		return *sc.access, nil
	}
	sc.resolved = true
	tok, err := s.credential(c.Request())
	if err == nil && tok == "" {
		err = errNoCredential
	}
	if err == nil {
		var acc authz.Access
		acc, err = s.svc.VerifyAccess(c.Request().Context(), tok, "", authz.VerifyOptions{})
		if err == nil {
			sc.access = &acc
			return acc, nil
		}
	}
	sc.accessed = err
	return authz.Access{}, err
}

// require verifies the caller and checks that it holds permission.
func (s *Server) require(c echo.Context, permission string) (authz.Access, error) {
	acc, err := s.caller(c)
	if err != nil {
		return acc, err
	}
	if err := s.svc.Check(c.Request().Context(), acc, permission); err != nil {
		return acc, err
	}
	return acc, nil
}

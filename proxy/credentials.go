package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
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

// withScope installs a fresh request scope and a request id.
func withScope(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		var b [8]byte
		_, _ = rand.Read(b[:])
		sc := &requestScope{requestID: hex.EncodeToString(b[:])}
		req := c.Request()
		c.SetRequest(req.WithContext(context.WithValue(req.Context(), scopeKey{}, sc)))
		c.Response().Header().Set("X-Request-Id", sc.requestID)
		return next(c)
	}
}

// credential extracts the caller's token from the Authorization header
// (Bearer), the ct_token header, the ct_token cookie and, only when
// allowed, the ct_token query parameter. Two different tokens in one
// request are refused: which one counts would be a guess.
func (s *Server) credential(req *http.Request) (string, error) {
	var found []string
	add := func(t string) {
		if t != "" {
			found = append(found, t)
		}
	}
	if h := req.Header.Values("Authorization"); len(h) > 0 {
		if len(h) > 1 {
			return "", badRequest("more than one Authorization header")
		}
		scheme, tok, ok := strings.Cut(h[0], " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			add(strings.TrimSpace(tok))
		}
	}
	if h := req.Header.Values(tokenHeader); len(h) > 0 {
		if len(h) > 1 {
			return "", badRequest("more than one ct_token header")
		}
		add(strings.TrimSpace(h[0]))
	}
	cookies := 0
	for _, ck := range req.Cookies() {
		if ck.Name == tokenCookie {
			cookies++
			add(ck.Value)
		}
	}
	if cookies > 1 {
		return "", badRequest("more than one ct_token cookie")
	}
	if s.cfg.AllowQueryToken {
		if q := req.URL.Query()[tokenQuery]; len(q) > 0 {
			if len(q) > 1 {
				return "", badRequest("more than one ct_token query parameter")
			}
			add(q[0])
		}
	}
	if len(found) == 0 {
		return "", nil
	}
	for _, t := range found[1:] {
		if t != found[0] {
			return "", badRequest("two different credentials in one request")
		}
	}
	return found[0], nil
}

// credentialPresent reports whether the request carried any token, for
// RFC 6750's error="invalid_token".
func credentialPresent(req *http.Request) bool {
	if strings.HasPrefix(strings.ToLower(req.Header.Get("Authorization")), "bearer ") || req.Header.Get(tokenHeader) != "" {
		return true
	}
	_, err := req.Cookie(tokenCookie)
	return err == nil
}

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
		err = authz.ErrUnauthenticated
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

package proxy

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"
)

// csrfCookie holds the double-submit token of the sign-in and account forms.
const (
	csrfCookie = "portcullis_csrf"
	csrfField  = "csrf_token"
)

// requestHTTPS reports whether the client reached us over HTTPS: directly,
// or through a trusted proxy that says so, or because the operator
// declared it (SecureCookies, an https PublicURL).
func (s *Server) requestHTTPS(r *http.Request) bool {
	if r.TLS != nil || s.cfg.SecureCookies || strings.HasPrefix(s.cfg.PublicURL, "https://") {
		return true
	}
	if !s.cfg.TrustedProxies.trusted(r) {
		return false
	}
	if p := r.Header.Values("X-Forwarded-Proto"); len(p) == 1 {
		return strings.EqualFold(strings.TrimSpace(p[0]), "https")
	}
	if f := r.Header.Get("Forwarded"); f != "" {
		for part := range strings.SplitSeq(strings.ToLower(f), ";") {
			if strings.TrimSpace(part) == "proto=https" {
				return true
			}
		}
	}
	return false
}

// origin is the scheme://host the client addressed: PublicURL's when
// configured, else the request's (Host, or X-Forwarded-Host from a
// trusted proxy).
func (s *Server) origin(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		if u, err := url.Parse(s.cfg.PublicURL); err == nil {
			return strings.ToLower(u.Scheme + "://" + u.Host)
		}
	}
	host := r.Host
	if s.cfg.TrustedProxies.trusted(r) {
		if h := r.Header.Values("X-Forwarded-Host"); len(h) == 1 && h[0] != "" {
			host = strings.TrimSpace(h[0])
		}
	}
	scheme := "http"
	if s.requestHTTPS(r) {
		scheme = "https"
	}
	return strings.ToLower(scheme + "://" + host)
}

// baseURL is the absolute URL of Portcullis's endpoints, API prefix included.
func (s *Server) baseURL(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		return strings.TrimSuffix(s.cfg.PublicURL, "/")
	}
	return s.origin(r) + s.cfg.APIPrefix
}

// path is one of our own paths as the browser sees it (with the API prefix).
func (s *Server) path(p string) string { return s.cfg.APIPrefix + p }

// sameOrigin compares an Origin header value with ours, default ports
// normalised.
func sameOrigin(got, want string) bool {
	g, err1 := url.Parse(strings.ToLower(got))
	w, err2 := url.Parse(want)
	if err1 != nil || err2 != nil || g.Scheme == "" || g.Host == "" {
		return false
	}
	return g.Scheme == w.Scheme && hostPort(g) == hostPort(w)
}

func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return u.Hostname() + ":" + port
}

// browserRequest reports whether a browser sent the request: browsers mark
// every POST with Origin and (all current ones) Sec-Fetch-Site; scripts
// and contaxy's Python client send neither.
func browserRequest(r *http.Request) bool {
	return r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") != ""
}

var errCrossSite = &problemError{status: http.StatusForbidden, msg: "cross-site request refused",
	expl: "state-changing requests authenticated by cookie must come from Portcullis's own pages"}

// checkSameSite refuses a request that a browser marked as coming from
// another site: Sec-Fetch-Site cross-site (or same-site: a sibling
// subdomain is not us either), or, from browsers that do not send
// Sec-Fetch-Site, an Origin that is not ours ("null" included). Requests
// with neither header pass: they are not from a browser's cross-site form
// or fetch.
func (s *Server) checkSameSite(r *http.Request) error {
	// Sec-Fetch-Site is set by the browser itself (a page cannot forge
	// it) and survives privacy settings that turn Origin into "null".
	switch r.Header.Get("Sec-Fetch-Site") {
	case "cross-site", "same-site":
		return errCrossSite
	case "same-origin", "none":
		return nil
	}
	if o := r.Header.Values("Origin"); len(o) > 0 {
		if len(o) > 1 || !sameOrigin(o[0], s.origin(r)) {
			return errCrossSite
		}
	}
	return nil
}

// refuseCrossSite applies checkSameSite to every state-changing request
// that carries the ct_token cookie, so that no other site can make a
// signed-in browser act. Forward-auth endpoints are exempt: they judge
// other applications' requests, whose origin is not ours to police.
func (s *Server) refuseCrossSite(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			return next(c)
		}
		if p := c.Path(); p == "/auth/forward" || strings.HasPrefix(p, envoyPrefix) {
			return next(c)
		}
		if _, n := tokenCookieValue(r.Header); n == 0 {
			return next(c)
		}
		if err := s.checkSameSite(r); err != nil {
			return err
		}
		return next(c)
	}
}

// csrfToken returns the form token of this browser, setting the cookie
// that holds it when there is none yet.
func (s *Server) csrfToken(c echo.Context) string {
	if ck, err := c.Cookie(csrfCookie); err == nil && len(ck.Value) >= 32 && len(ck.Value) <= 128 {
		return ck.Value
	}
	tok := randomToken()
	c.SetCookie(&http.Cookie{Name: csrfCookie, Value: tok, Path: "/", HttpOnly: true,
		Secure: s.requestHTTPS(c.Request()), SameSite: http.SameSiteLaxMode})
	return tok
}

// checkForm guards a form submission from a browser: same site, and the
// form's token equals the cookie's (double submit). A request without any
// browser marks is a script's and needs neither.
func (s *Server) checkForm(c echo.Context) error {
	r := c.Request()
	if !browserRequest(r) {
		return nil
	}
	if err := s.checkSameSite(r); err != nil {
		return err
	}
	ck, err := c.Cookie(csrfCookie)
	got := r.PostFormValue(csrfField)
	if err != nil || ck.Value == "" || got == "" || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(got)) != 1 {
		return &problemError{status: http.StatusForbidden, msg: "the form has expired or was not sent by Portcullis; reload the page and try again"}
	}
	return nil
}

// randomToken returns 256 random bits, base64url-encoded.
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// setSessionCookies puts a login token into ct_token (HttpOnly) and the
// user id into ctxy_authorized_user (readable by contaxy's web app).
// The answer carries the token, so no cache may keep it.
func (s *Server) setSessionCookies(c echo.Context, token, userID string, maxAge int) {
	noStore(c.Response().Header())
	secure := s.requestHTTPS(c.Request())
	c.SetCookie(&http.Cookie{Name: tokenCookie, Value: token, Path: "/", HttpOnly: true, Secure: secure,
		SameSite: http.SameSiteLaxMode, MaxAge: maxAge})
	if userID != "" {
		c.SetCookie(&http.Cookie{Name: userCookie, Value: userID, Path: "/", Secure: secure,
			SameSite: http.SameSiteLaxMode, MaxAge: maxAge})
	}
}

// clearSessionCookies expires both session cookies.
func (s *Server) clearSessionCookies(c echo.Context) {
	secure := s.requestHTTPS(c.Request())
	for _, name := range []string{tokenCookie, userCookie} {
		c.SetCookie(&http.Cookie{Name: name, Value: "", Path: "/", HttpOnly: name == tokenCookie, Secure: secure,
			SameSite: http.SameSiteLaxMode, MaxAge: -1})
	}
}

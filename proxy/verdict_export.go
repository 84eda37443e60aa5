package proxy

import (
	"context"
	"net/http"
)

// This file exports what dialects outside this package (the Envoy gRPC
// ext_authz server in proxy/envoyauthz) need to answer exactly as the HTTP
// forward-auth endpoints do.

// Each calls fn for every identity header an allowed request's upstream
// gets, empty values included (they erase client-sent ones).
func (id *Identity) Each(fn func(name, value string)) { id.each(fn) }

// CredentialRemoval says how to take the caller's credential off the
// upstream request, for proxies that edit the request themselves (Envoy).
type CredentialRemoval struct {
	// Headers are the lower-case request headers to remove: always
	// ct_token; authorization when it carried our token; cookie when
	// ct_token was the only cookie.
	Headers []string
	// Cookie, when not empty, replaces the Cookie header: the client's
	// cookies without ct_token.
	Cookie string
}

// CredentialRemoval tells how to strip the credential found while deciding
// a: the same headers the Envoy HTTP dialect names in
// X-Envoy-Auth-Headers-To-Remove.
func (v *Verdict) CredentialRemoval(a *Attempt) CredentialRemoval {
	r := CredentialRemoval{Headers: []string{tokenHeader}}
	if v.source&fromAuthorization != 0 {
		r.Headers = append(r.Headers, "authorization")
	}
	if v.source&fromCookie != 0 {
		if rest := withoutTokenCookie(a.Header); rest != "" {
			r.Cookie = rest
		} else {
			r.Headers = append(r.Headers, "cookie")
		}
	}
	return r
}

// Denial is a denied verdict as the forward-auth endpoints answer it.
type Denial struct {
	// Status is the HTTP status for the client: v.Status, or 302 for a
	// browser when login redirects are on.
	Status int
	Header http.Header
	// Body is the problem JSON (empty with a 302).
	Body []byte
}

// Denial renders a verdict that is not an allow exactly as the HTTP
// forward-auth endpoints write it: problem JSON, WWW-Authenticate on 401,
// the login URL, Retry-After on 429. It logs like them too.
func (s *Server) Denial(ctx context.Context, a *Attempt, v *Verdict) Denial {
	rec := &denialRecorder{header: http.Header{}}
	req := (&http.Request{Method: http.MethodGet, Header: a.Header}).WithContext(ctx)
	s.writeDenial(rec, req, a, v)
	return Denial{Status: rec.status, Header: rec.header, Body: rec.body}
}

// denialRecorder is the http.ResponseWriter Denial renders into.
type denialRecorder struct {
	header http.Header
	status int
	body   []byte
}

func (r *denialRecorder) Header() http.Header { return r.header }

func (r *denialRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *denialRecorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body = append(r.body, p...)
	return len(p), nil
}

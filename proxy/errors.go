package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// Problem is the JSON body of every non-OAuth error: contaxy's problem
// details.
type Problem struct {
	Code        int    `json:"code"`
	Message     string `json:"message"`
	Explanation string `json:"explanation,omitempty"`
	// Details says why a verification with explain=true was denied: what
	// was missing, the scope or grant that was there (a Portcullis
	// extension; contaxy clients ignore it).
	Details *authz.Explanation `json:"details,omitempty"`
}

// explainedDenial is a denial an admin asked to have explained.
type explainedDenial struct{ *authz.DeniedError }

func (e explainedDenial) Unwrap() error { return e.DeniedError }

// problemError is an error a handler returns to answer with a specific
// status and message.
type problemError struct {
	status int
	msg    string
	expl   string
	err    error
}

func (e *problemError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

func (e *problemError) Unwrap() error { return e.err }

func badRequest(msg string) error { return &problemError{status: http.StatusBadRequest, msg: msg} }

// oauthResponseError makes the error handler answer in RFC 6749 §5.2 form.
type oauthResponseError struct {
	status int
	oe     *authz.OAuthError
	basic  bool // client authentication via Basic failed: add WWW-Authenticate: Basic
}

func (e *oauthResponseError) Error() string { return e.oe.Error() }

// handleError is the one place where errors become responses (echo's
// HTTPErrorHandler). Handlers never write error bodies themselves.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	req := c.Request()
	var pe *pageError
	if errors.As(err, &pe) {
		s.logError(c, pe.status, err)
		s.renderPageError(c, pe)
		return
	}
	status, p := s.classify(err)
	var te *authz.ThrottledError
	if errors.As(err, &te) {
		c.Response().Header().Set("Retry-After", retryAfter(te.RetryAfter))
	}
	var ore *oauthResponseError
	if errors.As(err, &ore) {
		h := c.Response().Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Pragma", "no-cache")
		if ore.basic || ore.status == http.StatusUnauthorized {
			h.Set("WWW-Authenticate", `Basic realm="portcullis"`)
		}
		s.logError(c, ore.status, err)
		_ = c.JSON(ore.status, map[string]string{"error": ore.oe.Code, "error_description": ore.oe.Description})
		return
	}
	if strings.HasPrefix(req.URL.Path, "/auth/oauth/") {
		// OAuth2 endpoints answer every error in RFC 6749 §5.2 form.
		h := c.Response().Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Pragma", "no-cache")
		if status == http.StatusUnauthorized {
			h.Set("WWW-Authenticate", s.bearerChallenge(req))
		}
		s.logError(c, status, err)
		_ = c.JSON(status, map[string]string{"error": oauthCode(status), "error_description": p.Message + explanationSuffix(p)})
		return
	}
	if status == http.StatusUnauthorized {
		c.Response().Header().Set("WWW-Authenticate", s.bearerChallenge(req))
	}
	s.logError(c, status, err)
	if req.Method == http.MethodHead {
		_ = c.NoContent(status)
		return
	}
	_ = c.JSON(status, p)
}

// bearerChallenge is the RFC 6750 §3 challenge of a 401: error=
// "invalid_token" when the request carried a token, and no error code
// when it carried none (§3.1). A token counts wherever it was sent: the
// ct_token query parameter only when that is enabled.
func (s *Server) bearerChallenge(req *http.Request) string {
	if tok, err := s.credential(req); err != nil || tok != "" {
		return `Bearer realm="portcullis", error="invalid_token"`
	}
	return `Bearer realm="portcullis"`
}

func (s *Server) logError(c echo.Context, status int, err error) {
	lvl := slog.LevelDebug
	if status >= 500 {
		lvl = slog.LevelError
	}
	s.log.Log(c.Request().Context(), lvl, "request failed", "status", status, "method", c.Request().Method,
		"path", c.Request().URL.Path, "request_id", scopeOf(c).requestID, "err", err.Error())
}

// classify maps an error to a status and problem body with errors.Is/As.
func (s *Server) classify(err error) (int, Problem) {
	var pe *problemError
	var ie *authz.InvalidError
	var de *authz.DeniedError
	var ed explainedDenial
	var he *echo.HTTPError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &pe):
		return pe.status, Problem{Code: pe.status, Message: pe.msg, Explanation: pe.expl}
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, Problem{Code: 413, Message: fmt.Sprintf("request body larger than %d bytes", mbe.Limit)}
	case errors.As(err, &se), errors.As(err, &te):
		return http.StatusBadRequest, Problem{Code: 400, Message: "malformed JSON body", Explanation: jsonProblem(err)}
	case errors.As(err, &ie):
		return http.StatusBadRequest, Problem{Code: 400, Message: dedupeWrapping(ie.Error())}
	case errors.Is(err, authz.ErrInvalid):
		return http.StatusBadRequest, Problem{Code: 400, Message: dedupeWrapping(err.Error())}
	case errors.Is(err, authz.ErrUnauthenticated):
		return http.StatusUnauthorized, Problem{Code: 401, Message: "unauthenticated", Explanation: publicReason("unauthenticated", err)}
	case errors.As(err, &ed) && ed.Explanation != nil:
		return http.StatusForbidden, Problem{Code: 403, Message: "permission denied", Explanation: ed.Explanation.Reason, Details: ed.Explanation}
	case errors.As(err, &de):
		p := Problem{Code: 403, Message: "permission denied"}
		if de.Explanation != nil {
			p.Explanation = de.Explanation.Reason
		}
		return http.StatusForbidden, p
	case errors.Is(err, authz.ErrPermissionDenied):
		return http.StatusForbidden, Problem{Code: 403, Message: "permission denied", Explanation: publicReason("permission denied", err)}
	case errors.Is(err, authz.ErrNotFound):
		return http.StatusNotFound, Problem{Code: 404, Message: "not found", Explanation: publicReason("not found", err)}
	case errors.Is(err, authz.ErrConflict):
		return http.StatusConflict, Problem{Code: 409, Message: "already exists", Explanation: publicReason("already exists", err)}
	case errors.Is(err, authz.ErrThrottled):
		return http.StatusTooManyRequests, Problem{Code: 429, Message: "too many failed sign-in attempts", Explanation: publicReason("too many failed sign-in attempts", err)}
	case errors.Is(err, authz.ErrOutcomeUnknown):
		return http.StatusServiceUnavailable, Problem{Code: 503, Message: "store unavailable; the change may or may not have been applied: read it back before retrying"}
	case errors.Is(err, authz.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, Problem{Code: 503, Message: "store unavailable; try again"}
	case errors.Is(err, context.Canceled):
		return 499, Problem{Code: 499, Message: "client closed request"}
	case errors.As(err, &he):
		msg := http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok {
			msg = m
		}
		return he.Code, Problem{Code: he.Code, Message: msg}
	}
	return http.StatusInternalServerError, Problem{Code: 500, Message: "internal error"}
}

// oauthCode names an RFC 6749/6750 error code for a status.
func oauthCode(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusMethodNotAllowed,
		http.StatusUnsupportedMediaType, http.StatusNotFound:
		return "invalid_request"
	case http.StatusUnauthorized:
		return "invalid_token"
	case http.StatusForbidden:
		return "access_denied"
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		return "temporarily_unavailable"
	}
	return "server_error"
}

func explanationSuffix(p Problem) string {
	if p.Explanation == "" {
		return ""
	}
	return ": " + p.Explanation
}

// publicReason returns the error text as the explanation of a problem
// whose message is msg: authz errors are written to be shown to clients
// (they never contain secrets). Wrapping that repeats itself ("create
// user: create user: ...", each layer naming the operation) is said once,
// and the message is not repeated: clients show "message: explanation",
// so "unauthenticated: unknown token" explains "unauthenticated" as
// "unknown token", "login id \"alice\": already exists" explains "already
// exists" as "login id \"alice\"", and a bare sentinel explains nothing.
func publicReason(msg string, err error) string {
	s := dedupeWrapping(err.Error())
	if s == msg {
		return ""
	}
	s = strings.TrimPrefix(s, msg+": ")
	return strings.TrimSuffix(s, ": "+msg)
}

// dedupeWrapping drops a ": "-separated segment of an error text when the
// next segment says the same thing or more: "delete user: delete user
// \"x\": not found" becomes "delete user \"x\": not found".
func dedupeWrapping(s string) string {
	parts := strings.Split(s, ": ")
	out := parts[:0]
	for i, p := range parts {
		if i+1 < len(parts) {
			next := parts[i+1]
			if next == p || strings.HasPrefix(next, p+" ") {
				continue
			}
		}
		out = append(out, p)
	}
	return strings.Join(out, ": ")
}

// jsonProblem explains why a JSON body was refused in terms of the
// request, not of the decoder's internals.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return "the body is empty; want a JSON value"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the body ends inside a JSON value"
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return fmt.Sprintf("want %s, got a JSON %s", jsonKind(te.Type), te.Value)
		}
		return fmt.Sprintf("field %q: want %s, got a JSON %s", field, jsonKind(te.Type), te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// jsonKind names a Go type the way JSON would.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct, reflect.Pointer:
		return "an object"
	}
	return "a " + t.String()
}

package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
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
}

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
			h.Set("WWW-Authenticate", `Bearer realm="portcullis", error="invalid_token"`)
		}
		s.logError(c, status, err)
		_ = c.JSON(status, map[string]string{"error": oauthCode(status), "error_description": p.Message + explanationSuffix(p)})
		return
	}
	if status == http.StatusUnauthorized {
		v := `Bearer realm="portcullis"`
		if credentialPresent(req) {
			v += `, error="invalid_token"`
		}
		c.Response().Header().Set("WWW-Authenticate", v)
	}
	s.logError(c, status, err)
	if req.Method == http.MethodHead {
		_ = c.NoContent(status)
		return
	}
	_ = c.JSON(status, p)
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
	var he *echo.HTTPError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &pe):
		return pe.status, Problem{Code: pe.status, Message: pe.msg, Explanation: pe.expl}
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, Problem{Code: 413, Message: "request body too large"}
	case errors.As(err, &se), errors.As(err, &te):
		return http.StatusBadRequest, Problem{Code: 400, Message: "malformed JSON body", Explanation: err.Error()}
	case errors.As(err, &ie):
		return http.StatusBadRequest, Problem{Code: 400, Message: ie.Error()}
	case errors.Is(err, authz.ErrInvalid):
		return http.StatusBadRequest, Problem{Code: 400, Message: err.Error()}
	case errors.Is(err, authz.ErrUnauthenticated):
		return http.StatusUnauthorized, Problem{Code: 401, Message: "unauthenticated", Explanation: publicReason(err)}
	case errors.As(err, &de):
		p := Problem{Code: 403, Message: "permission denied"}
		if de.Explanation != nil {
			p.Explanation = de.Explanation.Reason
		}
		return http.StatusForbidden, p
	case errors.Is(err, authz.ErrPermissionDenied):
		return http.StatusForbidden, Problem{Code: 403, Message: "permission denied", Explanation: publicReason(err)}
	case errors.Is(err, authz.ErrNotFound):
		return http.StatusNotFound, Problem{Code: 404, Message: "not found", Explanation: publicReason(err)}
	case errors.Is(err, authz.ErrConflict):
		return http.StatusConflict, Problem{Code: 409, Message: "already exists", Explanation: publicReason(err)}
	case errors.Is(err, authz.ErrThrottled):
		return http.StatusTooManyRequests, Problem{Code: 429, Message: "too many failed sign-in attempts", Explanation: publicReason(err)}
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

// publicReason returns the error text: authz errors are written to be shown
// to clients (they never contain secrets).
func publicReason(err error) string { return err.Error() }

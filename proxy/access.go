package proxy

import (
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/proxy/accesslog"
)

// requestIDHeader is the request id a proxy in front may have set.
const requestIDHeader = "X-Request-Id"

// LogDecision writes the access-log line of a decided request: the
// decision is v's, status what the caller was answered (a 302 to the
// login page, the upstream's status), start when the request arrived. Every
// dialect calls it once per request; it costs no allocation and no
// system call (lines are written in the background), and nothing when
// the access log is off.
func (s *Server) LogDecision(a *Attempt, v *Verdict, status int, start time.Time) {
	if s.access == nil {
		return
	}
	e := accesslog.Entry{
		Time: start, Decision: accesslog.DecisionOf(v.Status), Dialect: string(a.Dialect), Rule: v.Rule, Subject: v.subject,
		Method: a.Method, Host: a.Host, Path: v.Path, Status: status,
		Latency: time.Since(start), RequestID: a.RequestID,
	}
	if !v.normalized {
		// Refused before normalisation: the raw path, never the query.
		raw, _, _ := strings.Cut(a.Target, "?")
		e.RawPath, _, _ = strings.Cut(raw, "#")
		if e.RawPath == "" {
			e.RawPath = "-"
		}
	}
	s.access.Log(&e)
}

// logAPI is the echo middleware that writes the access line of requests
// to Portcullis's own endpoints. It turns a handler's error into the
// response itself (the one error handler) so that the line carries the
// final status.
func (s *Server) logAPI(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		if err := next(c); err != nil {
			c.Error(err)
		}
		req := c.Request()
		sc := scopeOf(c)
		e := accesslog.Entry{
			Time: start, Dialect: string(DialectAPI), Rule: c.Path(), Method: req.Method, Host: req.Host,
			RawPath: req.URL.EscapedPath(), Status: c.Response().Status, Latency: time.Since(start), RequestID: sc.requestID,
		}
		if sc.access != nil {
			e.Subject = sc.access.Subject
		}
		if e.Status == 0 {
			e.Status = http.StatusOK
		}
		s.access.Log(&e)
		return nil
	}
}

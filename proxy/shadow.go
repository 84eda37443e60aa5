package proxy

import (
	"context"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/proxy/rules"
)

// shadow evaluates the shadow rules for a request the active rules have
// decided (activeAllows, with the verified caller acc when there was one)
// and reports where they disagree. It never changes the verdict.
func (s *Server) shadow(ctx context.Context, a *Attempt, v *Verdict, acc *authz.Access, activeAllows bool) {
	if s.shadows == nil || a.Permission != "" {
		return
	}
	m, err := s.shadows.Match(rules.Request{Method: a.Method, Host: rules.HostOnly(a.Host), Path: v.Path, Header: a.Header})
	shadowAllows := false
	shadowRule := m.Rule
	switch {
	case err != nil:
		shadowRule = "bad-request"
	case m.Outcome == rules.Public:
		shadowAllows = true
	case m.Outcome == rules.Protected:
		shadowAllows = acc != nil && s.svc.Check(ctx, *acc, m.Permission) == nil
	default:
		shadowRule = "no-match"
		shadowAllows = acc != nil && s.cfg.Unmatched == UnmatchedAuthenticated
	}
	if shadowAllows == activeAllows {
		return
	}
	kind := "would_deny"
	if shadowAllows {
		kind = "would_allow"
	}
	if s.metrics != nil {
		s.metrics.shadowDisagreements.WithLabelValues(kind).Inc()
	}
	s.log.Warn("shadow rules disagree", "shadow", kind, "active_rule", v.Rule, "shadow_rule", shadowRule,
		"method", a.Method, "host", a.Host, "path", v.Path.String(), "dialect", string(a.Dialect))
}

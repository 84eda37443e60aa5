package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// Audit operations, the "op" field of an audit record.
const (
	AuditGrantAdd       = "grant.add"
	AuditGrantRemove    = "grant.remove"
	AuditUserCreate     = "user.create"
	AuditUserUpdate     = "user.update"
	AuditUserDelete     = "user.delete"
	AuditUserPassword   = "user.password"
	AuditTokenCreate    = "token.create"
	AuditTokenRevoke    = "token.revoke"
	AuditClientCreate   = "client.create"
	AuditClientDelete   = "client.delete"
	AuditKeyRotate      = "signing_key.rotate"
	auditActorAnonymous = "anonymous"
)

// AuditRecord writes one audit record to log: who (actor, a subject id)
// made which change (op and its targets in attrs), committed at store
// revision rev. Records carry "log":"audit" to tell them from other
// lines. Never pass a token, password or secret in attrs: ids, subjects
// and permission strings only. A nil log records nothing.
func AuditRecord(log *slog.Logger, requestID, actor, op string, rev authz.Revision, attrs ...slog.Attr) {
	if log == nil {
		return
	}
	all := make([]slog.Attr, 0, len(attrs)+5)
	all = append(all, slog.String("log", "audit"), slog.String("op", op), slog.String("actor", actor))
	all = append(all, attrs...)
	all = append(all, slog.Int64("revision", rev))
	if requestID != "" {
		all = append(all, slog.String("request_id", requestID))
	}
	// Synchronous on purpose: administrative changes are rare, and their
	// record must not be dropped the way a busy access log may drop lines.
	log.LogAttrs(context.Background(), slog.LevelInfo, "audit", all...)
}

// auditChange records a change made through the API. A zero revision
// means nothing was written (revoking an unknown token) and is not
// recorded.
func (s *Server) auditChange(c echo.Context, actor, op string, rev authz.Revision, attrs ...slog.Attr) {
	if s.audit == nil || rev == 0 {
		return
	}
	AuditRecord(s.audit, scopeOf(c).requestID, actor, op, rev, attrs...)
}

// actorOf is the verified caller of the request, or "anonymous" (open
// registration).
func actorOf(c echo.Context) string {
	if sc := scopeOf(c); sc.access != nil && sc.access.Subject != "" {
		return sc.access.Subject
	}
	return auditActorAnonymous
}

// tokenAttrs describe a token without its secret.
func tokenAttrs(t authz.TokenInfo) []slog.Attr {
	return []slog.Attr{
		slog.String("token_id", t.ID), slog.String("subject", t.Subject), slog.String("token_type", t.Type),
		slog.String("token_purpose", t.Purpose), slog.Any("scopes", slices.Clone(t.Scopes)),
	}
}

// patchFields lists the fields a JSON merge patch sets, never their
// values.
func patchFields(patch []byte) []string {
	var m map[string]json.RawMessage
	if json.Unmarshal(patch, &m) != nil {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

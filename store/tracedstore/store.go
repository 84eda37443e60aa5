// Package tracedstore wraps an authz.Store with OpenTelemetry spans, one
// per store call, as children of the caller's span (a decision, an API
// request). It is only installed when tracing is on, so an untraced
// server pays nothing for it.
package tracedstore

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/portcullis/portcullis/authz"
)

// Store is an authz.Store whose calls are traced. Span attributes name
// the operation only: never keys, which may be token digests or user ids.
type Store struct {
	next   authz.Store
	tracer trace.Tracer
}

var _ authz.Store = (*Store)(nil)

// New wraps next.
func New(next authz.Store, tracer trace.Tracer) *Store {
	return &Store{next: next, tracer: tracer}
}

// start opens a client span named after the store operation.
func (s *Store) start(ctx context.Context, op string) (context.Context, trace.Span) {
	return s.tracer.Start(ctx, "store."+op, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("db.system.name", "etcd"), attribute.String("db.operation.name", op)))
}

// end records err (not-found and conflict are answers, not failures)
// and ends the span.
func end(span trace.Span, err error) {
	if err != nil && !isAnswer(err) {
		span.RecordError(err)
		span.SetStatus(codes.Error, "store call failed")
	}
	span.End()
}

func isAnswer(err error) bool {
	return errors.Is(err, authz.ErrNotFound) || errors.Is(err, authz.ErrConflict)
}

// Watch is not traced: it runs for the life of the server.
func (s *Store) Watch(ctx context.Context, after authz.Revision, fn func(authz.Change)) error {
	return s.next.Watch(ctx, after, fn)
}

// CurrentRevision traces authz.Store.CurrentRevision.
func (s *Store) CurrentRevision(ctx context.Context) (authz.Revision, error) {
	ctx, span := s.start(ctx, "CurrentRevision")
	r0, err := s.next.CurrentRevision(ctx)
	end(span, err)
	return r0, err
}

// AddGrant traces authz.Store.AddGrant.
func (s *Store) AddGrant(ctx context.Context, resource, grant string) (authz.Revision, error) {
	ctx, span := s.start(ctx, "AddGrant")
	r0, err := s.next.AddGrant(ctx, resource, grant)
	end(span, err)
	return r0, err
}

// RemoveGrants traces authz.Store.RemoveGrants.
func (s *Store) RemoveGrants(ctx context.Context, resource string, grants []string) (authz.Revision, error) {
	ctx, span := s.start(ctx, "RemoveGrants")
	r0, err := s.next.RemoveGrants(ctx, resource, grants)
	end(span, err)
	return r0, err
}

// Grants traces authz.Store.Grants.
func (s *Store) Grants(ctx context.Context, resources []string) (map[string][]string, authz.Revision, error) {
	ctx, span := s.start(ctx, "Grants")
	r0, r1, err := s.next.Grants(ctx, resources)
	end(span, err)
	return r0, r1, err
}

// ResourcesWithGrant traces authz.Store.ResourcesWithGrant.
func (s *Store) ResourcesWithGrant(ctx context.Context, grant, prefix string) ([]string, error) {
	ctx, span := s.start(ctx, "ResourcesWithGrant")
	r0, err := s.next.ResourcesWithGrant(ctx, grant, prefix)
	end(span, err)
	return r0, err
}

// Subject traces authz.Store.Subject.
func (s *Store) Subject(ctx context.Context, subject, jti string) (authz.SubjectSnapshot, error) {
	ctx, span := s.start(ctx, "Subject")
	r0, err := s.next.Subject(ctx, subject, jti)
	end(span, err)
	return r0, err
}

// CreateToken traces authz.Store.CreateToken.
func (s *Store) CreateToken(ctx context.Context, t authz.TokenRecord) (authz.Revision, error) {
	ctx, span := s.start(ctx, "CreateToken")
	r0, err := s.next.CreateToken(ctx, t)
	end(span, err)
	return r0, err
}

// Token traces authz.Store.Token.
func (s *Store) Token(ctx context.Context, digest string) (authz.TokenRecord, error) {
	ctx, span := s.start(ctx, "Token")
	r0, err := s.next.Token(ctx, digest)
	end(span, err)
	return r0, err
}

// TokenByID traces authz.Store.TokenByID.
func (s *Store) TokenByID(ctx context.Context, id string) (authz.TokenRecord, error) {
	ctx, span := s.start(ctx, "TokenByID")
	r0, err := s.next.TokenByID(ctx, id)
	end(span, err)
	return r0, err
}

// Tokens traces authz.Store.Tokens.
func (s *Store) Tokens(ctx context.Context, subject string) ([]authz.TokenRecord, error) {
	ctx, span := s.start(ctx, "Tokens")
	r0, err := s.next.Tokens(ctx, subject)
	end(span, err)
	return r0, err
}

// DeleteTokens traces authz.Store.DeleteTokens.
func (s *Store) DeleteTokens(ctx context.Context, tokens []authz.TokenRecord) (authz.Revision, error) {
	ctx, span := s.start(ctx, "DeleteTokens")
	r0, err := s.next.DeleteTokens(ctx, tokens)
	end(span, err)
	return r0, err
}

// RotateToken traces authz.Store.RotateToken.
func (s *Store) RotateToken(ctx context.Context, old, next authz.TokenRecord) (authz.Revision, error) {
	ctx, span := s.start(ctx, "RotateToken")
	r0, err := s.next.RotateToken(ctx, old, next)
	end(span, err)
	return r0, err
}

// RevokeFamily traces authz.Store.RevokeFamily.
func (s *Store) RevokeFamily(ctx context.Context, subject, family string) (authz.Revision, error) {
	ctx, span := s.start(ctx, "RevokeFamily")
	r0, err := s.next.RevokeFamily(ctx, subject, family)
	end(span, err)
	return r0, err
}

// RevokeSession traces authz.Store.RevokeSession.
func (s *Store) RevokeSession(ctx context.Context, jti string, expires time.Time) (authz.Revision, error) {
	ctx, span := s.start(ctx, "RevokeSession")
	r0, err := s.next.RevokeSession(ctx, jti, expires)
	end(span, err)
	return r0, err
}

// SessionRevoked traces authz.Store.SessionRevoked.
func (s *Store) SessionRevoked(ctx context.Context, jti string) (bool, error) {
	ctx, span := s.start(ctx, "SessionRevoked")
	r0, err := s.next.SessionRevoked(ctx, jti)
	end(span, err)
	return r0, err
}

// CreateUser traces authz.Store.CreateUser.
func (s *Store) CreateUser(ctx context.Context, u authz.UserRecord, grants []string) (authz.Revision, error) {
	ctx, span := s.start(ctx, "CreateUser")
	r0, err := s.next.CreateUser(ctx, u, grants)
	end(span, err)
	return r0, err
}

// User traces authz.Store.User.
func (s *Store) User(ctx context.Context, id string) (authz.UserRecord, error) {
	ctx, span := s.start(ctx, "User")
	r0, err := s.next.User(ctx, id)
	end(span, err)
	return r0, err
}

// UserByLogin traces authz.Store.UserByLogin.
func (s *Store) UserByLogin(ctx context.Context, login string) (authz.UserRecord, error) {
	ctx, span := s.start(ctx, "UserByLogin")
	r0, err := s.next.UserByLogin(ctx, login)
	end(span, err)
	return r0, err
}

// Users traces authz.Store.Users.
func (s *Store) Users(ctx context.Context) ([]authz.UserRecord, error) {
	ctx, span := s.start(ctx, "Users")
	r0, err := s.next.Users(ctx)
	end(span, err)
	return r0, err
}

// UpdateUser traces authz.Store.UpdateUser.
func (s *Store) UpdateUser(ctx context.Context, id string, update func(*authz.UserRecord) error, dropToken func(authz.TokenRecord) bool) (authz.UserRecord, authz.Revision, error) {
	ctx, span := s.start(ctx, "UpdateUser")
	r0, r1, err := s.next.UpdateUser(ctx, id, update, dropToken)
	end(span, err)
	return r0, r1, err
}

// DeleteUser traces authz.Store.DeleteUser.
func (s *Store) DeleteUser(ctx context.Context, id string) (authz.Revision, error) {
	ctx, span := s.start(ctx, "DeleteUser")
	r0, err := s.next.DeleteUser(ctx, id)
	end(span, err)
	return r0, err
}

// CreateClient traces authz.Store.CreateClient.
func (s *Store) CreateClient(ctx context.Context, c authz.ClientRecord) (authz.Revision, error) {
	ctx, span := s.start(ctx, "CreateClient")
	r0, err := s.next.CreateClient(ctx, c)
	end(span, err)
	return r0, err
}

// Client traces authz.Store.Client.
func (s *Store) Client(ctx context.Context, id string) (authz.ClientRecord, error) {
	ctx, span := s.start(ctx, "Client")
	r0, err := s.next.Client(ctx, id)
	end(span, err)
	return r0, err
}

// Clients traces authz.Store.Clients.
func (s *Store) Clients(ctx context.Context) ([]authz.ClientRecord, error) {
	ctx, span := s.start(ctx, "Clients")
	r0, err := s.next.Clients(ctx)
	end(span, err)
	return r0, err
}

// DeleteClient traces authz.Store.DeleteClient.
func (s *Store) DeleteClient(ctx context.Context, id string) (authz.Revision, error) {
	ctx, span := s.start(ctx, "DeleteClient")
	r0, err := s.next.DeleteClient(ctx, id)
	end(span, err)
	return r0, err
}

// PutAuthCode traces authz.Store.PutAuthCode.
func (s *Store) PutAuthCode(ctx context.Context, digest string, c authz.AuthCode) error {
	ctx, span := s.start(ctx, "PutAuthCode")
	err := s.next.PutAuthCode(ctx, digest, c)
	end(span, err)
	return err
}

// TakeAuthCode traces authz.Store.TakeAuthCode.
func (s *Store) TakeAuthCode(ctx context.Context, digest string) (authz.AuthCode, error) {
	ctx, span := s.start(ctx, "TakeAuthCode")
	r0, err := s.next.TakeAuthCode(ctx, digest)
	end(span, err)
	return r0, err
}

// RecordAuthCodeIssue traces authz.Store.RecordAuthCodeIssue.
func (s *Store) RecordAuthCodeIssue(ctx context.Context, digest, family string, access *authz.IssuedAccess) error {
	ctx, span := s.start(ctx, "RecordAuthCodeIssue")
	err := s.next.RecordAuthCodeIssue(ctx, digest, family, access)
	end(span, err)
	return err
}

// ReplayAuthCode traces authz.Store.ReplayAuthCode.
func (s *Store) ReplayAuthCode(ctx context.Context, digest string) (authz.UsedAuthCode, error) {
	ctx, span := s.start(ctx, "ReplayAuthCode")
	r0, err := s.next.ReplayAuthCode(ctx, digest)
	end(span, err)
	return r0, err
}

// TakeLoginAttempt traces authz.Store.TakeLoginAttempt.
func (s *Store) TakeLoginAttempt(ctx context.Context, account string, limit int, window time.Duration) (id string, ok bool, retryAt time.Time, err error) {
	ctx, span := s.start(ctx, "TakeLoginAttempt")
	id, ok, retryAt, err = s.next.TakeLoginAttempt(ctx, account, limit, window)
	end(span, err)
	return id, ok, retryAt, err
}

// ReturnLoginAttempt traces authz.Store.ReturnLoginAttempt.
func (s *Store) ReturnLoginAttempt(ctx context.Context, account, id string) error {
	ctx, span := s.start(ctx, "ReturnLoginAttempt")
	err := s.next.ReturnLoginAttempt(ctx, account, id)
	end(span, err)
	return err
}

// SigningKeys traces authz.Store.SigningKeys.
func (s *Store) SigningKeys(ctx context.Context) ([]authz.SigningKey, error) {
	ctx, span := s.start(ctx, "SigningKeys")
	r0, err := s.next.SigningKeys(ctx)
	end(span, err)
	return r0, err
}

// AddSigningKey traces authz.Store.AddSigningKey.
func (s *Store) AddSigningKey(ctx context.Context, k authz.SigningKey) (authz.Revision, error) {
	ctx, span := s.start(ctx, "AddSigningKey")
	r0, err := s.next.AddSigningKey(ctx, k)
	end(span, err)
	return r0, err
}

// UpdateSigningKey traces authz.Store.UpdateSigningKey.
func (s *Store) UpdateSigningKey(ctx context.Context, k authz.SigningKey) (authz.Revision, error) {
	ctx, span := s.start(ctx, "UpdateSigningKey")
	r0, err := s.next.UpdateSigningKey(ctx, k)
	end(span, err)
	return r0, err
}

// DeleteSigningKey traces authz.Store.DeleteSigningKey.
func (s *Store) DeleteSigningKey(ctx context.Context, id string) (authz.Revision, error) {
	ctx, span := s.start(ctx, "DeleteSigningKey")
	r0, err := s.next.DeleteSigningKey(ctx, id)
	end(span, err)
	return r0, err
}

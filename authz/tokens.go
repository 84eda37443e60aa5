package authz

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// apiTokenPrefix marks Portcullis API tokens so secret scanners can find
// leaked ones; it carries no meaning for verification.
const apiTokenPrefix = "pct_"

// TokenSpec describes a token to create.
type TokenSpec struct {
	// Subject the token acts as; default: the caller's subject.
	Subject string
	// Scopes bound what the token can do; default: the caller token's scopes.
	Scopes []string
	// Type is TokenTypeAPI (default) or TokenTypeSession.
	Type        string
	Purpose     string
	Description string
	// ExpiresAt is optional for API tokens; sessions default to the session TTL.
	ExpiresAt *time.Time
	ClientID  string
}

// reservedPurposes cannot be requested by clients through CreateToken; the
// login and OAuth2 flows issue them.
var reservedPurposes = []string{PurposeLogin, PurposeRefresh}

const (
	maxScopes         = 100
	maxDescriptionLen = 1024
	maxPurposeLen     = 64
)

// Check re-evaluates an already verified caller for another permission
// (contaxy's "who may call" rules), without needing its token secret.
func (s *Service) Check(ctx context.Context, caller Access, permission string) error {
	return s.verifyDigest(ctx, caller, permission)
}

// CreateToken is contaxy's create_token for a verified caller: every
// requested scope must itself be granted to the caller; no scope means the
// caller token's scopes. A subject other than the caller's requires admin
// on that subject. Reserved purposes (login-token, refresh-token) are refused.
// The secret is returned once and never stored.
func (s *Service) CreateToken(ctx context.Context, caller Access, spec TokenSpec) (string, TokenInfo, Revision, error) {
	if slices.Contains(reservedPurposes, strings.TrimSpace(spec.Purpose)) {
		return "", TokenInfo{}, 0, invalid("token purpose", quote(spec.Purpose)+" is reserved")
	}
	if spec.Subject == "" {
		spec.Subject = caller.Subject
	}
	if spec.Subject != caller.Subject {
		if err := s.Check(ctx, caller, spec.Subject+"#admin"); err != nil {
			return "", TokenInfo{}, 0, err
		}
	}
	if len(spec.Scopes) == 0 {
		spec.Scopes = slices.Clone(caller.Token.Scopes)
	}
	if len(spec.Scopes) > maxScopes {
		return "", TokenInfo{}, 0, invalid("scope", fmt.Sprintf("more than %d scopes", maxScopes))
	}
	for _, sc := range spec.Scopes {
		p, err := ParsePermission(sc)
		if err != nil {
			return "", TokenInfo{}, 0, err
		}
		if err := s.Check(ctx, caller, p.String()); err != nil {
			if errors.Is(err, ErrPermissionDenied) {
				return "", TokenInfo{}, 0, fmt.Errorf("%w: scope %s is not granted to the caller", ErrPermissionDenied, p)
			}
			return "", TokenInfo{}, 0, err
		}
	}
	return s.IssueToken(ctx, spec)
}

// IssueToken creates a token without checking who asks; the caller is
// responsible for authorization. API tokens are random (256 bits) and stored
// only as a SHA-256 digest; sessions are signed JWTs.
func (s *Service) IssueToken(ctx context.Context, spec TokenSpec) (string, TokenInfo, Revision, error) {
	scopes, err := canonicalScopes(spec.Scopes)
	if err != nil {
		return "", TokenInfo{}, 0, err
	}
	// The canonical form is what is stored: user checks, listings and the
	// cascade of DeleteUser find a token by its subject "users/<id>", so
	// " users/<id>/" would outlive a disabled or deleted user.
	subject, err := ParseResource(spec.Subject)
	if err != nil {
		return "", TokenInfo{}, 0, fmt.Errorf("token subject: %w", err)
	}
	spec.Subject = subject
	if len(spec.Description) > maxDescriptionLen {
		return "", TokenInfo{}, 0, invalid("description", fmt.Sprintf("longer than %d bytes", maxDescriptionLen))
	}
	// JSON (the store's encoding) would replace invalid UTF-8 silently.
	if !utf8.ValidString(spec.Description) {
		return "", TokenInfo{}, 0, invalid("description", "not valid UTF-8")
	}
	spec.Purpose = strings.TrimSpace(spec.Purpose)
	if len(spec.Purpose) > maxPurposeLen || !utf8.ValidString(spec.Purpose) || strings.ContainsFunc(spec.Purpose, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", TokenInfo{}, 0, invalid("token purpose", "at most 64 printable characters of valid UTF-8")
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	if spec.ExpiresAt != nil && !spec.ExpiresAt.After(now) {
		return "", TokenInfo{}, 0, invalid("expires_at", "must be in the future")
	}
	switch spec.Type {
	case TokenTypeSession:
		ttl := s.cfg.SessionTTL
		if spec.ExpiresAt != nil {
			ttl = min(ttl, spec.ExpiresAt.Sub(now))
		}
		var epoch uint64
		if id, _ := subjectIDs(spec.Subject); id != "" {
			u, err := s.store.User(ctx, id)
			if err != nil {
				return "", TokenInfo{}, 0, fmt.Errorf("issue session: %w", err)
			}
			epoch = u.SessionEpoch
		}
		tok, jti, exp, err := s.issueSession(spec.Subject, scopes, spec.Purpose, spec.ClientID, epoch, ttl)
		if err != nil {
			return "", TokenInfo{}, 0, err
		}
		info := TokenInfo{ID: jti, Type: TokenTypeSession, Purpose: spec.Purpose, Subject: spec.Subject, Scopes: scopes,
			Description: spec.Description, CreatedAt: now, ExpiresAt: &exp, ClientID: spec.ClientID}
		return tok, info, 0, nil
	case TokenTypeAPI, "":
		secret := apiTokenPrefix + randomString(32)
		rec := TokenRecord{
			ID: randomID(10), Digest: digestOf(secret).hex(), Type: TokenTypeAPI, Purpose: spec.Purpose,
			Subject: spec.Subject, Scopes: scopes, Description: spec.Description, CreatedAt: now,
			ExpiresAt: spec.ExpiresAt, ClientID: spec.ClientID,
		}
		rev, err := s.store.CreateToken(ctx, rec)
		if err != nil {
			return "", TokenInfo{}, 0, fmt.Errorf("create token: %w", err)
		}
		return secret, rec.info(), rev, nil
	default:
		return "", TokenInfo{}, 0, invalid("token type", quote(spec.Type)+" (want api-token or session-token)")
	}
}

func canonicalScopes(in []string) ([]string, error) {
	// One bound for every way in (tokens, clients, codes), so no record
	// grows past what a token's scopes may hold.
	if len(in) > maxScopes {
		return nil, invalid("scope", fmt.Sprintf("more than %d scopes", maxScopes))
	}
	out := make([]string, 0, len(in))
	for _, sc := range in {
		p, err := ParsePermission(sc)
		if err != nil {
			return nil, fmt.Errorf("scope: %w", err)
		}
		if c := p.String(); !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// ListAPITokens lists the stored access tokens of subject (not refresh
// tokens), oldest first. Secrets are never part of the answer.
func (s *Service) ListAPITokens(ctx context.Context, subject string) ([]TokenInfo, error) {
	sub, err := ParseResource(subject)
	if err != nil {
		return nil, err
	}
	recs, err := s.store.Tokens(ctx, sub)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	now := s.now()
	out := []TokenInfo{}
	for i := range recs {
		r := &recs[i]
		if r.Purpose == PurposeRefresh || (r.ExpiresAt != nil && !now.Before(*r.ExpiresAt)) {
			continue
		}
		out = append(out, r.info())
	}
	slices.SortFunc(out, func(a, b TokenInfo) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// mayManageToken reports whether caller may revoke a token of subject
// issued to clientID: its own, one of a subject it administers, or (for a
// client) one issued to it.
func (s *Service) mayManageToken(ctx context.Context, caller *Access, subject, clientID string) error {
	if caller == nil || caller.Subject == subject {
		return nil
	}
	if clientID != "" && caller.Subject == "clients/"+clientID {
		return nil
	}
	return s.Check(ctx, *caller, subject+"#admin")
}

// RevokeToken revokes a token given by value (RFC 7009): an API or login
// token is deleted, a refresh token revokes its whole family, a session JWT
// is remembered as revoked until it expires. Unknown, invalid and expired
// tokens are not an error. caller, when not nil, must own the token, hold
// admin on its subject, or be the client it was issued to. This replica
// never accepts the token again once RevokeToken returned.
func (s *Service) RevokeToken(ctx context.Context, caller *Access, token string) (Revision, error) {
	if token == "" || len(token) > maxTokenLen {
		return 0, nil
	}
	if looksLikeJWT(token) {
		c, err := s.keys.parse(ctx, token)
		if err != nil {
			return 0, nil
		}
		if err := s.mayManageToken(ctx, caller, c.Subject, c.ClientID); err != nil {
			return 0, err
		}
		rev, err := s.store.RevokeSession(ctx, c.ID, c.ExpiresAt.Time)
		if err != nil {
			return 0, fmt.Errorf("revoke session: %w", err)
		}
		s.gens.bump(slotSession, c.ID)
		return rev, nil
	}
	rec, err := s.store.Token(ctx, digestOf(token).hex())
	if isNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("revoke token: %w", err)
	}
	if err := s.mayManageToken(ctx, caller, rec.Subject, rec.ClientID); err != nil {
		return 0, err
	}
	return s.deleteToken(ctx, rec)
}

// RevokeTokenByID revokes a stored token by its public id. ErrNotFound if
// there is no such token.
func (s *Service) RevokeTokenByID(ctx context.Context, caller *Access, id string) (Revision, error) {
	if err := validateID("token id", id); err != nil {
		return 0, err
	}
	rec, err := s.store.TokenByID(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("revoke token: %w", err)
	}
	if err := s.mayManageToken(ctx, caller, rec.Subject, rec.ClientID); err != nil {
		if errors.Is(err, ErrPermissionDenied) {
			// Do not disclose that someone else's token id exists.
			return 0, fmt.Errorf("revoke token: %w", ErrNotFound)
		}
		return 0, err
	}
	return s.deleteToken(ctx, rec)
}

func (s *Service) deleteToken(ctx context.Context, rec TokenRecord) (Revision, error) {
	var rev Revision
	var err error
	if rec.Purpose == PurposeRefresh && rec.Family != "" {
		rev, err = s.store.RevokeFamily(ctx, rec.Subject, rec.Family)
	} else {
		rev, err = s.store.DeleteTokens(ctx, []TokenRecord{rec})
	}
	if err != nil {
		return 0, fmt.Errorf("revoke token: %w", err)
	}
	s.gens.bump(slotToken, rec.Digest)
	return rev, nil
}

// Introspection is an RFC 7662 introspection response.
type Introspection struct {
	Active    bool   `json:"active"`
	Scope     string `json:"scope,omitempty"`
	ClientID  string `json:"client_id,omitempty"`
	Username  string `json:"username,omitempty"`
	TokenType string `json:"token_type,omitempty"`
	Exp       int64  `json:"exp,omitempty"`
	Iat       int64  `json:"iat,omitempty"`
	Sub       string `json:"sub,omitempty"`
	Jti       string `json:"jti,omitempty"`
	Purpose   string `json:"token_purpose,omitempty"`
}

// Introspect describes a token (RFC 7662). Anything invalid, expired or
// revoked is {"active": false}; store failures are errors, not "inactive".
func (s *Service) Introspect(ctx context.Context, token string) (Introspection, error) {
	acc, err := s.VerifyAccess(ctx, token, "", VerifyOptions{})
	if err == nil {
		return s.introspection(ctx, acc.Token, "Bearer"), nil
	}
	if !errors.Is(err, ErrUnauthenticated) {
		return Introspection{}, err
	}
	if token == "" || len(token) > maxTokenLen || looksLikeJWT(token) {
		return Introspection{}, nil
	}
	// A refresh token is not an access token, but it can be introspected.
	rec, err := s.store.Token(ctx, digestOf(token).hex())
	if isNotFound(err) {
		return Introspection{}, nil
	}
	if err != nil {
		return Introspection{}, fmt.Errorf("introspect: %w", err)
	}
	if rec.Purpose != PurposeRefresh || rec.Used || (rec.ExpiresAt != nil && !s.now().Before(*rec.ExpiresAt)) {
		return Introspection{}, nil
	}
	if id, _ := subjectIDs(rec.Subject); id != "" {
		u, err := s.store.User(ctx, id)
		if err != nil || u.Disabled {
			return Introspection{}, nil
		}
	}
	return s.introspection(ctx, rec.info(), "refresh_token"), nil
}

func (s *Service) introspection(ctx context.Context, t TokenInfo, typ string) Introspection {
	in := Introspection{
		Active: true, Scope: strings.Join(t.Scopes, " "), ClientID: t.ClientID, TokenType: typ,
		Iat: t.CreatedAt.Unix(), Sub: t.Subject, Jti: t.ID, Purpose: t.Purpose,
	}
	if t.ExpiresAt != nil {
		in.Exp = t.ExpiresAt.Unix()
	}
	if id, _ := subjectIDs(t.Subject); id != "" {
		if u, err := s.store.User(ctx, id); err == nil {
			in.Username = u.Username
		}
	}
	return in
}

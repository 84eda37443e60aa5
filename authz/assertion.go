package authz

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// assertionClaims is the identity assertion forward-auth hands to an
// upstream: who the caller is and which permission was checked. Its
// audience is never the session audience, so an assertion leaked by an
// upstream cannot be replayed to Portcullis as a session token.
type assertionClaims struct {
	jwt.RegisteredClaims
	Permission string `json:"permission,omitempty"`
	Username   string `json:"preferred_username,omitempty"`
	Email      string `json:"email,omitempty"`
	TokenUse   string `json:"token_use"`
}

type assertionEntry struct {
	subject, permission, audience string
	token                         string
	renewAt                       time.Time
}

var assertionSeed = maphash.MakeSeed()

// maxAssertionTTL bounds an assertion's lifetime; signing keys outlive
// their retirement by at least this much (RotateSigningKey).
const maxAssertionTTL = time.Hour

// Assertion returns a short-lived JWT, signed with the session signing key
// (so upstreams verify it offline against /.well-known/jwks.json), stating
// acc's subject and the permission it was granted, for audience. Signing
// costs tens of microseconds, so an assertion is reused for the first half
// of its lifetime.
func (s *Service) Assertion(ctx context.Context, acc Access, permission, audience string, ttl time.Duration) (string, error) {
	if s.cfg.HMACSecret != nil {
		return "", errors.New("identity assertions need asymmetric signing keys (not available with an HS256 secret)")
	}
	if audience == "" || audience == s.cfg.Audience {
		return "", fmt.Errorf("%w: assertion audience must be set and differ from the session audience %q", ErrInvalid, s.cfg.Audience)
	}
	if ttl <= 0 || ttl > maxAssertionTTL {
		return "", fmt.Errorf("%w: assertion lifetime %v: want (0, 1h]", ErrInvalid, ttl)
	}
	var h maphash.Hash
	h.SetSeed(assertionSeed)
	h.WriteString(acc.Subject)
	h.WriteByte(0)
	h.WriteString(permission)
	h.WriteByte(0)
	h.WriteString(audience)
	key := h.Sum64()
	now := s.now()
	if e, ok := s.assertions.Get(key); ok && e.subject == acc.Subject && e.permission == permission && e.audience == audience && now.Before(e.renewAt) {
		return e.token, nil
	}
	iat := now.Truncate(time.Second)
	c := &assertionClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    s.cfg.Issuer,
			Subject:   acc.Subject,
			Audience:  jwt.ClaimStrings{audience},
			IssuedAt:  jwt.NewNumericDate(iat),
			NotBefore: jwt.NewNumericDate(iat),
			ExpiresAt: jwt.NewNumericDate(iat.Add(ttl)),
			ID:        randomString(16),
		},
		Permission: permission,
		Username:   acc.Username,
		Email:      acc.Email,
		TokenUse:   "assertion",
	}
	tok, err := s.keys.sign(c)
	if err != nil {
		return "", err
	}
	s.assertions.Set(key, &assertionEntry{subject: acc.Subject, permission: permission, audience: audience, token: tok, renewAt: iat.Add(ttl / 2)}, int64(256+len(tok)), ttl/2)
	return tok, nil
}

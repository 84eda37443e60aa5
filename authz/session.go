package authz

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Session JWT signing algorithms.
const (
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"
	AlgHS256 = "HS256"
)

// hmacKeyID names the single HS256 key in token headers.
const hmacKeyID = "hs256"

// sessionClaims are the claims of a Portcullis session JWT.
type sessionClaims struct {
	jwt.RegisteredClaims
	Scope    string `json:"scope,omitempty"`
	Purpose  string `json:"token_purpose,omitempty"`
	Epoch    uint64 `json:"sep"`
	ClientID string `json:"client_id,omitempty"`
}

// PublicKey is a session verification key, for publishing as a JWKS.
type PublicKey struct {
	ID        string
	Algorithm string
	Key       crypto.PublicKey
}

type verifyKey struct {
	alg string
	key any
}

// keyring holds the keys that sign and verify session JWTs. With an HMAC
// secret it is static; otherwise keys live in the store, so every replica
// signs with the same newest key and verifies with all unexpired ones.
type keyring struct {
	s *Service

	mu        sync.RWMutex
	signKID   string
	signAlg   string
	signKey   any
	verify    map[string]verifyKey
	parser    *jwt.Parser
	lastLoad  time.Time
	reloading sync.Mutex
}

func newKeyring(ctx context.Context, s *Service) (*keyring, error) {
	k := &keyring{s: s}
	if s.cfg.HMACSecret != nil {
		k.signKID, k.signAlg, k.signKey = hmacKeyID, AlgHS256, s.cfg.HMACSecret
		k.verify = map[string]verifyKey{hmacKeyID: {alg: AlgHS256, key: s.cfg.HMACSecret}}
		k.parser = k.newParser([]string{AlgHS256})
		return k, nil
	}
	if err := k.reload(ctx); err != nil {
		return nil, err
	}
	k.mu.RLock()
	have := k.signKey != nil
	k.mu.RUnlock()
	if !have {
		if _, _, err := s.RotateSigningKey(ctx); err != nil {
			return nil, err
		}
		if err := k.reload(ctx); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func (k *keyring) newParser(algs []string) *jwt.Parser {
	return jwt.NewParser(
		jwt.WithValidMethods(algs),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithIssuer(k.s.cfg.Issuer),
		jwt.WithAudience(k.s.cfg.Audience),
		jwt.WithStrictDecoding(),
		jwt.WithLeeway(5*time.Second),
		jwt.WithTimeFunc(k.s.now),
	)
}

// reload reads the keys from the store.
func (k *keyring) reload(ctx context.Context) error {
	if k.s.cfg.HMACSecret != nil {
		return nil
	}
	k.reloading.Lock()
	defer k.reloading.Unlock()
	stored, err := k.s.store.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	sort.Slice(stored, func(i, j int) bool { return keyOlder(stored[i], stored[j]) })
	verify := make(map[string]verifyKey, len(stored))
	var signKID, signAlg string
	var signKey any
	algSet := map[string]bool{}
	for _, sk := range stored {
		priv, err := x509.ParsePKCS8PrivateKey(sk.PrivateKey)
		if err != nil {
			k.s.log.Warn("skipping unreadable signing key", "kid", sk.ID, "err", err)
			continue
		}
		var pub any
		switch p := priv.(type) {
		case ed25519.PrivateKey:
			if sk.Algorithm != AlgEdDSA {
				continue
			}
			pub = p.Public()
		case *ecdsa.PrivateKey:
			if sk.Algorithm != AlgES256 || p.Curve != elliptic.P256() {
				continue
			}
			pub = &p.PublicKey
		default:
			continue
		}
		verify[sk.ID] = verifyKey{alg: sk.Algorithm, key: pub}
		algSet[sk.Algorithm] = true
		if sk.RetiredAt == nil {
			signKID, signAlg, signKey = sk.ID, sk.Algorithm, priv
		}
	}
	algs := make([]string, 0, len(algSet))
	for a := range algSet {
		algs = append(algs, a)
	}
	sort.Strings(algs)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.verify = verify
	if signKey != nil {
		k.signKID, k.signAlg, k.signKey = signKID, signAlg, signKey
	}
	if len(algs) == 0 {
		algs = []string{k.s.cfg.SessionSigningAlgorithm}
	}
	k.parser = k.newParser(algs)
	k.lastLoad = time.Now()
	return nil
}

func (k *keyring) sign(c jwt.Claims) (string, error) {
	k.mu.RLock()
	kid, alg, key := k.signKID, k.signAlg, k.signKey
	k.mu.RUnlock()
	if key == nil {
		return "", errors.New("sign session: no signing key")
	}
	t := jwt.NewWithClaims(jwt.GetSigningMethod(alg), c)
	t.Header["kid"] = kid
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign session: %w", err)
	}
	return s, nil
}

// parse verifies a session JWT: pinned algorithms, a key chosen only among
// our own keys by kid, required exp, iss and aud, strict base64.
func (k *keyring) parse(ctx context.Context, token string) (*sessionClaims, error) {
	// Go's base64 decoders skip '\r' and '\n', so "<token>\r" would verify
	// as the token itself: only the exact compact serialisation counts.
	for i := 0; i < len(token); i++ {
		if c := token[i]; !(c == '.' || c == '-' || c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return nil, fmt.Errorf("%w: session token has a byte outside base64url", ErrUnauthenticated)
		}
	}
	c, err := k.parseOnce(token)
	if errors.Is(err, errUnknownKID) {
		// A key added by another replica may not have reached us yet.
		k.mu.RLock()
		stale := time.Since(k.lastLoad) > time.Second
		k.mu.RUnlock()
		if stale && k.reload(ctx) == nil {
			c, err = k.parseOnce(token)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("session token: %w: %w", ErrUnauthenticated, err)
	}
	if c.ID == "" || c.Subject == "" {
		return nil, fmt.Errorf("session token: %w: missing jti or sub", ErrUnauthenticated)
	}
	return c, nil
}

var errUnknownKID = errors.New("unknown key id")

func (k *keyring) parseOnce(token string) (*sessionClaims, error) {
	k.mu.RLock()
	parser, verify := k.parser, k.verify
	k.mu.RUnlock()
	c := &sessionClaims{}
	_, err := parser.ParseWithClaims(token, c, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		vk, ok := verify[kid]
		if !ok {
			return nil, errUnknownKID
		}
		if t.Method.Alg() != vk.alg {
			return nil, fmt.Errorf("algorithm %q does not match key %q", t.Method.Alg(), kid)
		}
		return vk.key, nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// PublicKeys returns the keys that verify session JWTs (none with HS256,
// whose key is secret).
func (s *Service) PublicKeys() []PublicKey {
	s.keys.mu.RLock()
	defer s.keys.mu.RUnlock()
	var out []PublicKey
	for kid, vk := range s.keys.verify {
		if vk.alg == AlgHS256 {
			continue
		}
		out = append(out, PublicKey{ID: kid, Algorithm: vk.alg, Key: vk.key})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// keyOlder orders signing keys by the store revision that created them
// (then, for keys without one, by creation time and id): every replica
// signs with the newest key that is not retired. Clocks do not decide, so
// a rotation on a replica whose clock lags still makes the newest key.
func keyOlder(a, b SigningKey) bool {
	if a.Revision != b.Revision {
		return a.Revision < b.Revision
	}
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.Before(b.CreatedAt)
	}
	return a.ID < b.ID
}

// RotateSigningKey generates a new signing key, stores it and makes it the
// one every replica signs with. Older keys are retired: they keep verifying
// the tokens they signed until those expire, and keys retired for longer
// than a session lifetime are deleted. It returns the new key id and the
// store revision of the last change.
//
// Every key but the newest stored one is retired, the new key too if a
// concurrent rotation (another replica starting on an empty store, say)
// stored a newer one meanwhile: no rotation can retire the newest key, so
// replicas rotating together always leave exactly one key to sign with.
func (s *Service) RotateSigningKey(ctx context.Context) (string, Revision, error) {
	if s.cfg.HMACSecret != nil {
		return "", 0, invalid("signing key", "HS256 sessions use the configured secret; rotate it in the configuration")
	}
	var priv crypto.Signer
	var err error
	switch s.cfg.SessionSigningAlgorithm {
	case AlgES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		return "", 0, fmt.Errorf("generate signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", 0, fmt.Errorf("encode signing key: %w", err)
	}
	now := s.now().UTC()
	kid := strings.ToLower(now.Format("20060102")) + "-" + randomID(6)
	rev, err := s.store.AddSigningKey(ctx, SigningKey{ID: kid, Algorithm: s.cfg.SessionSigningAlgorithm, PrivateKey: der, CreatedAt: now})
	if err != nil {
		return "", 0, fmt.Errorf("store signing key: %w", err)
	}
	existing, err := s.store.SigningKeys(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("load signing keys: %w", err)
	}
	if len(existing) == 0 {
		return "", 0, fmt.Errorf("load signing keys: the key just stored is gone")
	}
	newest := slices.MaxFunc(existing, func(a, b SigningKey) int {
		if keyOlder(a, b) {
			return -1
		}
		if keyOlder(b, a) {
			return 1
		}
		return 0
	})
	for _, k := range existing {
		switch {
		case k.ID == newest.ID:
		case k.RetiredAt == nil:
			k.RetiredAt = &now
			r, err := s.store.UpdateSigningKey(ctx, k)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return "", 0, fmt.Errorf("retire signing key %s: %w", k.ID, err)
			}
			rev = max(rev, r)
		case now.Sub(*k.RetiredAt) > max(s.cfg.SessionTTL, maxAssertionTTL)+time.Minute:
			// Nothing it signed is still valid: sessions and identity
			// assertions (up to an hour) alike.
			r, err := s.store.DeleteSigningKey(ctx, k.ID)
			if err != nil {
				return "", 0, fmt.Errorf("delete signing key %s: %w", k.ID, err)
			}
			rev = max(rev, r)
		}
	}
	if s.keys != nil {
		if err := s.keys.reload(ctx); err != nil {
			return "", 0, err
		}
	}
	return kid, rev, nil
}

// issueSession signs a session JWT for subject.
func (s *Service) issueSession(subject string, scopes []string, purpose, clientID string, epoch uint64, ttl time.Duration) (token, jti string, exp time.Time, err error) {
	now := s.now().Truncate(time.Second)
	exp = now.Add(ttl)
	jti = randomString(16)
	c := &sessionClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    s.cfg.Issuer,
			Subject:   subject,
			Audience:  jwt.ClaimStrings{s.cfg.Audience},
			ExpiresAt: jwt.NewNumericDate(exp),
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ID:        jti,
		},
		Scope:    strings.Join(scopes, " "),
		Purpose:  purpose,
		Epoch:    epoch,
		ClientID: clientID,
	}
	token, err = s.keys.sign(c)
	return token, jti, exp, err
}

package proxy

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"encoding/base64"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// metadataPath is the RFC 8414 well-known URI of the server metadata.
const metadataPath = "/.well-known/oauth-authorization-server"

// serverMetadata is RFC 8414 authorization server metadata; the same
// document answers OpenID Connect discovery, for clients that only know
// that path (Portcullis issues no ID tokens).
func (s *Server) serverMetadata(c echo.Context) error {
	base := s.baseURL(c.Request())
	algs := []string{}
	for _, k := range s.svc.PublicKeys() {
		if !contains(algs, k.Algorithm) {
			algs = append(algs, k.Algorithm)
		}
	}
	md := map[string]any{
		"issuer":                                         base,
		"authorization_endpoint":                         base + "/auth/oauth/authorize",
		"token_endpoint":                                 base + "/auth/oauth/token",
		"revocation_endpoint":                            base + "/auth/oauth/revoke",
		"introspection_endpoint":                         base + "/auth/oauth/introspect",
		"jwks_uri":                                       base + "/.well-known/jwks.json",
		"response_types_supported":                       []string{"code"},
		"response_modes_supported":                       []string{"query"},
		"grant_types_supported":                          []string{authz.GrantAuthorizationCode, authz.GrantRefreshToken, authz.GrantClientCredentials, authz.GrantPassword},
		"code_challenge_methods_supported":               []string{"S256"},
		"token_endpoint_auth_methods_supported":          []string{"client_secret_basic", "client_secret_post", "none"},
		"revocation_endpoint_auth_methods_supported":     []string{"client_secret_basic", "client_secret_post", "none"}, // none: public clients (RFC 7009 §2.1)
		"introspection_endpoint_auth_methods_supported":  []string{"client_secret_basic", "client_secret_post"},
		"authorization_response_iss_parameter_supported": true,
		"subject_types_supported":                        []string{"public"},
		"id_token_signing_alg_values_supported":          algs,
	}
	c.Response().Header().Set("Cache-Control", "public, max-age=300")
	return c.JSON(http.StatusOK, md)
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// jwk is one RFC 7517 public key.
type jwk struct {
	Kty string `json:"kty"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y,omitempty"`
}

// jwks is /.well-known/jwks.json: the keys that verify session JWTs (and
// identity assertions), retired ones included while tokens they signed
// live. Empty with HS256 secrets, which must never be published.
func (s *Server) jwks(c echo.Context) error {
	keys := []jwk{}
	b64 := base64.RawURLEncoding.EncodeToString
	for _, k := range s.svc.PublicKeys() {
		switch pub := k.Key.(type) {
		case ed25519.PublicKey:
			keys = append(keys, jwk{Kty: "OKP", Use: "sig", Alg: k.Algorithm, Kid: k.ID, Crv: "Ed25519", X: b64(pub)})
		case *ecdsa.PublicKey:
			raw, err := pub.Bytes() // 0x04 || X || Y
			if err != nil || len(raw) != 65 {
				continue
			}
			keys = append(keys, jwk{Kty: "EC", Use: "sig", Alg: k.Algorithm, Kid: k.ID, Crv: "P-256", X: b64(raw[1:33]), Y: b64(raw[33:])})
		}
	}
	// Short: a verifier that meets an unknown kid refetches anyway.
	c.Response().Header().Set("Cache-Control", "public, max-age=300")
	return c.JSON(http.StatusOK, map[string]any{"keys": keys})
}

// keysPermission guards session signing key rotation.
const keysPermission = "auth/keys#admin"

// rotatedKey answers POST /auth/keys/rotate.
type rotatedKey struct {
	KeyID string `json:"kid"`
}

// rotateSigningKey makes a new session signing key the one every replica
// signs with; tokens signed with older keys verify until they expire, and
// the new public key is in /.well-known/jwks.json at once.
func (s *Server) rotateSigningKey(c echo.Context) error {
	acc, err := s.require(c, keysPermission)
	if err != nil {
		return err
	}
	kid, rev, err := s.svc.RotateSigningKey(c.Request().Context())
	if err != nil {
		return err
	}
	s.auditChange(c, acc.Subject, AuditKeyRotate, rev, slog.String("kid", kid))
	setRevision(c, rev)
	return c.JSON(http.StatusOK, rotatedKey{KeyID: kid})
}

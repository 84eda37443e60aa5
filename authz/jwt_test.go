package authz_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/portcullis/portcullis/authz"
)

// sessionFixture returns a service, a valid session token of a user who
// holds users/<id>#admin, and the token's decoded header and claims.
func sessionFixture(t *testing.T) (*authz.Service, string, map[string]any, map[string]any) {
	t.Helper()
	svc := newService(t)
	mustUser(t, svc, authz.UserInput{Username: "quinn", Password: "password1"})
	tok := login(t, svc, "quinn", "password1").AccessToken
	parts := strings.Split(tok, ".")
	var hdr, claims map[string]any
	for i, v := range []*map[string]any{&hdr, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatal(err)
		}
	}
	if hdr["alg"] != "EdDSA" || hdr["kid"] == "" || claims["jti"] == "" || claims["exp"] == nil {
		t.Fatalf("header %v claims %v", hdr, claims)
	}
	return svc, tok, hdr, claims
}

func encodeSegment(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Each attack is a test case named after it.
func TestSessionTokenAttacks(t *testing.T) {
	svc, valid, hdr, claims := sessionFixture(t)
	if _, err := svc.VerifyAccess(bg, valid, "", authz.VerifyOptions{}); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	parts := strings.Split(valid, ".")
	attackerPub, attackerKey, _ := ed25519.GenerateKey(rand.Reader)
	forge := func(h map[string]any, c map[string]any, method jwt.SigningMethod, key any) string {
		tok := jwt.NewWithClaims(method, jwt.MapClaims(c))
		for k, v := range h {
			if k != "alg" && k != "typ" {
				tok.Header[k] = v
			}
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	with := func(m map[string]any, k string, v any) map[string]any {
		out := map[string]any{}
		for kk, vv := range m {
			out[kk] = vv
		}
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	pubKeys := svc.PublicKeys()
	if len(pubKeys) == 0 {
		t.Fatal("no public keys")
	}
	ourPub := []byte(pubKeys[0].Key.(ed25519.PublicKey))
	attacks := map[string]string{
		"alg none":                 encodeSegment(t, with(hdr, "alg", "none")) + "." + parts[1] + ".",
		"alg None":                 encodeSegment(t, with(hdr, "alg", "None")) + "." + parts[1] + ".",
		"alg NONE without sig dot": encodeSegment(t, with(hdr, "alg", "NONE")) + "." + parts[1],
		"HS256 keyed with our public key (algorithm confusion)": forge(hdr, claims, jwt.SigningMethodHS256, ourPub),
		"contaxy default secret":                                forge(hdr, claims, jwt.SigningMethodHS256, []byte("please-change-this-secret")),
		"attacker key with our kid":                             forge(hdr, claims, jwt.SigningMethodEdDSA, attackerKey),
		"attacker key embedded jwk":                             forge(with(with(hdr, "kid", "evil"), "jwk", map[string]any{"kty": "OKP", "crv": "Ed25519", "x": base64.RawURLEncoding.EncodeToString(attackerPub)}), claims, jwt.SigningMethodEdDSA, attackerKey),
		"attacker jku":                                          forge(with(hdr, "jku", "https://evil.example/jwks.json"), claims, jwt.SigningMethodEdDSA, attackerKey),
		"kid path injection":                                    forge(with(hdr, "kid", "../../../dev/null"), claims, jwt.SigningMethodHS256, []byte{}),
		"tampered subject":                                      parts[0] + "." + encodeSegment(t, with(claims, "sub", "users/admin")) + "." + parts[2],
		"tampered scope":                                        parts[0] + "." + encodeSegment(t, with(claims, "scope", "*#admin x#admin")) + "." + parts[2],
		"signature stripped":                                    parts[0] + "." + parts[1] + ".",
		"truncated signature":                                   parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-4],
		"padded signature":                                      valid + "==",
		"non-canonical base64 in signature":                     parts[0] + "." + parts[1] + "." + flipLowBits(parts[2]),
		"standard base64 alphabet":                              strings.NewReplacer("-", "+", "_", "/").Replace(valid),
		"whitespace around":                                     " " + valid,
		"four segments":                                         valid + ".x",
		"1 MB bearer string":                                    strings.Repeat("A", 1<<20),
	}
	for name, tok := range attacks {
		t.Run(name, func(t *testing.T) {
			if tok == valid {
				t.Skip("attack produced the valid token unchanged")
			}
			_, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{})
			if !errors.Is(err, authz.ErrUnauthenticated) {
				t.Fatalf("accepted or wrong error: %v", err)
			}
		})
	}
	t.Run("non-canonical replay of a revoked session", func(t *testing.T) {
		if _, err := svc.RevokeToken(bg, nil, valid); err != nil {
			t.Fatal(err)
		}
		for _, tok := range []string{valid, parts[0] + "." + parts[1] + "." + flipLowBits(parts[2])} {
			if _, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); !errors.Is(err, authz.ErrUnauthenticated) {
				t.Fatalf("revoked session accepted: %v", err)
			}
		}
	})
}

// flipLowBits changes the unused low bits of the last base64 character, so
// a lenient decoder yields the same bytes from a different string.
func flipLowBits(seg string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[last^1])
}

func TestSessionIssuerAudienceAndExpiry(t *testing.T) {
	prefix := newPrefix("iss")
	now := time.Now()
	cfg := testConfig()
	cfg.Now = func() time.Time { return now }
	svc := startService(t, openStore(t, embeddedEndpoints(t), prefix), cfg)
	other := testConfig()
	other.Issuer = "someone-else"
	foreign := startService(t, openStore(t, embeddedEndpoints(t), prefix), other) // same keys, other issuer
	otherAud := testConfig()
	otherAud.Audience = "another-api"
	foreignAud := startService(t, openStore(t, embeddedEndpoints(t), prefix), otherAud)
	for _, s := range []*authz.Service{foreign, foreignAud} {
		tok, _, _, err := s.IssueToken(bg, authz.TokenSpec{Subject: "agents/x", Scopes: []string{"*#admin"}, Type: authz.TokenTypeSession})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); !errors.Is(err, authz.ErrUnauthenticated) {
			t.Fatalf("token of another issuer/audience accepted: %v", err)
		}
	}
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/x", Scopes: []string{"*#admin"}, Type: authz.TokenTypeSession})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	if _, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); !errors.Is(err, authz.ErrUnauthenticated) {
		t.Fatalf("expired session accepted (cached or not): %v", err)
	}
}

func TestKeyRotation(t *testing.T) {
	svc := newService(t)
	before, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/r", Scopes: []string{"*#admin"}, Type: authz.TokenTypeSession})
	if err != nil {
		t.Fatal(err)
	}
	kid, _, err := svc.RotateSigningKey(bg)
	if err != nil {
		t.Fatal(err)
	}
	after, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/r", Scopes: []string{"*#admin"}, Type: authz.TokenTypeSession})
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(after, ".")[0])
	if !strings.Contains(string(hdr), kid) {
		t.Fatalf("new token not signed with the new key %s: %s", kid, hdr)
	}
	for _, tok := range []string{before, after} {
		if _, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{NoCache: true}); err != nil {
			t.Fatalf("verify after rotation: %v", err)
		}
	}
	if n := len(svc.PublicKeys()); n != 2 {
		t.Fatalf("%d public keys after one rotation, want 2", n)
	}
}

func TestHMACSessions(t *testing.T) {
	st := openStore(t, embeddedEndpoints(t), "")
	for _, bad := range [][]byte{[]byte("please-change-this-secret"), []byte("short")} {
		cfg := testConfig()
		cfg.HMACSecret = bad
		if _, err := authz.New(bg, st, cfg); err == nil {
			t.Fatalf("HMAC secret %q accepted", bad)
		}
	}
	cfg := testConfig()
	cfg.HMACSecret = []byte(strings.Repeat("k", 32))
	svc := startService(t, st, cfg)
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/h", Scopes: []string{"*#admin"}, Type: authz.TokenTypeSession})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	// HS384 with the same secret is a different algorithm: refused.
	parts := strings.Split(tok, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims jwt.MapClaims
	_ = json.Unmarshal(raw, &claims)
	t384 := jwt.NewWithClaims(jwt.SigningMethodHS384, claims)
	t384.Header["kid"] = "hs256"
	s384, _ := t384.SignedString(cfg.HMACSecret)
	if _, err := svc.VerifyAccess(bg, s384, "", authz.VerifyOptions{}); !errors.Is(err, authz.ErrUnauthenticated) {
		t.Fatalf("HS384 accepted: %v", err)
	}
}

// FuzzSessionToken mutates a valid session token: nothing but the exact
// token may ever be accepted (strict decoding, pinned algorithm, signature).
func FuzzSessionToken(f *testing.F) {
	f.Add(0, byte('A'))
	f.Add(5, byte('='))
	f.Add(-1, byte('.'))
	svc := newService(f)
	mustUser(f, svc, authz.UserInput{Username: "fuzz", Password: "password1"})
	valid := login(f, svc, "fuzz", "password1").AccessToken
	f.Fuzz(func(t *testing.T, pos int, b byte) {
		tok := []byte(valid)
		switch {
		case pos < 0:
			tok = append(tok, b)
		default:
			tok[pos%len(tok)] = b
		}
		_, err := svc.VerifyAccess(bg, string(tok), "", authz.VerifyOptions{})
		if err == nil && string(tok) != valid {
			t.Fatalf("mutated token accepted: %q", tok)
		}
	})
}

// Replicas that rotate at the same moment (or start together on an empty
// store, which is a rotation) must leave exactly one key to sign with, the
// same for all: a rotation retires only keys older than its own.
func TestConcurrentRotationsLeaveOneSigningKey(t *testing.T) {
	a, b, st, _ := twoReplicas(t)
	for round := 0; round < 20; round++ {
		var wg sync.WaitGroup
		for _, svc := range []*authz.Service{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, _, err := svc.RotateSigningKey(bg); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		keys, err := st.SigningKeys(bg)
		if err != nil {
			t.Fatal(err)
		}
		var active []string
		for _, k := range keys {
			if k.RetiredAt == nil {
				active = append(active, k.ID)
			}
		}
		if len(active) != 1 {
			t.Fatalf("round %d: %d active signing keys %q, want 1", round, len(active), active)
		}
		for _, svc := range []*authz.Service{a, b} {
			tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/r", Scopes: []string{"*#admin"}, Type: authz.TokenTypeSession})
			if err != nil {
				t.Fatalf("round %d: sign: %v", round, err)
			}
			for _, v := range []*authz.Service{a, b} {
				if _, err := v.VerifyAccess(bg, tok, "", authz.VerifyOptions{NoCache: true}); err != nil {
					t.Fatalf("round %d: verify: %v", round, err)
				}
			}
		}
	}
}

// A retired key stays published while anything it signed may be valid:
// sessions, and identity assertions of up to an hour even when sessions
// are shorter. Then it is deleted.
func TestRetiredKeysOutliveAssertions(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	cfg := testConfig()
	cfg.SessionTTL = time.Minute
	cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	st := openStore(t, embeddedEndpoints(t), "")
	svc := startService(t, st, cfg)
	first := svc.PublicKeys()[0].ID
	has := func(kid string) bool {
		keys, err := st.SigningKeys(bg)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(keys, func(k authz.SigningKey) bool { return k.ID == kid })
	}
	for _, step := range []struct {
		after time.Duration
		kept  bool
	}{{0, true}, {30 * time.Minute, true}, {32 * time.Minute, false}} {
		advance(step.after)
		if _, _, err := svc.RotateSigningKey(bg); err != nil {
			t.Fatal(err)
		}
		if has(first) != step.kept {
			t.Fatalf("after %v more: key retired at the first rotation kept = %v, want %v", step.after, !step.kept, step.kept)
		}
	}
}

// The order of keys is the store's, not the clocks': a rotation on a
// replica whose clock lags still makes its key the one every replica
// signs with.
func TestRotationOnALaggingClock(t *testing.T) {
	prefix := newPrefix("skew")
	a := startService(t, openStore(t, embeddedEndpoints(t), prefix), testConfig())
	lagging := testConfig()
	lagging.Now = func() time.Time { return time.Now().Add(-time.Hour) }
	b := startService(t, openStore(t, embeddedEndpoints(t), prefix), lagging)
	kid, _, err := b.RotateSigningKey(bg)
	if err != nil {
		t.Fatal(err)
	}
	for name, svc := range map[string]*authz.Service{"rotating replica": b, "other replica": a} {
		eventually(t, 5*time.Second, name+" signs with the new key", func() bool {
			tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/k", Scopes: []string{"*#admin"}, Type: authz.TokenTypeSession})
			if err != nil {
				t.Fatal(err)
			}
			hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
			return strings.Contains(string(hdr), `"kid":"`+kid+`"`)
		})
	}
}

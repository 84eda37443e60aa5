package authz_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/portcullis/portcullis/authz"
)

// codeRig is a user, a confidential client and a way to get and redeem
// authorization codes for them.
type codeRig struct {
	svc      *authz.Service
	user     authz.User
	client   string
	secret   string
	verifier string
}

const codeRedirect = "https://app.example/callback"

func newCodeRig(t *testing.T, svc *authz.Service, grants []string) codeRig {
	t.Helper()
	r := codeRig{svc: svc, verifier: strings.Repeat("v", 50)}
	r.user = mustUser(t, svc, authz.UserInput{Username: "olga", Password: "password1"})
	secret, c, _, err := svc.RegisterClient(bg, authz.ClientSpec{RedirectURIs: []string{codeRedirect}, GrantTypes: grants})
	if err != nil {
		t.Fatal(err)
	}
	r.client, r.secret = c.ID, secret
	return r
}

func (r codeRig) code(t *testing.T) string {
	t.Helper()
	code, err := r.svc.IssueAuthCode(bg, authz.AuthorizeRequest{ClientID: r.client, RedirectURI: codeRedirect, Subject: "users/" + r.user.ID, CodeChallenge: s256(r.verifier), CodeChallengeMethod: "S256"})
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func (r codeRig) redeem(code string) (authz.TokenResponse, error) {
	return r.svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantAuthorizationCode, Code: code, CodeVerifier: r.verifier, RedirectURI: codeRedirect, ClientID: r.client, ClientSecret: r.secret})
}

func (r codeRig) refresh(rt string) (authz.TokenResponse, error) {
	return r.svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: rt, ClientID: r.client, ClientSecret: r.secret})
}

func wantInvalidGrant(t *testing.T, err error, what string) {
	t.Helper()
	var oe *authz.OAuthError
	if !errors.As(err, &oe) || oe.Code != "invalid_grant" {
		t.Errorf("%s: %v, want invalid_grant", what, err)
	}
}

// wantDead checks that none of the access tokens and then none of the
// refresh tokens (by name) works. A refresh token already rotated must not
// be among them: presenting it is a replay that would revoke its family
// whatever the code did.
func (r codeRig) wantDead(t *testing.T, access, refresh map[string]string) {
	t.Helper()
	for name, tok := range access {
		if _, err := r.svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); !errors.Is(err, authz.ErrUnauthenticated) {
			t.Errorf("%s access token: %v, want ErrUnauthenticated", name, err)
		}
	}
	for name, tok := range refresh {
		_, err := r.refresh(tok)
		wantInvalidGrant(t, err, name+" refresh token")
	}
}

// A code presented a second time revokes what the first redemption got:
// its access token, its refresh token and everything rotated from it
// (RFC 6749 §4.1.2). Other grants of the same user live on.
func TestAuthCodeReplayRevokesTheFirstRedemption(t *testing.T) {
	t.Parallel()
	for name, grants := range map[string][]string{
		"with refresh tokens":    {authz.GrantAuthorizationCode, authz.GrantRefreshToken},
		"without refresh tokens": {authz.GrantAuthorizationCode},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := newCodeRig(t, newService(t), grants)
			code := r.code(t)
			first, err := r.redeem(code)
			if err != nil {
				t.Fatal(err)
			}
			access := map[string]string{"the redemption's": first.AccessToken}
			refresh := map[string]string{}
			if first.RefreshToken != "" {
				// One honest rotation: the replay must reach it too.
				rotated, err := r.refresh(first.RefreshToken)
				if err != nil {
					t.Fatal(err)
				}
				access["the rotated"], refresh["the rotated"] = rotated.AccessToken, rotated.RefreshToken
			}
			other, err := r.redeem(r.code(t))
			if err != nil {
				t.Fatal(err)
			}
			for name, tok := range access {
				if _, err := r.svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); err != nil {
					t.Fatalf("%s access token before the replay: %v", name, err)
				}
			}

			_, err = r.redeem(code)
			wantInvalidGrant(t, err, "replay")
			r.wantDead(t, access, refresh)
			// A second replay finds nothing more to do and is refused the same.
			_, err = r.redeem(code)
			wantInvalidGrant(t, err, "second replay")

			if _, err := r.svc.VerifyAccess(bg, other.AccessToken, "", authz.VerifyOptions{}); err != nil {
				t.Errorf("another code's access token: %v", err)
			}
			if other.RefreshToken != "" {
				if _, err := r.refresh(other.RefreshToken); err != nil {
					t.Errorf("another code's refresh token: %v", err)
				}
			}
		})
	}
}

// recordHook runs before every RecordAuthCodeIssue, forcing an
// interleaving between taking a code and recording what it was redeemed
// for; fail replaces the store's answer.
type recordHook struct {
	authz.Store
	mu     sync.Mutex
	before func()
	fail   error
}

func (h *recordHook) RecordAuthCodeIssue(ctx context.Context, digest, family string, access *authz.IssuedAccess) error {
	h.mu.Lock()
	before, fail := h.before, h.fail
	h.before = nil
	h.mu.Unlock()
	if before != nil {
		before()
	}
	if fail != nil {
		return fail
	}
	return h.Store.RecordAuthCodeIssue(ctx, digest, family, access)
}

// A replay that lands after the code was taken but before the redemption
// recorded its tokens finds nothing to revoke; the redemption then finds
// the code replayed and revokes its own tokens. The replay is refused and
// nothing issued for the code stays valid. The redemption still answers
// with its (dead) tokens: it won the code, as exactly one of concurrent
// redemptions does.
func TestAuthCodeReplayRacingTheRedemption(t *testing.T) {
	t.Parallel()
	st := &recordHook{Store: openStore(t, embeddedEndpoints(t), "")}
	r := newCodeRig(t, startService(t, st, testConfig()), nil)
	code := r.code(t)
	var replayErr error
	st.before = func() { _, replayErr = r.redeem(code) }
	first, err := r.redeem(code)
	if err != nil {
		t.Fatalf("the first redemption: %v", err)
	}
	if first.AccessToken == "" || first.RefreshToken == "" {
		t.Fatalf("the first redemption answered %+v", first)
	}
	wantInvalidGrant(t, replayErr, "the replay")
	r.wantDead(t, map[string]string{"the first redemption's": first.AccessToken}, map[string]string{"the first redemption's": first.RefreshToken})
	// And a later replay is refused as well.
	_, err = r.redeem(code)
	wantInvalidGrant(t, err, "a later replay")
}

// When the store cannot record what a redemption issued, a later replay
// could not revoke it: the redemption hands nothing out and revokes what
// it created.
func TestAuthCodeRedemptionFailsWhenItsTokensCannotBeRecorded(t *testing.T) {
	t.Parallel()
	st := &recordHook{Store: openStore(t, embeddedEndpoints(t), ""), fail: authz.ErrUnavailable}
	r := newCodeRig(t, startService(t, st, testConfig()), nil)
	resp, err := r.redeem(r.code(t))
	if !errors.Is(err, authz.ErrUnavailable) || resp.AccessToken != "" || resp.RefreshToken != "" {
		t.Fatalf("redemption = %+v, %v; want nothing and ErrUnavailable", resp, err)
	}
	toks, err := st.Tokens(bg, "users/"+r.user.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		if tok.Purpose == authz.PurposeRefresh {
			t.Errorf("the refresh token %s created for the redemption survived", tok.ID)
		}
	}
}

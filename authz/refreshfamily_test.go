package authz_test

import (
	"errors"
	"testing"

	"github.com/portcullis/portcullis/authz"
)

// A replayed refresh token revokes its family: the refresh tokens and the
// access tokens issued with any of them, session JWTs and stored login
// tokens (set_as_cookie) alike. Tokens of another family live on.
func TestRefreshReuseRevokesTheFamilysAccessTokens(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	mustUser(t, svc, authz.UserInput{Username: "olga", Password: "password1"})
	for _, loginToken := range []bool{false, true} {
		first, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantPassword, Username: "olga", Password: "password1", LoginToken: loginToken})
		if err != nil {
			t.Fatal(err)
		}
		other := login(t, svc, "olga", "password1")
		second, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: first.RefreshToken, LoginToken: loginToken})
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range []string{first.AccessToken, second.AccessToken} {
			if _, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{}); err != nil {
				t.Fatalf("login token %v: before the replay: %v", loginToken, err)
			}
		}
		_, err = svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: first.RefreshToken})
		var oe *authz.OAuthError
		if !errors.As(err, &oe) || oe.Code != "invalid_grant" {
			t.Fatalf("replay: %v", err)
		}
		for name, tok := range map[string]string{"first": first.AccessToken, "second": second.AccessToken} {
			_, err := svc.VerifyAccess(bg, tok, "", authz.VerifyOptions{})
			wantErr(t, err, authz.ErrUnauthenticated, name+" access token after the replay")
		}
		if _, err := svc.VerifyAccess(bg, other.AccessToken, "", authz.VerifyOptions{}); err != nil {
			t.Fatalf("another family's access token: %v", err)
		}
		if _, err := svc.RequestToken(bg, authz.TokenRequest{GrantType: authz.GrantRefreshToken, RefreshToken: other.RefreshToken}); err != nil {
			t.Fatalf("another family's refresh token: %v", err)
		}
	}
}

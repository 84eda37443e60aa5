package authz

import (
	"context"
	"errors"
	"fmt"
)

// SignOut ends a sign-in: token, a login token or session JWT, is revoked
// as RevokeToken does, and so is the refresh-token family issued with it
// (RFC 7009 §2.1 lets revoking an access token revoke its refresh token):
// a refresh token that came with the sign-in (set_as_cookie) must not
// mint new sessions after it. Any other token (an API token a script
// presented) is left alone, and an invalid one is no error; done reports
// whether a sign-in was ended.
func (s *Service) SignOut(ctx context.Context, token string) (rev Revision, done bool, err error) {
	acc, err := s.VerifyAccess(ctx, token, "", VerifyOptions{})
	if errors.Is(err, ErrUnauthenticated) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if acc.Token.Purpose != PurposeLogin {
		return 0, false, nil
	}
	if rev, err = s.RevokeToken(ctx, nil, token); err != nil {
		return 0, false, err
	}
	// Used refresh tokens are kept until they expire, so whichever
	// rotation issued this access token, its family is found.
	toks, err := s.store.Tokens(ctx, acc.Subject)
	if err != nil {
		return 0, false, fmt.Errorf("sign out: %w", err)
	}
	families := map[string]bool{}
	for _, t := range toks {
		if t.Purpose == PurposeRefresh && t.Access != nil && t.Access.ID == acc.Token.ID && t.Family != "" {
			families[t.Family] = true
		}
	}
	for family := range families {
		if err := s.revokeFamilyAccess(ctx, acc.Subject, family); err != nil {
			return 0, false, fmt.Errorf("sign out: revoke the access tokens of a refresh token family: %w", err)
		}
		r, err := s.store.RevokeFamily(ctx, acc.Subject, family)
		if err != nil {
			return 0, false, fmt.Errorf("sign out: revoke a refresh token family: %w", err)
		}
		rev = max(rev, r)
	}
	return rev, true, nil
}

package authz

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Login is Authenticate behind the per-account failure budget: every
// attempt is counted in the store before the password is checked (so
// concurrent guesses on several replicas cannot overrun the budget) and
// given back when it succeeds. Username and email of one user share one
// budget; a login id that names no user has its own, so that the answer
// does not tell which accounts exist. While the budget is spent the
// answer is a *ThrottledError, whatever the password.
func (s *Service) Login(ctx context.Context, login, password string) (User, error) {
	account, err := s.loginAccount(ctx, login)
	if err != nil {
		return User{}, err
	}
	attempt, ok, retryAt, err := s.store.TakeLoginAttempt(ctx, account, s.cfg.LoginFailureLimit, s.cfg.LoginFailureWindow)
	if err != nil {
		return User{}, fmt.Errorf("login: %w", err)
	}
	if !ok {
		s.log.Warn("password sign-in refused: too many failures for the account", "account", account)
		return User{}, &ThrottledError{RetryAfter: max(retryAt.Sub(s.now()), 0)}
	}
	u, err := s.Authenticate(ctx, login, password)
	if err != nil && errors.Is(err, ErrUnauthenticated) {
		return User{}, err
	}
	// A success, or a failure that was not the caller's (store, context):
	// neither is a wrong guess.
	if rerr := s.store.ReturnLoginAttempt(ctx, account, attempt); rerr != nil {
		s.log.Warn("could not return a login attempt", "account", account, "err", rerr)
	}
	return u, err
}

// loginAccount names the failure budget of a login id: the user's id when
// it names a user, else a digest of the lower-cased login id.
func (s *Service) loginAccount(ctx context.Context, login string) (string, error) {
	login = strings.ToLower(strings.TrimSpace(login))
	if login != "" && len(login) <= maxEmailLen {
		rec, err := s.store.UserByLogin(ctx, login)
		if err == nil {
			return "user-" + rec.ID, nil
		}
		if !isNotFound(err) {
			return "", fmt.Errorf("login: %w", err)
		}
	}
	return "login-" + digestOf(login).hex(), nil
}

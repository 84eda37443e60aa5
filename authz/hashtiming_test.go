package authz_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

// Every failed password sign-in pays exactly for one hash comparison,
// whether the account exists, has no password or the password is too long
// to be anyone's: none of them may answer before a hash slot is free, or
// the answer's timing would tell which accounts exist.
func TestEverySignInFailurePaysOneHashComparison(t *testing.T) {
	t.Parallel()
	svc := newService(t)
	mustUser(t, svc, authz.UserInput{Username: "known", Email: "known@example.com", Password: "correct horse"})
	if _, _, err := svc.CreateUser(bg, authz.UserInput{Username: "robot"}, true); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, login, password string }{
		{"unknown account", "nobody", "correct horse"},
		{"unknown email", "nobody@example.com", "correct horse"},
		{"wrong password", "known", "wrong horse"},
		{"account without a password", "robot", "correct horse"},
		{"password longer than any stored one", "known", strings.Repeat("x", 100)},
	}
	release := svc.HoldAllHashSlots()
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
		_, err := svc.Authenticate(ctx, c.login, c.password)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: answered %v without waiting for a hash comparison", c.name, err)
		}
	}
	release()
	for _, c := range cases {
		if _, err := svc.Authenticate(bg, c.login, c.password); !errors.Is(err, authz.ErrUnauthenticated) || err.Error() != "unauthenticated: invalid username or password" {
			t.Errorf("%s: %v, want the one answer for every bad sign-in", c.name, err)
		}
	}
}

package authz_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// A password guesser gets at most 100 wrong answers an hour per account,
// however it spells the account (username, email, any case), and once the
// budget is spent even the right password is refused.
func TestPasswordGuessingIsCappedPerAccount(t *testing.T) {
	// The default budget, with the cheapest bcrypt cost: 100 comparisons.
	svc := authztest.Start(t, etcdtest.NewStore(t, etcdtest.SharedEmbedded(t)), authz.Config{BcryptCost: 10, MaxConcurrentHashes: 4})
	mustUser(t, svc, authz.UserInput{Username: "alice", Email: "alice@example.com", Password: "correct horse"})
	mustUser(t, svc, authz.UserInput{Username: "bob", Password: "bob's password"})
	logins := []string{"alice", "ALICE@example.com", "Alice", "alice@EXAMPLE.com"}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			_, err := svc.Login(bg, logins[i%len(logins)], "wrong guess")
			if !errors.Is(err, authz.ErrUnauthenticated) || errors.Is(err, authz.ErrThrottled) {
				t.Errorf("guess %d: %v, want a plain wrong-password answer", i+1, err)
			}
		})
	}
	wg.Wait()
	for _, l := range []string{"alice", "alice@example.com"} {
		_, err := svc.Login(bg, l, "correct horse")
		var te *authz.ThrottledError
		if !errors.As(err, &te) || !errors.Is(err, authz.ErrThrottled) {
			t.Fatalf("login as %s after 100 failures: %v, want ThrottledError", l, err)
		}
		if te.RetryAfter < 50*time.Minute || te.RetryAfter > time.Hour {
			t.Errorf("RetryAfter = %v, want about an hour", te.RetryAfter)
		}
	}
	if _, err := svc.Login(bg, "bob", "bob's password"); err != nil {
		t.Fatalf("another account is not affected: %v", err)
	}
}

// Successful sign-ins do not use up the budget, and an unknown login id
// behaves like a known one (its own budget), so throttling does not tell
// which accounts exist.
func TestLoginBudgetCountsOnlyFailures(t *testing.T) {
	cfg := authztest.FastConfig()
	cfg.LoginFailureLimit = 3
	svc := authztest.Start(t, etcdtest.NewStore(t, etcdtest.SharedEmbedded(t)), cfg)
	mustUser(t, svc, authz.UserInput{Username: "carol", Password: "carol's password"})
	for i := range 10 {
		if _, err := svc.Login(bg, "carol", "carol's password"); err != nil {
			t.Fatalf("login %d: %v", i+1, err)
		}
	}
	for _, login := range []string{"carol", "nobody"} {
		for range 3 {
			if _, err := svc.Login(bg, login, "wrong guess"); errors.Is(err, authz.ErrThrottled) {
				t.Fatalf("%s: throttled too early", login)
			}
		}
		if _, err := svc.Login(bg, login, "wrong guess"); !errors.Is(err, authz.ErrThrottled) {
			t.Fatalf("%s: 4th failure: %v, want ErrThrottled", login, err)
		}
	}
}

// Concurrent guesses on two replicas share one atomic count: exactly the
// budget is checked, the rest are refused without a password comparison.
func TestConcurrentGuessesOnTwoReplicasShareTheBudget(t *testing.T) {
	endpoints := embeddedEndpoints(t)
	st := openStore(t, endpoints, "")
	cfg := authztest.FastConfig()
	cfg.LoginFailureLimit = 5
	a := authztest.Start(t, st, cfg)
	b := authztest.Start(t, openStore(t, endpoints, st.Prefix()), cfg)
	mustUser(t, a, authz.UserInput{Username: "dave", Password: "dave's password"})
	var wrong, throttled atomic.Int32
	var wg sync.WaitGroup
	for i := range 24 {
		svc := a
		if i%2 == 1 {
			svc = b
		}
		wg.Go(func() {
			_, err := svc.Login(bg, "dave", "wrong guess")
			switch {
			case errors.Is(err, authz.ErrThrottled):
				throttled.Add(1)
			case errors.Is(err, authz.ErrUnauthenticated):
				wrong.Add(1)
			default:
				t.Errorf("login: %v", err)
			}
		})
	}
	wg.Wait()
	if wrong.Load() != 5 || throttled.Load() != 19 {
		t.Fatalf("%d wrong-password answers and %d throttled, want 5 and 19", wrong.Load(), throttled.Load())
	}
}

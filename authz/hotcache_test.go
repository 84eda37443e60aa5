package authz_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

// Decisions served from the hot front of the decision cache stop the
// moment a revocation, a flush or the cache TTL would stop the decision
// cache itself from serving them.
func TestHotDecisionsObeyRevocationFlushAndTTL(t *testing.T) {
	var (
		mu  sync.Mutex
		now = time.Now()
	)
	cfg := testConfig()
	cfg.CacheTTL = time.Minute
	cfg.Now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
	}
	svc := startService(t, openStore(t, embeddedEndpoints(t), ""), cfg)
	u := mustUser(t, svc, authz.UserInput{Username: "hot", Password: "password1"})
	const perm = "projects/hot#read"
	if _, err := svc.AddPermission(bg, "users/"+u.ID, "projects/hot#write"); err != nil {
		t.Fatal(err)
	}
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "users/" + u.ID, Scopes: []string{"*#admin"}, Purpose: authz.PurposeUserAPI})
	if err != nil {
		t.Fatal(err)
	}
	verify := func() (authz.Access, error) {
		return svc.VerifyAccess(bg, tok, perm, authz.VerifyOptions{})
	}
	// warm waits until the decision is a cache hit twice in a row: the
	// second one comes from the hot front.
	warm := func() {
		t.Helper()
		eventually(t, 5*time.Second, "a cached allow", func() bool {
			a1, err1 := verify()
			a2, err2 := verify()
			return err1 == nil && err2 == nil && a1.Cache == authz.CacheHit && a2.Cache == authz.CacheHit
		})
	}

	warm()
	advance(2 * cfg.CacheTTL) // past the TTL with its jitter
	if a, err := verify(); err != nil || a.Cache == authz.CacheHit {
		t.Fatalf("after the cache TTL: %v, cache %v; want a fresh decision", err, a.Cache)
	}

	warm()
	svc.Flush()
	if a, err := verify(); err != nil || a.Cache == authz.CacheHit {
		t.Fatalf("after a flush: %v, cache %v; want a fresh decision", err, a.Cache)
	}

	warm()
	if _, err := svc.RemovePermission(bg, "users/"+u.ID, "projects/hot#write", false); err != nil {
		t.Fatal(err)
	}
	// The writing replica invalidates before RemovePermission returns.
	if _, err := verify(); !errors.Is(err, authz.ErrPermissionDenied) {
		t.Fatalf("right after the grant was removed: %v, want permission denied", err)
	}
}

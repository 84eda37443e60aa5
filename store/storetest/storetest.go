// Package storetest is the conformance suite for authz.Store: every backend's
// tests call RunAll, so every backend is held to the same contract, the doc
// comments of authz.Store.
//
// The suite needs from the backend under test:
//   - newStore returns an empty store, isolated from every other store it
//     returned (the etcd backend uses a fresh key prefix);
//   - lease-like expiry within a few seconds (auth codes, revoked sessions
//     and tokens with ExpiresAt set are given 1-second lifetimes);
//   - Watch progress notifications at least every few seconds while idle
//     (etcd: --experimental-watch-progress-notify-interval; etcdtest sets it).
//
// Subtests run one after the other, except the expiry tests, which mostly
// wait and run in parallel. The ErrCompacted test compacts the history of the
// whole backend (etcd compaction is cluster-wide): do not run RunAll against
// a server whose other users watch from old revisions at the same time.
package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

// Compactor is implemented by stores that can discard their history up to a
// revision. RunAll uses it, when the store provides it, to check that Watch
// reports authz.ErrCompacted.
type Compactor interface {
	Compact(ctx context.Context, rev authz.Revision) error
}

// RunAll runs the whole suite. newStore is called once per subtest and must
// return an empty, isolated store; it should register its own cleanup.
func RunAll(t *testing.T, newStore func(t *testing.T) authz.Store) {
	t.Run("Revisions", func(t *testing.T) { testRevisions(t, newStore) })
	t.Run("ContextEnded", func(t *testing.T) { testContextEnded(t, newStore) })
	t.Run("Grants", func(t *testing.T) { testGrants(t, newStore) })
	t.Run("ResourcesWithGrant", func(t *testing.T) { testResourcesWithGrant(t, newStore) })
	t.Run("ConcurrentAddGrant", func(t *testing.T) { testConcurrentAddGrant(t, newStore) })
	t.Run("GrantsSnapshot", func(t *testing.T) { testGrantsSnapshot(t, newStore) })
	t.Run("Subject", func(t *testing.T) { testSubject(t, newStore) })
	t.Run("SubjectSnapshot", func(t *testing.T) { testSubjectSnapshot(t, newStore) })
	t.Run("Tokens", func(t *testing.T) { testTokens(t, newStore) })
	t.Run("RotateToken", func(t *testing.T) { testRotateToken(t, newStore) })
	t.Run("RevokeFamily", func(t *testing.T) { testRevokeFamily(t, newStore) })
	t.Run("Sessions", func(t *testing.T) { testSessions(t, newStore) })
	t.Run("CreateUser", func(t *testing.T) { testCreateUser(t, newStore) })
	t.Run("UpdateUser", func(t *testing.T) { testUpdateUser(t, newStore) })
	t.Run("DeleteUser", func(t *testing.T) { testDeleteUser(t, newStore) })
	t.Run("Clients", func(t *testing.T) { testClients(t, newStore) })
	t.Run("AuthCodes", func(t *testing.T) { testAuthCodes(t, newStore) })
	t.Run("SigningKeys", func(t *testing.T) { testSigningKeys(t, newStore) })
	t.Run("LoginAttempts", func(t *testing.T) { testLoginAttempts(t, newStore) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, newStore) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, newStore) })
}

// must turns a call's (value, error) into a function that returns the
// value or fails t: must(s.User(ctx, id))(t).
func must[V any](v V, err error) func(testing.TB) V {
	return func(t testing.TB) V {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// must2 is must for calls returning two values and an error.
func must2[A, B any](a A, b B, err error) func(testing.TB) (A, B) {
	return func(t testing.TB) (A, B) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

// wantErr fails t unless errors.Is(err, target).
func wantErr(t testing.TB, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want one matching %q", what, err, target)
	}
}

// eventually polls cond until it holds or timeout passes. Expiry in a store
// is driven by its own timers, so tests poll instead of sleeping a fixed
// time.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// digest returns the token digest of secret, as authz computes it.
func digest(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// token returns a token record of subject named id, with digest derived from id.
func token(subject, id string, opts ...func(*authz.TokenRecord)) authz.TokenRecord {
	t := authz.TokenRecord{
		ID:        id,
		Digest:    digest("secret-" + id),
		Type:      authz.TokenTypeAPI,
		Purpose:   authz.PurposeUserAPI,
		Subject:   subject,
		Scopes:    []string{"projects/p1#read", "projects/p2#write"},
		CreatedAt: time.Now().UTC().Truncate(time.Second),
	}
	for _, o := range opts {
		o(&t)
	}
	return t
}

// refresh makes a token a refresh token of family.
func refresh(family string) func(*authz.TokenRecord) {
	return func(t *authz.TokenRecord) {
		t.Type = authz.TokenTypeSession
		t.Purpose = authz.PurposeRefresh
		t.Family = family
		t.ClientID = "client-1"
		exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
		t.ExpiresAt = &exp
	}
}

func user(id, username, email string) authz.UserRecord {
	return authz.UserRecord{
		ID:           id,
		Username:     username,
		Email:        email,
		CreatedAt:    time.Now().UTC().Truncate(time.Second),
		PasswordHash: "$2a$10$abcdefghijklmnopqrstuuJ0b3cDx4ZqYk1uQ6qYq8m0T6kO9r2W",
		SessionEpoch: 1,
	}
}

// sameUser compares the fields a store must keep.
func sameUser(a, b authz.UserRecord) bool {
	la, lb := a.LastActivity, b.LastActivity
	if (la == nil) != (lb == nil) || (la != nil && !la.Equal(*lb)) {
		return false
	}
	return a.ID == b.ID && a.Username == b.Username && a.Email == b.Email &&
		a.Disabled == b.Disabled && a.TechnicalUser == b.TechnicalUser &&
		a.CreatedAt.Equal(b.CreatedAt) && a.PasswordHash == b.PasswordHash &&
		a.SessionEpoch == b.SessionEpoch
}

// sameToken compares the fields a store must keep.
func sameToken(a, b authz.TokenRecord) bool {
	ea, eb := a.ExpiresAt, b.ExpiresAt
	if (ea == nil) != (eb == nil) || (ea != nil && !ea.Equal(*eb)) {
		return false
	}
	return a.ID == b.ID && a.Digest == b.Digest && a.Type == b.Type &&
		a.Purpose == b.Purpose && a.Subject == b.Subject &&
		slices.Equal(a.Scopes, b.Scopes) && a.Description == b.Description &&
		a.CreatedAt.Equal(b.CreatedAt) && a.ClientID == b.ClientID &&
		a.Family == b.Family && a.Used == b.Used
}

func tokenIDs(ts []authz.TokenRecord) []string {
	ids := make([]string, len(ts))
	for i, t := range ts {
		ids[i] = t.ID
	}
	slices.Sort(ids)
	return ids
}

func userIDs(us []authz.UserRecord) []string {
	ids := make([]string, len(us))
	for i, u := range us {
		ids[i] = u.ID
	}
	slices.Sort(ids)
	return ids
}

func testRevisions(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	prev := must(s.CurrentRevision(ctx))(t)
	exp := time.Now().Add(time.Hour)
	writes := []struct {
		name  string
		write func() (authz.Revision, error)
	}{
		{"AddGrant", func() (authz.Revision, error) { return s.AddGrant(ctx, "projects/p1", "projects/p1#read") }},
		{"RemoveGrants", func() (authz.Revision, error) {
			return s.RemoveGrants(ctx, "projects/p1", []string{"projects/p1#read"})
		}},
		{"CreateToken", func() (authz.Revision, error) { return s.CreateToken(ctx, token("users/u1", "t1")) }},
		{"RotateToken", func() (authz.Revision, error) {
			if _, err := s.CreateToken(ctx, token("users/u1", "r1", refresh("f1"))); err != nil {
				return 0, err
			}
			return s.RotateToken(ctx, token("users/u1", "r1", refresh("f1")), token("users/u1", "r2", refresh("f1")))
		}},
		{"RevokeFamily", func() (authz.Revision, error) { return s.RevokeFamily(ctx, "users/u1", "f1") }},
		{"DeleteTokens", func() (authz.Revision, error) {
			return s.DeleteTokens(ctx, []authz.TokenRecord{token("users/u1", "t1")})
		}},
		{"RevokeSession", func() (authz.Revision, error) { return s.RevokeSession(ctx, "jti-1", exp) }},
		{"CreateUser", func() (authz.Revision, error) { return s.CreateUser(ctx, user("u1", "u1", ""), nil) }},
		{"UpdateUser", func() (authz.Revision, error) {
			_, rev, err := s.UpdateUser(ctx, "u1", func(u *authz.UserRecord) error { u.SessionEpoch++; return nil }, nil)
			return rev, err
		}},
		{"DeleteUser", func() (authz.Revision, error) { return s.DeleteUser(ctx, "u1") }},
		{"CreateClient", func() (authz.Revision, error) { return s.CreateClient(ctx, authz.ClientRecord{ID: "c1"}) }},
		{"DeleteClient", func() (authz.Revision, error) { return s.DeleteClient(ctx, "c1") }},
		{"AddSigningKey", func() (authz.Revision, error) { return s.AddSigningKey(ctx, authz.SigningKey{ID: "k1"}) }},
		{"UpdateSigningKey", func() (authz.Revision, error) { return s.UpdateSigningKey(ctx, authz.SigningKey{ID: "k1"}) }},
		{"DeleteSigningKey", func() (authz.Revision, error) { return s.DeleteSigningKey(ctx, "k1") }},
	}
	for _, w := range writes {
		rev, err := w.write()
		if err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		if rev <= prev {
			t.Errorf("%s returned revision %d, not after the previous write's %d", w.name, rev, prev)
		}
		if cur := must(s.CurrentRevision(ctx))(t); cur < rev {
			t.Errorf("after %s at revision %d, CurrentRevision is %d", w.name, rev, cur)
		}
		prev = rev
	}
	// Reads report a revision no older than the last write.
	if _, rev, err := s.Grants(ctx, []string{"projects/p1"}); err != nil || rev < prev {
		t.Errorf("Grants after the writes: revision %d, error %v; want >= %d", rev, err, prev)
	}
	if snap, err := s.Subject(ctx, "users/u1", "jti-1"); err != nil || snap.Revision < prev {
		t.Errorf("Subject after the writes: revision %d, error %v; want >= %d", snap.Revision, err, prev)
	}
}

// testContextEnded checks "ctx errors when ctx ends" on a sample of methods.
func testContextEnded(t *testing.T, newStore func(*testing.T) authz.Store) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	calls := map[string]func() error{
		"CurrentRevision": func() error { _, err := s.CurrentRevision(ctx); return err },
		"AddGrant":        func() error { _, err := s.AddGrant(ctx, "projects/p", "g"); return err },
		"Grants":          func() error { _, _, err := s.Grants(ctx, []string{"projects/p"}); return err },
		"Subject":         func() error { _, err := s.Subject(ctx, "users/u", "j"); return err },
		"CreateUser":      func() error { _, err := s.CreateUser(ctx, user("u", "u", ""), nil); return err },
		"UpdateUser": func() error {
			_, _, err := s.UpdateUser(ctx, "u", func(*authz.UserRecord) error { return nil }, nil)
			return err
		},
		"TakeAuthCode":   func() error { _, err := s.TakeAuthCode(ctx, "d"); return err },
		"ReplayAuthCode": func() error { _, err := s.ReplayAuthCode(ctx, "d"); return err },
	}
	for name, call := range calls {
		wantErr(t, call(), context.Canceled, name+" with a cancelled context")
	}
}

package storetest

import (
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

func testTokens(t *testing.T, newStore func(*testing.T) authz.Store) {
	t.Run("create and read", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		t1 := token("users/a", "t1", func(t *authz.TokenRecord) {
			t.Description = "ci"
			exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
			t.ExpiresAt = &exp
		})
		t2 := token("users/a", "t2")
		t3 := token("users/ab", "t3") // "users/a" is a prefix of this subject
		for _, tk := range []authz.TokenRecord{t1, t2, t3} {
			must(s.CreateToken(ctx, tk))(t)
		}
		if got := must(s.Token(ctx, t1.Digest))(t); !sameToken(got, t1) {
			t.Errorf("Token = %+v, want %+v", got, t1)
		}
		if got := must(s.TokenByID(ctx, "t1"))(t); !sameToken(got, t1) {
			t.Errorf("TokenByID = %+v, want %+v", got, t1)
		}
		if got := tokenIDs(must(s.Tokens(ctx, "users/a"))(t)); !slices.Equal(got, []string{"t1", "t2"}) {
			t.Errorf("Tokens(users/a) = %v, want [t1 t2]", got)
		}
		if got := must(s.Tokens(ctx, "users/nobody"))(t); len(got) != 0 {
			t.Errorf("Tokens of a subject without tokens = %v", got)
		}
		_, err := s.Token(ctx, digest("unknown"))
		wantErr(t, err, authz.ErrNotFound, "Token of an unknown digest")
		_, err = s.TokenByID(ctx, "unknown")
		wantErr(t, err, authz.ErrNotFound, "TokenByID of an unknown id")
	})

	t.Run("create conflicts", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		t1 := token("users/a", "t1")
		must(s.CreateToken(ctx, t1))(t)
		sameDigest := token("users/b", "other-id")
		sameDigest.Digest = t1.Digest
		sameID := token("users/b", "t1")
		sameID.Digest = digest("another secret")
		for name, tk := range map[string]authz.TokenRecord{"same digest": sameDigest, "same id": sameID, "same token": t1} {
			_, err := s.CreateToken(ctx, tk)
			wantErr(t, err, authz.ErrConflict, "CreateToken with the "+name)
		}
		// Nothing of the rejected tokens was written.
		if got := must(s.Token(ctx, t1.Digest))(t); !sameToken(got, t1) {
			t.Errorf("after conflicts, Token = %+v, want the original %+v", got, t1)
		}
		_, err := s.TokenByID(ctx, "other-id")
		wantErr(t, err, authz.ErrNotFound, "TokenByID of a token rejected for its digest")
		_, err = s.Token(ctx, sameID.Digest)
		wantErr(t, err, authz.ErrNotFound, "Token of a token rejected for its id")
		if got := must(s.Tokens(ctx, "users/b"))(t); len(got) != 0 {
			t.Errorf("rejected tokens indexed under their subject: %v", tokenIDs(got))
		}
	})

	t.Run("DeleteTokens", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		ts := []authz.TokenRecord{token("users/a", "t1"), token("users/a", "t2"), token("users/a", "t3"), token("users/b", "t4")}
		for _, tk := range ts {
			must(s.CreateToken(ctx, tk))(t)
		}
		gone := token("users/a", "never-created")
		must(s.DeleteTokens(ctx, []authz.TokenRecord{ts[0], ts[2], gone}))(t)
		for _, tk := range []authz.TokenRecord{ts[0], ts[2]} {
			_, err := s.Token(ctx, tk.Digest)
			wantErr(t, err, authz.ErrNotFound, "Token of a deleted token")
			_, err = s.TokenByID(ctx, tk.ID)
			wantErr(t, err, authz.ErrNotFound, "TokenByID of a deleted token")
		}
		if got := tokenIDs(must(s.Tokens(ctx, "users/a"))(t)); !slices.Equal(got, []string{"t2"}) {
			t.Errorf("Tokens after DeleteTokens = %v, want [t2]", got)
		}
		if got := tokenIDs(must(s.Tokens(ctx, "users/b"))(t)); !slices.Equal(got, []string{"t4"}) {
			t.Errorf("another subject's tokens after DeleteTokens = %v, want [t4]", got)
		}
		// Deleting again, or nothing, is not an error.
		must(s.DeleteTokens(ctx, []authz.TokenRecord{ts[0]}))(t)
		must(s.DeleteTokens(ctx, nil))(t)
		// The id is free again.
		must(s.CreateToken(ctx, ts[0]))(t)
	})
}

func testRotateToken(t *testing.T, newStore func(*testing.T) authz.Store) {
	t.Run("marks old used and creates next", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		old := token("users/a", "r1", refresh("fam"))
		created := must(s.CreateToken(ctx, old))(t)
		next := token("users/a", "r2", refresh("fam"))
		rev := must(s.RotateToken(ctx, old, next))(t)
		if rev <= created {
			t.Errorf("RotateToken revision %d, not after CreateToken's %d", rev, created)
		}
		got := must(s.Token(ctx, old.Digest))(t)
		if !got.Used {
			t.Error("old token not marked used")
		}
		got.Used = false
		if !sameToken(got, old) {
			t.Errorf("old token changed beyond Used: %+v", got)
		}
		if got := must(s.TokenByID(ctx, "r2"))(t); !sameToken(got, next) {
			t.Errorf("next token = %+v, want %+v", got, next)
		}
		// A used token is kept, so that its replay is detected.
		if got := tokenIDs(must(s.Tokens(ctx, "users/a"))(t)); !slices.Equal(got, []string{"r1", "r2"}) {
			t.Errorf("Tokens after rotation = %v, want [r1 r2]", got)
		}
		// The next token can be rotated in turn.
		must(s.RotateToken(ctx, next, token("users/a", "r3", refresh("fam"))))(t)
	})

	t.Run("errors", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		old := token("users/a", "r1", refresh("fam"))
		must(s.CreateToken(ctx, old))(t)
		must(s.RotateToken(ctx, old, token("users/a", "r2", refresh("fam"))))(t)

		_, err := s.RotateToken(ctx, old, token("users/a", "r3", refresh("fam")))
		wantErr(t, err, authz.ErrConflict, "RotateToken of a used token")
		_, err = s.TokenByID(ctx, "r3")
		wantErr(t, err, authz.ErrNotFound, "the next token of a failed rotation")

		_, err = s.RotateToken(ctx, token("users/a", "missing", refresh("fam")), token("users/a", "r4", refresh("fam")))
		wantErr(t, err, authz.ErrNotFound, "RotateToken of a missing token")
		_, err = s.TokenByID(ctx, "r4")
		wantErr(t, err, authz.ErrNotFound, "the next token of a failed rotation")
	})

	t.Run("exactly one of concurrent rotations wins", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		old := token("users/a", "r0", refresh("fam"))
		must(s.CreateToken(ctx, old))(t)
		const n = 20
		results := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, results[i] = s.RotateToken(ctx, old, token("users/a", "next-"+strconv.Itoa(i), refresh("fam")))
			})
		}
		wg.Wait()
		wins := 0
		for i, err := range results {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, authz.ErrConflict):
				t.Errorf("rotation %d: %v, want success or ErrConflict", i, err)
			}
		}
		if wins != 1 {
			t.Errorf("%d of %d concurrent rotations succeeded, want exactly 1", wins, n)
		}
		// Only the winner's next token exists.
		if got := must(s.Tokens(ctx, "users/a"))(t); len(got) != 2 {
			t.Errorf("after the rotations, %d tokens exist, want 2: %v", len(got), tokenIDs(got))
		}
	})
}

func testRevokeFamily(t *testing.T, newStore func(*testing.T) authz.Store) {
	t.Run("deletes the family's tokens only", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		r1 := token("users/a", "r1", refresh("fam"))
		must(s.CreateToken(ctx, r1))(t)
		r2 := token("users/a", "r2", refresh("fam"))
		must(s.RotateToken(ctx, r1, r2))(t)
		other := token("users/a", "o1", refresh("other-fam"))
		must(s.CreateToken(ctx, other))(t)
		api := token("users/a", "api")
		must(s.CreateToken(ctx, api))(t)
		b := token("users/b", "b1", refresh("fam-b"))
		must(s.CreateToken(ctx, b))(t)

		must(s.RevokeFamily(ctx, "users/a", "fam"))(t)
		for _, tk := range []authz.TokenRecord{r1, r2} {
			_, err := s.Token(ctx, tk.Digest)
			wantErr(t, err, authz.ErrNotFound, "Token of a revoked family's token")
			_, err = s.TokenByID(ctx, tk.ID)
			wantErr(t, err, authz.ErrNotFound, "TokenByID of a revoked family's token")
		}
		if got := tokenIDs(must(s.Tokens(ctx, "users/a"))(t)); !slices.Equal(got, []string{"api", "o1"}) {
			t.Errorf("Tokens after RevokeFamily = %v, want [api o1]", got)
		}
		if got := tokenIDs(must(s.Tokens(ctx, "users/b"))(t)); !slices.Equal(got, []string{"b1"}) {
			t.Errorf("another subject's tokens after RevokeFamily = %v, want [b1]", got)
		}
		// Rotation in the revoked family fails; in another family it works.
		_, err := s.RotateToken(ctx, r2, token("users/a", "r3", refresh("fam")))
		if !errors.Is(err, authz.ErrConflict) && !errors.Is(err, authz.ErrNotFound) {
			t.Errorf("rotation after RevokeFamily: %v, want ErrConflict or ErrNotFound", err)
		}
		must(s.RotateToken(ctx, other, token("users/a", "o2", refresh("other-fam"))))(t)
		// Revoking again is harmless.
		must(s.RevokeFamily(ctx, "users/a", "fam"))(t)
	})

	t.Run("racing rotation leaves no token behind", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		for round := range 8 {
			fam := "fam-" + strconv.Itoa(round)
			old := token("users/a", fam+"-r1", refresh(fam))
			must(s.CreateToken(ctx, old))(t)
			var rotErr error
			var wg sync.WaitGroup
			wg.Go(func() {
				_, rotErr = s.RotateToken(ctx, old, token("users/a", fam+"-r2", refresh(fam)))
			})
			must(s.RevokeFamily(ctx, "users/a", fam))(t)
			wg.Wait()
			// Either the rotation committed first (and its token was
			// revoked with the family) or it failed.
			if rotErr != nil && !errors.Is(rotErr, authz.ErrConflict) && !errors.Is(rotErr, authz.ErrNotFound) {
				t.Errorf("round %d: rotation racing RevokeFamily: %v", round, rotErr)
			}
			for _, tk := range must(s.Tokens(ctx, "users/a"))(t) {
				if tk.Family == fam {
					t.Errorf("round %d: token %s of the revoked family survived (rotation error %v)", round, tk.ID, rotErr)
				}
			}
		}
	})
}

func testSessions(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	must(s.RevokeSession(ctx, "jti-1", time.Now().Add(time.Hour)))(t)
	if !must(s.SessionRevoked(ctx, "jti-1"))(t) {
		t.Error("SessionRevoked(jti-1) = false after RevokeSession")
	}
	if must(s.SessionRevoked(ctx, "jti-2"))(t) {
		t.Error("SessionRevoked of a session never revoked = true")
	}
	// Revoking twice is fine.
	must(s.RevokeSession(ctx, "jti-1", time.Now().Add(time.Hour)))(t)
}

// testExpiry: everything stored with an expiry disappears after it. Each
// case waits for timers, so they run in parallel.
func testExpiry(t *testing.T, newStore func(*testing.T) authz.Store) {
	const lifetime = time.Second
	const patience = 8 * time.Second // etcd rounds TTLs up and expires on a timer

	t.Run("auth code", func(t *testing.T) {
		t.Parallel()
		s, ctx := newStore(t), t.Context()
		expires := time.Now().Add(lifetime)
		if err := s.PutAuthCode(ctx, "code-digest", authCode(expires)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(expires) + 10*time.Millisecond)
		// Past ExpiresAt the code is gone for TakeAuthCode at once, whatever
		// the backend's expiry timer says.
		_, err := s.TakeAuthCode(ctx, "code-digest")
		wantErr(t, err, authz.ErrNotFound, "TakeAuthCode after the code expired")
		// Nothing can have been issued for an expired code: it is not
		// remembered as used.
		_, err = s.ReplayAuthCode(ctx, "code-digest")
		wantErr(t, err, authz.ErrNotFound, "ReplayAuthCode of an expired code")
	})

	t.Run("revoked session", func(t *testing.T) {
		t.Parallel()
		s, ctx := newStore(t), t.Context()
		must(s.RevokeSession(ctx, "jti-short", time.Now().Add(lifetime)))(t)
		must(s.RevokeSession(ctx, "jti-long", time.Now().Add(time.Hour)))(t)
		if !must(s.SessionRevoked(ctx, "jti-short"))(t) {
			t.Fatal("session not revoked right after RevokeSession")
		}
		eventually(t, patience, "revocation of jti-short disappears", func() (bool, error) {
			revoked, err := s.SessionRevoked(ctx, "jti-short")
			return !revoked, err
		})
		if !must(s.SessionRevoked(ctx, "jti-long"))(t) {
			t.Error("a revocation with a later expiry disappeared too")
		}
	})

	t.Run("token", func(t *testing.T) {
		t.Parallel()
		s, ctx := newStore(t), t.Context()
		short := token("users/a", "short", refresh("fam"))
		exp := time.Now().Add(lifetime)
		short.ExpiresAt = &exp
		long := token("users/a", "long", refresh("fam2"))
		must(s.CreateToken(ctx, short))(t)
		must(s.CreateToken(ctx, long))(t)
		eventually(t, patience, "expired token and its indexes disappear", func() (bool, error) {
			_, err := s.Token(ctx, short.Digest)
			if !errors.Is(err, authz.ErrNotFound) {
				return false, nil
			}
			if _, err := s.TokenByID(ctx, short.ID); !errors.Is(err, authz.ErrNotFound) {
				return false, nil
			}
			ts, err := s.Tokens(ctx, "users/a")
			return err == nil && slices.Equal(tokenIDs(ts), []string{"long"}), err
		})
	})
}

package storetest

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

func testCreateUser(t *testing.T, newStore func(*testing.T) authz.Store) {
	t.Run("create and read", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		alice := user("alice", "Alice", "Alice@Example.com")
		last := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
		alice.LastActivity = &last
		bot := user("bot", "", "") // technical users may have no login id
		bot.TechnicalUser = true
		bot.PasswordHash = ""
		must(s.CreateUser(ctx, alice, []string{"roles/viewer", "projects/p#read"}))(t)
		must(s.CreateUser(ctx, bot, nil))(t)

		if got := must(s.User(ctx, "alice"))(t); !sameUser(got, alice) {
			t.Errorf("User = %+v, want %+v", got, alice)
		}
		// Login ids match case-insensitively, by username and by email.
		for _, login := range []string{"alice", "ALICE", "Alice", "alice@example.com", "ALICE@EXAMPLE.COM"} {
			if got, err := s.UserByLogin(ctx, login); err != nil || got.ID != "alice" {
				t.Errorf("UserByLogin(%q) = %q, %v; want alice", login, got.ID, err)
			}
		}
		for _, login := range []string{"bob", "alic", "bot", ""} {
			_, err := s.UserByLogin(ctx, login)
			wantErr(t, err, authz.ErrNotFound, "UserByLogin("+login+")")
		}
		_, err := s.User(ctx, "nobody")
		wantErr(t, err, authz.ErrNotFound, "User of an unknown id")
		if got := userIDs(must(s.Users(ctx))(t)); !slices.Equal(got, []string{"alice", "bot"}) {
			t.Errorf("Users = %v, want [alice bot]", got)
		}
		// The grants were written with their index.
		got, _ := must2(s.Grants(ctx, []string{"users/alice"}))(t)
		slices.Sort(got["users/alice"])
		if !slices.Equal(got["users/alice"], []string{"projects/p#read", "roles/viewer"}) {
			t.Errorf("grants of the new user = %v", got)
		}
		if rs := must(s.ResourcesWithGrant(ctx, "roles/viewer", "users/"))(t); !slices.Equal(rs, []string{"users/alice"}) {
			t.Errorf("ResourcesWithGrant(roles/viewer) = %v, want [users/alice]", rs)
		}
	})

	t.Run("conflicts", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		must(s.CreateUser(ctx, user("alice", "alice", "alice@example.com"), nil))(t)
		tests := []struct {
			name     string
			u        authz.UserRecord
			loginID  string // the login id the error must name; "" for the user id
			freeID   string // a login id of u that must stay free
			wantUser bool   // whether User(u.ID) exists afterwards (only for a duplicate id)
		}{
			{"same user id", user("alice", "other", "other@example.com"), "", "other", true},
			{"username taken, other case", user("u2", "ALICE", "u2@example.com"), "alice", "u2@example.com", false},
			{"username equals another's email", user("u3", "Alice@Example.COM", "u3@example.com"), "alice@example.com", "u3@example.com", false},
			{"email equals another's username", user("u4", "u4", "alice"), "alice", "u4", false},
			{"email taken", user("u5", "u5", "ALICE@example.com"), "alice@example.com", "u5", false},
		}
		for _, tt := range tests {
			_, err := s.CreateUser(ctx, tt.u, []string{"roles/rejected"})
			wantErr(t, err, authz.ErrConflict, "CreateUser: "+tt.name)
			if tt.loginID != "" && (err == nil || !strings.Contains(err.Error(), tt.loginID)) {
				t.Errorf("CreateUser %s: error %v does not name login id %q", tt.name, err, tt.loginID)
			}
			// Nothing of the rejected user was written.
			if _, err := s.UserByLogin(ctx, tt.freeID); !errors.Is(err, authz.ErrNotFound) {
				t.Errorf("CreateUser %s: login id %q taken by a rejected user (%v)", tt.name, tt.freeID, err)
			}
			if !tt.wantUser {
				_, err := s.User(ctx, tt.u.ID)
				wantErr(t, err, authz.ErrNotFound, "User of a rejected user")
			}
		}
		if got := must(s.User(ctx, "alice"))(t); got.Username != "alice" {
			t.Errorf("existing user changed by a rejected create: %+v", got)
		}
		if rs := must(s.ResourcesWithGrant(ctx, "roles/rejected", ""))(t); len(rs) != 0 {
			t.Errorf("grants of rejected users written: %v", rs)
		}
	})
}

func testUpdateUser(t *testing.T, newStore func(*testing.T) authz.Store) {
	bump := func(u *authz.UserRecord) error { u.SessionEpoch++; return nil }

	t.Run("updates fields", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		created := must(s.CreateUser(ctx, user("bob", "bob", "bob@example.com"), nil))(t)
		now := time.Now().UTC().Truncate(time.Second)
		got, rev, err := s.UpdateUser(ctx, "bob", func(u *authz.UserRecord) error {
			u.Disabled = true
			u.LastActivity = &now
			u.SessionEpoch = 7
			u.Username = "Bob" // a change of case keeps the same login id
			return nil
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rev <= created {
			t.Errorf("UpdateUser revision %d, not after CreateUser's %d", rev, created)
		}
		if !got.Disabled || got.SessionEpoch != 7 || got.LastActivity == nil || !got.LastActivity.Equal(now) || got.Username != "Bob" {
			t.Errorf("UpdateUser returned %+v", got)
		}
		if stored := must(s.User(ctx, "bob"))(t); !sameUser(stored, got) {
			t.Errorf("stored %+v, UpdateUser returned %+v", stored, got)
		}
		if u, err := s.UserByLogin(ctx, "BOB"); err != nil || u.Username != "Bob" {
			t.Errorf("UserByLogin after a case change = %+v, %v", u, err)
		}
		_, _, err = s.UpdateUser(ctx, "nobody", bump, nil)
		wantErr(t, err, authz.ErrNotFound, "UpdateUser of an unknown user")
	})

	t.Run("moves login ids", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		must(s.CreateUser(ctx, user("bob", "bob", "bob@example.com"), nil))(t)
		_, _, err := s.UpdateUser(ctx, "bob", func(u *authz.UserRecord) error {
			u.Username = "Robert"
			u.Email = "" // dropping the email frees it
			return nil
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, old := range []string{"bob", "bob@example.com"} {
			_, err := s.UserByLogin(ctx, old)
			wantErr(t, err, authz.ErrNotFound, "UserByLogin of a freed login id "+old)
		}
		if u, err := s.UserByLogin(ctx, "robert"); err != nil || u.ID != "bob" {
			t.Errorf("UserByLogin(robert) = %q, %v; want bob", u.ID, err)
		}
		// The freed ids can be taken by someone else; the new one cannot.
		must(s.CreateUser(ctx, user("bob2", "bob", "bob@example.com"), nil))(t)
		_, err = s.CreateUser(ctx, user("rob", "ROBERT", ""), nil)
		wantErr(t, err, authz.ErrConflict, "CreateUser with the moved-to login id")
		// Swapping username and email keeps both.
		_, _, err = s.UpdateUser(ctx, "bob2", func(u *authz.UserRecord) error {
			u.Username, u.Email = u.Email, u.Username
			return nil
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, login := range []string{"bob", "bob@example.com"} {
			if u, err := s.UserByLogin(ctx, login); err != nil || u.ID != "bob2" {
				t.Errorf("after swapping, UserByLogin(%q) = %q, %v", login, u.ID, err)
			}
		}
	})

	t.Run("conflict with another user changes nothing", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		bob := user("bob", "bob", "bob@example.com")
		carol := user("carol", "carol", "carol@example.com")
		must(s.CreateUser(ctx, bob, nil))(t)
		must(s.CreateUser(ctx, carol, nil))(t)
		for _, taken := range []string{"Carol", "CAROL@example.com"} {
			_, _, err := s.UpdateUser(ctx, "bob", func(u *authz.UserRecord) error {
				u.Email = taken
				u.SessionEpoch = 99
				return nil
			}, nil)
			wantErr(t, err, authz.ErrConflict, "UpdateUser to login id "+taken)
		}
		if got := must(s.User(ctx, "bob"))(t); !sameUser(got, bob) {
			t.Errorf("bob after rejected updates = %+v, want %+v", got, bob)
		}
		for login, want := range map[string]string{"bob@example.com": "bob", "carol": "carol", "carol@example.com": "carol"} {
			if u, err := s.UserByLogin(ctx, login); err != nil || u.ID != want {
				t.Errorf("UserByLogin(%q) = %q, %v; want %s", login, u.ID, err, want)
			}
		}
	})

	t.Run("update error writes nothing", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		bob := user("bob", "bob", "")
		must(s.CreateUser(ctx, bob, nil))(t)
		tk := token("users/bob", "t1")
		must(s.CreateToken(ctx, tk))(t)
		errVeto := errors.New("veto")
		_, _, err := s.UpdateUser(ctx, "bob", func(u *authz.UserRecord) error {
			u.Username = "robert"
			return errVeto
		}, func(authz.TokenRecord) bool { return true })
		if err != errVeto {
			t.Errorf("UpdateUser returned %v, want the update's error as is", err)
		}
		if got := must(s.User(ctx, "bob"))(t); !sameUser(got, bob) {
			t.Errorf("user after a failed update = %+v", got)
		}
		if _, err := s.UserByLogin(ctx, "robert"); !errors.Is(err, authz.ErrNotFound) {
			t.Errorf("login id of a failed update claimed: %v", err)
		}
		must(s.Token(ctx, tk.Digest))(t)
	})

	t.Run("dropToken deletes the chosen tokens", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		must(s.CreateUser(ctx, user("bob", "bob", ""), nil))(t)
		for _, id := range []string{"a", "b", "c"} {
			must(s.CreateToken(ctx, token("users/bob", id)))(t)
		}
		must(s.CreateToken(ctx, token("users/bobby", "other")))(t)
		var offered []string
		var mu sync.Mutex
		_, _, err := s.UpdateUser(ctx, "bob", bump, func(tk authz.TokenRecord) bool {
			mu.Lock()
			offered = append(offered, tk.ID)
			mu.Unlock()
			return tk.ID != "b"
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(offered)
		if !slices.Equal(slices.Compact(offered), []string{"a", "b", "c"}) {
			t.Errorf("dropToken was offered %v, want the user's tokens a, b, c", offered)
		}
		if got := tokenIDs(must(s.Tokens(ctx, "users/bob"))(t)); !slices.Equal(got, []string{"b"}) {
			t.Errorf("tokens after dropping a and c = %v, want [b]", got)
		}
		for _, id := range []string{"a", "c"} {
			_, err := s.TokenByID(ctx, id)
			wantErr(t, err, authz.ErrNotFound, "TokenByID of a dropped token")
			_, err = s.Token(ctx, token("users/bob", id).Digest)
			wantErr(t, err, authz.ErrNotFound, "Token of a dropped token")
		}
		must(s.TokenByID(ctx, "other"))(t)
		// A nil dropToken keeps every token.
		if _, _, err := s.UpdateUser(ctx, "bob", bump, nil); err != nil {
			t.Fatal(err)
		}
		if got := tokenIDs(must(s.Tokens(ctx, "users/bob"))(t)); !slices.Equal(got, []string{"b"}) {
			t.Errorf("tokens after an update without dropToken = %v, want [b]", got)
		}
	})

	t.Run("concurrent updates retry instead of losing writes", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		must(s.CreateUser(ctx, user("bob", "bob", ""), nil))(t)
		const n = 8
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				if _, _, err := s.UpdateUser(ctx, "bob", bump, nil); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if got := must(s.User(ctx, "bob"))(t); got.SessionEpoch != 1+n {
			t.Errorf("after %d concurrent increments SessionEpoch = %d, want %d", n, got.SessionEpoch, 1+n)
		}
	})
}

func testDeleteUser(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	must(s.CreateUser(ctx, user("dave", "dave", "dave@example.com"), []string{"roles/editor", "projects/p#read"}))(t)
	must(s.CreateUser(ctx, user("erin", "erin", "erin@example.com"), []string{"roles/editor"}))(t)
	must(s.AddGrant(ctx, "users/dave", "projects/q#admin"))(t)
	must(s.AddGrant(ctx, "projects/p", "roles/editor"))(t) // a grant of another resource stays
	daveTokens := []authz.TokenRecord{
		token("users/dave", "d-api"),
		token("users/dave", "d-r1", refresh("dave-fam")),
	}
	for _, tk := range daveTokens {
		must(s.CreateToken(ctx, tk))(t)
	}
	next := token("users/dave", "d-r2", refresh("dave-fam"))
	must(s.RotateToken(ctx, daveTokens[1], next))(t)
	daveTokens = append(daveTokens, next)
	erinToken := token("users/erin", "e-r1", refresh("erin-fam"))
	must(s.CreateToken(ctx, erinToken))(t)

	must(s.DeleteUser(ctx, "dave"))(t)

	_, err := s.User(ctx, "dave")
	wantErr(t, err, authz.ErrNotFound, "User after DeleteUser")
	for _, login := range []string{"dave", "dave@example.com"} {
		_, err := s.UserByLogin(ctx, login)
		wantErr(t, err, authz.ErrNotFound, "UserByLogin after DeleteUser")
	}
	if got, _ := must2(s.Grants(ctx, []string{"users/dave"}))(t); len(got) != 0 {
		t.Errorf("grants of the deleted user remain: %v", got)
	}
	for grant, want := range map[string][]string{
		"roles/editor":     {"projects/p", "users/erin"},
		"projects/p#read":  nil,
		"projects/q#admin": nil,
	} {
		if got := must(s.ResourcesWithGrant(ctx, grant, ""))(t); !slices.Equal(got, want) {
			t.Errorf("ResourcesWithGrant(%q) after DeleteUser = %v, want %v", grant, got, want)
		}
	}
	for _, tk := range daveTokens {
		_, err := s.Token(ctx, tk.Digest)
		wantErr(t, err, authz.ErrNotFound, "Token of a deleted user")
		_, err = s.TokenByID(ctx, tk.ID)
		wantErr(t, err, authz.ErrNotFound, "TokenByID of a deleted user")
	}
	if got := must(s.Tokens(ctx, "users/dave"))(t); len(got) != 0 {
		t.Errorf("Tokens of the deleted user = %v", tokenIDs(got))
	}
	_, err = s.RotateToken(ctx, daveTokens[2], token("users/dave", "d-r3", refresh("dave-fam")))
	if !errors.Is(err, authz.ErrNotFound) && !errors.Is(err, authz.ErrConflict) {
		t.Errorf("rotation of a deleted user's token: %v", err)
	}

	// The other user is untouched.
	if got := must(s.User(ctx, "erin"))(t); got.ID != "erin" {
		t.Errorf("other user = %+v", got)
	}
	must(s.UserByLogin(ctx, "erin@example.com"))(t)
	must(s.RotateToken(ctx, erinToken, token("users/erin", "e-r2", refresh("erin-fam"))))(t)

	// The login ids are free again.
	must(s.CreateUser(ctx, user("dave2", "DAVE", "dave@example.com"), nil))(t)

	_, err = s.DeleteUser(ctx, "dave")
	wantErr(t, err, authz.ErrNotFound, "DeleteUser of a deleted user")
}

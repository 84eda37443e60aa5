package etcdstore_test

import (
	"errors"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// A pending external sign-in is taken once; a later or expired take finds nothing.
func TestExternalLoginStateTakenOnce(t *testing.T) {
	s := etcdtest.NewStore(t, etcdtest.SharedEmbedded(t))
	ctx := t.Context()
	st := authz.ExternalLoginState{Provider: "p", State: "s", Nonce: "n", Verifier: "v", ExpiresAt: time.Now().Add(time.Minute)}
	if err := s.PutExternalLoginState(ctx, "d1", st); err != nil {
		t.Fatal(err)
	}
	got, err := s.TakeExternalLoginState(ctx, "d1")
	if err != nil || got.State != "s" || got.Verifier != "v" {
		t.Fatalf("take: %+v, %v", got, err)
	}
	if _, err := s.TakeExternalLoginState(ctx, "d1"); !errors.Is(err, authz.ErrNotFound) {
		t.Fatalf("second take: %v", err)
	}
	st.ExpiresAt = time.Now().Add(-time.Second)
	if err := s.PutExternalLoginState(ctx, "d2", st); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TakeExternalLoginState(ctx, "d2"); !errors.Is(err, authz.ErrNotFound) {
		t.Fatalf("expired take: %v", err)
	}
}

// Creating an external user writes user, login ids, grants and link
// together or nothing; a link written meanwhile or a taken login id fails
// the whole transaction; deleting the user deletes its link.
func TestCreateExternalUserAtomic(t *testing.T) {
	s := etcdtest.NewStore(t, etcdtest.SharedEmbedded(t))
	ctx := t.Context()
	if _, err := s.CreateUser(ctx, authz.UserRecord{ID: "taken", Username: "alice"}, nil); err != nil {
		t.Fatal(err)
	}
	link := authz.ExternalLink{Provider: "p", Subject: "sub/1|x", UserID: "u1", Roles: []string{"roles/dev"}}
	u := authz.UserRecord{ID: "u1", Username: "alice", ExternalIDs: []string{link.Key()}}
	if _, err := s.CreateExternalUser(ctx, u, []string{"roles/user", "roles/dev"}, link, 0); !errors.Is(err, authz.ErrConflict) {
		t.Fatalf("taken username: %v", err)
	}
	if _, _, err := s.ExternalLink(ctx, "p", "sub/1|x"); !errors.Is(err, authz.ErrNotFound) {
		t.Fatalf("a failed creation left a link: %v", err)
	}
	if _, err := s.User(ctx, "u1"); !errors.Is(err, authz.ErrNotFound) {
		t.Fatalf("a failed creation left a user: %v", err)
	}
	if g, _, _ := s.Grants(ctx, []string{"users/u1"}); len(g["users/u1"]) != 0 {
		t.Fatalf("a failed creation left grants: %v", g)
	}

	u.Username = "alice-1"
	if _, err := s.CreateExternalUser(ctx, u, []string{"roles/user", "roles/dev"}, link, 0); err != nil {
		t.Fatal(err)
	}
	got, rev, err := s.ExternalLink(ctx, "p", "sub/1|x")
	if err != nil || got.UserID != "u1" || rev == 0 {
		t.Fatalf("link: %+v at %d, %v", got, rev, err)
	}
	// A second creation that read the link as absent loses.
	u2 := authz.UserRecord{ID: "u2", Username: "alice-2", ExternalIDs: []string{link.Key()}}
	link2 := link
	link2.UserID = "u2"
	if _, err := s.CreateExternalUser(ctx, u2, nil, link2, 0); !errors.Is(err, authz.ErrConflict) {
		t.Fatalf("second creation: %v", err)
	}

	// Roles move with the link's revision as guard.
	got.Roles = []string{"roles/admin"}
	if _, err := s.UpdateExternalRoles(ctx, got, rev, []string{"roles/admin"}, []string{"roles/dev"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateExternalRoles(ctx, got, rev, []string{"roles/evil"}, nil); !errors.Is(err, authz.ErrConflict) {
		t.Fatalf("stale update: %v", err)
	}
	g, _, _ := s.Grants(ctx, []string{"users/u1"})
	if want := []string{"roles/admin", "roles/user"}; !equalSet(g["users/u1"], want) {
		t.Fatalf("grants %v, want %v", g["users/u1"], want)
	}
	if holders, _ := s.ResourcesWithGrant(ctx, "roles/dev", ""); len(holders) != 0 {
		t.Fatalf("removed role still indexed: %v", holders)
	}

	if _, err := s.DeleteUser(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ExternalLink(ctx, "p", "sub/1|x"); !errors.Is(err, authz.ErrNotFound) {
		t.Fatalf("link survived its user: %v", err)
	}
}

func equalSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]bool{}
	for _, x := range a {
		m[x] = true
	}
	for _, x := range b {
		if !m[x] {
			return false
		}
	}
	return true
}

package storetest

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

func testGrants(t *testing.T, newStore func(*testing.T) authz.Store) {
	t.Run("AddGrant holds and indexes", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		must(s.AddGrant(ctx, "projects/p1", "projects/p1#admin"))(t)
		got, _ := must2(s.Grants(ctx, []string{"projects/p1"}))(t)
		want := map[string][]string{"projects/p1": {"projects/p1#admin"}}
		if !maps.EqualFunc(got, want, slices.Equal) {
			t.Errorf("Grants = %v, want %v", got, want)
		}
		if got := must(s.ResourcesWithGrant(ctx, "projects/p1#admin", ""))(t); !slices.Equal(got, []string{"projects/p1"}) {
			t.Errorf("ResourcesWithGrant = %v, want [projects/p1]", got)
		}
	})

	t.Run("AddGrant is idempotent", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		first := must(s.AddGrant(ctx, "users/u1", "roles/editor"))(t)
		second := must(s.AddGrant(ctx, "users/u1", "roles/editor"))(t)
		if second < first {
			t.Errorf("repeated AddGrant returned revision %d, before the first's %d", second, first)
		}
		got, _ := must2(s.Grants(ctx, []string{"users/u1"}))(t)
		if !slices.Equal(got["users/u1"], []string{"roles/editor"}) {
			t.Errorf("Grants after adding twice = %v, want the grant once", got)
		}
		if got := must(s.ResourcesWithGrant(ctx, "roles/editor", ""))(t); !slices.Equal(got, []string{"users/u1"}) {
			t.Errorf("ResourcesWithGrant after adding twice = %v, want [users/u1]", got)
		}
	})

	t.Run("Grants of several resources", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		// "users/a" is a prefix of "users/ab": their grants must not mix.
		must(s.AddGrant(ctx, "users/a", "projects/p#read"))(t)
		must(s.AddGrant(ctx, "users/a", "roles/viewer"))(t)
		must(s.AddGrant(ctx, "users/ab", "projects/q#write"))(t)
		last := must(s.AddGrant(ctx, "users/a/b", "projects/r#read"))(t)
		got, rev := must2(s.Grants(ctx, []string{"users/a", "users/ab", "users/nobody", "users/a"}))(t)
		want := map[string][]string{
			"users/a":  {"projects/p#read", "roles/viewer"},
			"users/ab": {"projects/q#write"},
		}
		for r := range got {
			slices.Sort(got[r])
		}
		if !maps.EqualFunc(got, want, slices.Equal) {
			t.Errorf("Grants = %v, want %v (resources holding nothing absent)", got, want)
		}
		if cur := must(s.CurrentRevision(ctx))(t); rev < last || rev > cur {
			t.Errorf("Grants revision %d, want between the last write %d and the current revision %d", rev, last, cur)
		}
		got, rev = must2(s.Grants(ctx, nil))(t)
		if len(got) != 0 || rev < last {
			t.Errorf("Grants(nil) = %v at %d, want an empty map at >= %d", got, rev, last)
		}
	})

	t.Run("RemoveGrants", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		for _, g := range []string{"g1", "g2", "g3"} {
			must(s.AddGrant(ctx, "projects/p", g))(t)
		}
		must(s.AddGrant(ctx, "projects/other", "g1"))(t)
		// Grants the resource does not hold are ignored.
		must(s.RemoveGrants(ctx, "projects/p", []string{"g1", "g3", "not-held"}))(t)
		got, _ := must2(s.Grants(ctx, []string{"projects/p", "projects/other"}))(t)
		want := map[string][]string{"projects/p": {"g2"}, "projects/other": {"g1"}}
		if !maps.EqualFunc(got, want, slices.Equal) {
			t.Errorf("Grants after RemoveGrants = %v, want %v", got, want)
		}
		if got := must(s.ResourcesWithGrant(ctx, "g1", ""))(t); !slices.Equal(got, []string{"projects/other"}) {
			t.Errorf("ResourcesWithGrant(g1) after removal = %v, want [projects/other]", got)
		}
		if got := must(s.ResourcesWithGrant(ctx, "g3", ""))(t); len(got) != 0 {
			t.Errorf("ResourcesWithGrant(g3) after removal = %v, want none", got)
		}
		// Removing the last grant makes the resource absent from Grants.
		must(s.RemoveGrants(ctx, "projects/p", []string{"g2"}))(t)
		if got, _ := must2(s.Grants(ctx, []string{"projects/p"}))(t); len(got) != 0 {
			t.Errorf("Grants of a resource holding nothing = %v, want an empty map", got)
		}
		must(s.RemoveGrants(ctx, "projects/none", []string{"g1"}))(t)
		must(s.RemoveGrants(ctx, "projects/none", nil))(t)
	})
}

func testResourcesWithGrant(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	for _, r := range []string{"projects/b", "users/x", "projects/ab", "projects/a"} {
		must(s.AddGrant(ctx, r, "g"))(t)
	}
	// Grants that extend "g" must not count as holding "g".
	must(s.AddGrant(ctx, "projects/c", "g2"))(t)
	must(s.AddGrant(ctx, "projects/d", "gx"))(t)
	must(s.AddGrant(ctx, "projects/e", "other"))(t)
	tests := []struct {
		grant, prefix string
		want          []string
	}{
		{"g", "", []string{"projects/a", "projects/ab", "projects/b", "users/x"}},
		{"g", "projects/", []string{"projects/a", "projects/ab", "projects/b"}},
		{"g", "projects/a", []string{"projects/a", "projects/ab"}},
		{"g", "projects/ab", []string{"projects/ab"}},
		{"g", "users/", []string{"users/x"}},
		{"g", "nothing/", nil},
		{"g2", "", []string{"projects/c"}},
		{"unknown", "", nil},
	}
	for _, tt := range tests {
		got := must(s.ResourcesWithGrant(ctx, tt.grant, tt.prefix))(t)
		if !slices.Equal(got, tt.want) {
			t.Errorf("ResourcesWithGrant(%q, %q) = %q, want %q", tt.grant, tt.prefix, got, tt.want)
		}
	}
}

// testConcurrentAddGrant: no grant is lost when many are added at once, in
// the resource's grants and in the reverse index.
func testConcurrentAddGrant(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if _, err := s.AddGrant(ctx, "projects/shared", fmt.Sprintf("g%03d", i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, _ := must2(s.Grants(ctx, []string{"projects/shared"}))(t)
	if len(got["projects/shared"]) != n {
		t.Errorf("after %d concurrent AddGrant, Grants has %d", n, len(got["projects/shared"]))
	}
	for i := range n {
		g := fmt.Sprintf("g%03d", i)
		if !slices.Contains(got["projects/shared"], g) {
			t.Errorf("grant %s missing from Grants", g)
		}
		if rs := must(s.ResourcesWithGrant(ctx, g, ""))(t); !slices.Equal(rs, []string{"projects/shared"}) {
			t.Errorf("ResourcesWithGrant(%s) = %v, want [projects/shared]", g, rs)
		}
	}
}

// testGrantsSnapshot: Grants reads all resources at one revision. A writer
// always grants A before B, so at every revision A holds at least as many
// grants as B, and at most one more. Reading B after A at a later revision
// could see B ahead of A.
func testGrantsSnapshot(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	const writes = 40
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for i := range writes {
			g := "g" + strconv.Itoa(i)
			if _, err := s.AddGrant(ctx, "projects/a", g); err != nil {
				done <- err
				return
			}
			if _, err := s.AddGrant(ctx, "projects/b", g); err != nil {
				done <- err
				return
			}
		}
	}()
	reads := 0
	for finished := false; !finished; {
		select {
		case err, ok := <-done:
			if ok && err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		got, _ := must2(s.Grants(ctx, []string{"projects/b", "projects/a"}))(t)
		a, b := len(got["projects/a"]), len(got["projects/b"])
		if b > a || a > b+1 {
			t.Fatalf("Grants saw %d grants on A and %d on B: not one revision", a, b)
		}
		reads++
	}
	if reads < 2 {
		t.Logf("only %d reads overlapped the writes", reads)
	}
}

func testSubject(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	alice := user("alice", "alice", "alice@example.com")
	must(s.CreateUser(ctx, alice, []string{"roles/viewer"}))(t)
	must(s.AddGrant(ctx, "users/alice", "projects/p#read"))(t)
	must(s.AddGrant(ctx, "users/alice2", "projects/x#admin"))(t) // must not leak into alice's
	must(s.AddGrant(ctx, "users/ghost", "projects/g#read"))(t)   // grants without a user record
	must(s.AddGrant(ctx, "clients/c1", "projects/c#read"))(t)
	last := must(s.RevokeSession(ctx, "jti-revoked", time.Now().Add(time.Hour)))(t)

	tests := []struct {
		subject, jti string
		grants       []string
		user         bool
		revoked      bool
	}{
		{"users/alice", "", []string{"projects/p#read", "roles/viewer"}, true, false},
		{"users/alice", "jti-revoked", []string{"projects/p#read", "roles/viewer"}, true, true},
		{"users/alice", "jti-other", []string{"projects/p#read", "roles/viewer"}, true, false},
		{"users/ghost", "jti-revoked", []string{"projects/g#read"}, false, true},
		{"clients/c1", "", []string{"projects/c#read"}, false, false},
		{"users/nobody", "", nil, false, false},
	}
	for _, tt := range tests {
		snap, err := s.Subject(ctx, tt.subject, tt.jti)
		if err != nil {
			t.Fatalf("Subject(%q, %q): %v", tt.subject, tt.jti, err)
		}
		slices.Sort(snap.Grants)
		if !slices.Equal(snap.Grants, tt.grants) {
			t.Errorf("Subject(%q).Grants = %v, want %v", tt.subject, snap.Grants, tt.grants)
		}
		if (snap.User != nil) != tt.user {
			t.Errorf("Subject(%q).User = %v, want present: %v", tt.subject, snap.User, tt.user)
		} else if tt.user && !sameUser(*snap.User, alice) {
			t.Errorf("Subject(%q).User = %+v, want %+v", tt.subject, *snap.User, alice)
		}
		if snap.SessionRevoked != tt.revoked {
			t.Errorf("Subject(%q, %q).SessionRevoked = %v, want %v", tt.subject, tt.jti, snap.SessionRevoked, tt.revoked)
		}
		if cur := must(s.CurrentRevision(ctx))(t); snap.Revision < last || snap.Revision > cur {
			t.Errorf("Subject revision %d, want between the last write %d and the current revision %d", snap.Revision, last, cur)
		}
	}
}

// testSubjectSnapshot: Subject reads grants and revocation at one
// revision. The writer grants g<i> before it revokes jti-<i>, so a snapshot
// that sees jti-<k> revoked sees at least k+1 grants.
func testSubjectSnapshot(t *testing.T, newStore func(*testing.T) authz.Store) {
	s, ctx := newStore(t), t.Context()
	const writes = 30
	exp := time.Now().Add(time.Hour)
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for i := range writes {
			if _, err := s.AddGrant(ctx, "users/u", "g"+strconv.Itoa(i)); err != nil {
				done <- err
				return
			}
			if _, err := s.RevokeSession(ctx, "jti-"+strconv.Itoa(i), exp); err != nil {
				done <- err
				return
			}
		}
	}()
	for k, finished := 0, false; !finished; k = (k + 1) % writes {
		select {
		case err, ok := <-done:
			if ok && err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		snap := must(s.Subject(ctx, "users/u", "jti-"+strconv.Itoa(k)))(t)
		if snap.SessionRevoked && len(snap.Grants) < k+1 {
			t.Fatalf("Subject saw jti-%d revoked but only %d grants: not one revision", k, len(snap.Grants))
		}
	}
}

package storetest

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

// watchTimeout bounds every wait for a change.
const watchTimeout = 10 * time.Second

// watcher runs Store.Watch in a goroutine and records what fn receives.
type watcher struct {
	changes chan authz.Change
	done    chan error // receives Watch's result
	cancel  context.CancelFunc
	overlap atomic.Bool // fn was called while a call was running
}

func startWatch(t *testing.T, s authz.Store, after authz.Revision) *watcher {
	ctx, cancel := context.WithCancel(t.Context())
	w := &watcher{changes: make(chan authz.Change, 10000), done: make(chan error, 1), cancel: cancel}
	var running atomic.Int32
	go func() {
		w.done <- s.Watch(ctx, after, func(c authz.Change) {
			if running.Add(1) != 1 {
				w.overlap.Store(true)
			}
			w.changes <- c
			running.Add(-1)
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(watchTimeout):
			t.Error("Watch did not return after its context was cancelled")
		}
		if w.overlap.Load() {
			t.Error("Watch called fn concurrently")
		}
	})
	return w
}

// collect returns the changes other than progress notifications up to and
// including the first one for which last returns true.
func (w *watcher) collect(t *testing.T, last func(authz.Change) bool) []authz.Change {
	t.Helper()
	var got []authz.Change
	timeout := time.After(watchTimeout)
	for {
		select {
		case c := <-w.changes:
			if c.Kind == authz.ChangeProgress {
				continue
			}
			got = append(got, c)
			if last(c) {
				return got
			}
		case err := <-w.done:
			t.Fatalf("Watch returned %v; changes so far: %v", err, got)
		case <-timeout:
			t.Fatalf("no final change within %s; changes so far: %v", watchTimeout, got)
		}
	}
}

func kindName(k authz.ChangeKind) string {
	return [...]string{"progress", "grant", "token", "session", "user", "client", "signing-key"}[k]
}

func describe(cs []authz.Change) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = fmt.Sprintf("%s %s @%d", kindName(c.Kind), c.Key, c.Revision)
		if c.Revocation {
			out[i] += " revocation"
		}
	}
	return out
}

func testWatch(t *testing.T, newStore func(*testing.T) authz.Store) {
	t.Run("reports every kind of change and resumes", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		start := must(s.CurrentRevision(ctx))(t)
		began := time.Now()
		w := startWatch(t, s, start)

		var want []authz.Change
		expect := func(rev authz.Revision, err error, changes ...authz.Change) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range changes {
				c.Revision = rev
				want = append(want, c)
			}
		}
		grant := func(key string) authz.Change { return authz.Change{Kind: authz.ChangeGrant, Key: key} }
		revoked := func(c authz.Change) authz.Change { c.Revocation = true; return c }
		tk := token("users/w", "wt")
		rev, err := s.AddGrant(ctx, "projects/p", "g1")
		expect(rev, err, grant("projects/p"))
		rev, err = s.CreateToken(ctx, tk)
		expect(rev, err, authz.Change{Kind: authz.ChangeToken, Key: tk.Digest})
		rev, err = s.RevokeSession(ctx, "jti-w", time.Now().Add(time.Hour))
		expect(rev, err, revoked(authz.Change{Kind: authz.ChangeSession, Key: "jti-w"}))
		rev, err = s.CreateUser(ctx, user("wu", "wu", "wu@example.com"), []string{"roles/a", "roles/b"})
		expect(rev, err, authz.Change{Kind: authz.ChangeUser, Key: "wu"}, grant("users/wu"))
		rev, err = s.CreateClient(ctx, authz.ClientRecord{ID: "wc"})
		expect(rev, err, authz.Change{Kind: authz.ChangeClient, Key: "wc"})
		rev, err = s.AddSigningKey(ctx, authz.SigningKey{ID: "wk"})
		expect(rev, err, authz.Change{Kind: authz.ChangeSigningKey, Key: "wk"})
		rev, err = s.RemoveGrants(ctx, "projects/p", []string{"g1"})
		expect(rev, err, revoked(grant("projects/p")))
		rev, err = s.DeleteTokens(ctx, []authz.TokenRecord{tk})
		expect(rev, err, revoked(authz.Change{Kind: authz.ChangeToken, Key: tk.Digest}))
		_, rev, err = s.UpdateUser(ctx, "wu", func(u *authz.UserRecord) error { u.Email = ""; return nil }, nil)
		expect(rev, err, authz.Change{Kind: authz.ChangeUser, Key: "wu"})
		rev, err = s.DeleteClient(ctx, "wc")
		expect(rev, err, revoked(authz.Change{Kind: authz.ChangeClient, Key: "wc"}))
		rev, err = s.DeleteUser(ctx, "wu")
		expect(rev, err, revoked(authz.Change{Kind: authz.ChangeUser, Key: "wu"}), revoked(grant("users/wu")))
		rev, err = s.AddSigningKey(ctx, authz.SigningKey{ID: "last"})
		expect(rev, err, authz.Change{Kind: authz.ChangeSigningKey, Key: "last"})
		lastRev := rev

		isLast := func(c authz.Change) bool { return c.Kind == authz.ChangeSigningKey && c.Key == "last" }
		got := w.collect(t, isLast)

		// Every change is one of the writes, with the write's revision, and
		// every write is reported: nothing for index keys, nothing missing.
		cmpChange := func(a, b authz.Change) int {
			return cmp.Or(cmp.Compare(a.Revision, b.Revision), cmp.Compare(a.Kind, b.Kind), strings.Compare(a.Key, b.Key))
		}
		wantSorted := slices.SortedFunc(slices.Values(want), cmpChange)
		// CommittedAt is optional (zero: unknown); when given, it is the
		// time of the write, by this machine's clock.
		untimed := make([]authz.Change, len(got))
		for i, c := range got {
			if !c.CommittedAt.IsZero() && (c.CommittedAt.Before(began.Add(-time.Second)) || c.CommittedAt.After(time.Now().Add(time.Second))) {
				t.Errorf("change %q: CommittedAt %v outside the test's run (began %v)", describe([]authz.Change{c}), c.CommittedAt, began)
			}
			c.CommittedAt = time.Time{}
			untimed[i] = c
		}
		// A backend may repeat a change within a revision; compare sets.
		gotSorted := slices.Compact(slices.SortedFunc(slices.Values(untimed), cmpChange))
		if !slices.Equal(gotSorted, wantSorted) {
			t.Errorf("Watch reported\n%q\nwant\n%q", describe(gotSorted), describe(wantSorted))
		}
		for i := 1; i < len(got); i++ {
			if got[i].Revision < got[i-1].Revision {
				t.Errorf("Watch reported revision %d after %d", got[i].Revision, got[i-1].Revision)
			}
		}
		if len(got) > 0 && got[0].Revision <= start {
			t.Errorf("Watch from %d reported a change at %d", start, got[0].Revision)
		}

		// Resuming from any revision reports exactly the changes after it.
		for _, from := range []authz.Revision{got[len(got)/3].Revision, got[2*len(got)/3].Revision, start} {
			var tail []authz.Change
			for _, c := range got {
				if c.Revision > from {
					tail = append(tail, c)
				}
			}
			w2 := startWatch(t, s, from)
			if resumed := w2.collect(t, isLast); !slices.Equal(resumed, tail) {
				t.Errorf("Watch resumed from %d reported\n%q\nwant\n%q", from, describe(resumed), describe(tail))
			}
			w2.cancel()
		}

		// Resuming from the newest revision replays nothing.
		w3 := startWatch(t, s, lastRev)
		rev = must(s.AddGrant(ctx, "projects/after", "g"))(t)
		first := w3.collect(t, func(authz.Change) bool { return true })
		first[0].CommittedAt = time.Time{} // optional, checked above
		if want := (authz.Change{Kind: authz.ChangeGrant, Key: "projects/after", Revision: rev}); first[0] != want {
			t.Errorf("Watch from the newest revision first reported %q, want %q", describe(first), describe([]authz.Change{want}))
		}
	})

	t.Run("progress notifications", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		rev := must(s.CurrentRevision(ctx))(t)
		w := startWatch(t, s, rev)
		timeout := time.After(watchTimeout)
		for {
			select {
			case c := <-w.changes:
				if c.Kind != authz.ChangeProgress {
					t.Fatalf("unexpected change %q on an idle store", describe([]authz.Change{c}))
				}
				if c.Revision < rev || c.Key != "" {
					t.Errorf("progress notification %+v, want Revision >= %d and no Key", c, rev)
				}
				return
			case err := <-w.done:
				t.Fatalf("Watch returned %v", err)
			case <-timeout:
				t.Fatalf("no progress notification within %s", watchTimeout)
			}
		}
	})

	t.Run("returns the context's error when it ends", func(t *testing.T) {
		s := newStore(t)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		rev := must(s.CurrentRevision(ctx))(t)
		go func() { done <- s.Watch(ctx, rev, func(authz.Change) {}) }()
		time.Sleep(50 * time.Millisecond) // let the watch start
		cancel()
		select {
		case err := <-done:
			wantErr(t, err, context.Canceled, "Watch after cancel")
		case <-time.After(watchTimeout):
			t.Fatal("Watch did not return after its context was cancelled")
		}
	})

	t.Run("ErrCompacted", func(t *testing.T) {
		s, ctx := newStore(t), t.Context()
		c, ok := s.(Compactor)
		if !ok {
			t.Skip("the store does not implement storetest.Compactor")
		}
		old := must(s.CurrentRevision(ctx))(t)
		for _, g := range []string{"g1", "g2", "g3"} {
			must(s.AddGrant(ctx, "projects/compacted", g))(t)
		}
		cur := must(s.CurrentRevision(ctx))(t)
		if err := c.Compact(ctx, cur); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, watchTimeout)
		defer cancel()
		var reported []authz.Change
		err := s.Watch(wctx, old, func(c authz.Change) { reported = append(reported, c) })
		wantErr(t, err, authz.ErrCompacted, "Watch from a compacted revision")
		if len(reported) > 0 {
			t.Errorf("Watch from compacted revision %d (compacted up to %d) reported %q", old, cur, describe(reported))
		}
		// From the compaction revision on, watching works.
		w := startWatch(t, s, cur)
		rev := must(s.AddGrant(ctx, "projects/compacted", "g4"))(t)
		got := w.collect(t, func(authz.Change) bool { return true })
		got[0].CommittedAt = time.Time{} // optional, checked elsewhere
		if want := (authz.Change{Kind: authz.ChangeGrant, Key: "projects/compacted", Revision: rev}); got[0] != want {
			t.Errorf("Watch after compaction reported %q, want %q", describe(got), describe([]authz.Change{want}))
		}
	})
}

package authz_test

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

// twoReplicas returns two services sharing one store prefix, as two
// Portcullis processes on one etcd cluster would.
func twoReplicas(t *testing.T) (a, b *authz.Service, st authz.Store, prefix string) {
	t.Helper()
	prefix = newPrefix("replicas")
	sa := openStore(t, embeddedEndpoints(t), prefix)
	sb := openStore(t, embeddedEndpoints(t), prefix)
	return startService(t, sa, testConfig()), startService(t, sb, testConfig()), sa, prefix
}

func allowed(svc *authz.Service, tok, perm string) error {
	_, err := svc.VerifyAccess(bg, tok, perm, authz.VerifyOptions{})
	return err
}

// warm verifies twice so the second answer is served from the caches.
func warm(t *testing.T, svc *authz.Service, tok, perm string) {
	t.Helper()
	for i := 0; i < 2; i++ {
		if err := allowed(svc, tok, perm); err != nil {
			t.Fatalf("warm-up verify %s: %v", perm, err)
		}
	}
}

// TestRevocationReachesEveryReplica checks the cache contract: once a
// revoking write returned, the replica that served it never allows the old
// access again, and the other replica stops within the watch delay.
func TestRevocationReachesEveryReplica(t *testing.T) {
	a, b, _, _ := twoReplicas(t)
	u := mustUser(t, a, authz.UserInput{Username: "pat", Password: "password1"})
	sub := "users/" + u.ID
	if _, err := a.AddPermission(bg, "roles/ops", "servers#write"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddPermission(bg, sub, "roles/ops"); err != nil {
		t.Fatal(err)
	}
	newToken := func() string {
		tok, _, _, err := a.IssueToken(bg, authz.TokenSpec{Subject: sub, Scopes: []string{"*#admin"}, Purpose: authz.PurposeUserAPI})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	type revocation struct {
		name   string
		perm   string
		revoke func(tok string) error
		undo   func() error
	}
	cases := []revocation{
		{"revoke token", "servers/s1#write", func(tok string) error { _, err := a.RevokeToken(bg, nil, tok); return err }, nil},
		{"remove role grant", "servers/s1#write",
			func(string) error { _, err := a.RemovePermission(bg, "roles/ops", "servers#write", false); return err },
			func() error { _, err := a.AddPermission(bg, "roles/ops", "servers#write"); return err }},
		{"remove role from subject", "servers/s1#write",
			func(string) error { _, err := a.RemovePermission(bg, sub, "roles/ops", false); return err },
			func() error { _, err := a.AddPermission(bg, sub, "roles/ops"); return err }},
		{"disable user", "users/" + u.ID + "#read",
			func(string) error { _, _, err := a.UpdateUser(bg, u.ID, []byte(`{"disabled":true}`)); return err },
			func() error { _, _, err := a.UpdateUser(bg, u.ID, []byte(`{"disabled":false}`)); return err }},
	}
	var lags []time.Duration
	for _, c := range cases {
		for i := 0; i < 10; i++ {
			tok := newToken()
			warm(t, a, tok, c.perm)
			warm(t, b, tok, c.perm)
			if err := c.revoke(tok); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			start := time.Now()
			if err := allowed(a, tok, c.perm); err == nil {
				t.Fatalf("%s: the revoking replica allowed right after the write returned", c.name)
			}
			eventually(t, 5*time.Second, c.name+" on the other replica", func() bool { return allowed(b, tok, c.perm) != nil })
			lags = append(lags, time.Since(start))
			if err := allowed(b, tok, c.perm); err == nil {
				t.Fatalf("%s: other replica allowed again", c.name)
			}
			if c.undo != nil {
				if err := c.undo(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	slices.Sort(lags)
	p99 := lags[len(lags)*99/100]
	t.Logf("propagation to the other replica over %d revocations: p50 %v, p99 %v, max %v", len(lags), lags[len(lags)/2], p99, lags[len(lags)-1])
	if lags[len(lags)-1] > 2*time.Second {
		t.Fatalf("propagation max %v", lags[len(lags)-1])
	}
}

// TestGrantWrittenWithEtcdctl writes a grant by hand, in the layout
// docs/etcd-layout.md documents, and expects it to take effect through the watch.
func TestGrantWrittenWithEtcdctl(t *testing.T) {
	etcdctl, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Fatalf("etcdctl not found (run scripts/install-test-deps.sh): %v", err)
	}
	a, b, _, prefix := twoReplicas(t)
	tok, _, _, err := a.IssueToken(bg, authz.TokenSpec{Subject: "agents/hand", Scopes: []string{"*#admin"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []*authz.Service{a, b} {
		if err := allowed(svc, tok, "docs/x#read"); !errors.Is(err, authz.ErrPermissionDenied) {
			t.Fatalf("before: %v", err)
		}
	}
	ep := embeddedEndpoints(t)[0]
	for _, kv := range [][2]string{
		{prefix + "grants/agents/hand|docs#read", `{"created_at":"2026-01-01T00:00:00Z"}`},
		{prefix + "holders/docs#read|agents/hand", `{"created_at":"2026-01-01T00:00:00Z"}`},
	} {
		cmd := exec.Command(etcdctl, "--endpoints", ep, "put", kv[0], kv[1])
		cmd.Env = append(cmd.Environ(), "ETCDCTL_API=3")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("etcdctl put: %v\n%s", err, out)
		}
	}
	for _, svc := range []*authz.Service{a, b} {
		eventually(t, 5*time.Second, "hand-written grant", func() bool { return allowed(svc, tok, "docs/x#read") == nil })
	}
	got, err := a.ResourcesWithPermission(bg, "docs#read", "")
	if err != nil || !slices.Equal(got, []string{"agents/hand"}) {
		t.Fatalf("resources = %q, %v", got, err)
	}
}

// slowWatch delays every change the watch reports, to show what a
// consistency token buys while a replica's watch lags.
type slowWatch struct {
	authz.Store
	delay atomic.Int64
}

func (s *slowWatch) Watch(ctx context.Context, after authz.Revision, fn func(authz.Change)) error {
	return s.Store.Watch(ctx, after, func(c authz.Change) {
		if c.Kind != authz.ChangeProgress {
			time.Sleep(time.Duration(s.delay.Load()))
		}
		fn(c)
	})
}

func TestConsistencyTokenBypassesStaleCache(t *testing.T) {
	prefix := newPrefix("consistency")
	writer := openStore(t, embeddedEndpoints(t), prefix)
	lagging := &slowWatch{Store: openStore(t, embeddedEndpoints(t), prefix)}
	svc := startService(t, lagging, testConfig())
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/c", Scopes: []string{"*#admin"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := allowed(svc, tok, "files/f#read"); !errors.Is(err, authz.ErrPermissionDenied) {
			t.Fatalf("before: %v", err)
		}
	}
	lagging.delay.Store(int64(2 * time.Second))
	// Another replica grants; this one's watch will not hear of it for 2s.
	rev, err := writer.AddGrant(bg, "agents/c", "files#read")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.VerifyAccess(bg, tok, "files/f#read", authz.VerifyOptions{AtLeastRevision: rev}); err != nil {
		t.Fatalf("with at-least-revision %d: %v", rev, err)
	}
	if err := allowed(svc, tok, "files/f#read"); err == nil {
		t.Log("note: plain verify already saw the grant (cache entry was refreshed by the consistent read)")
	}
	lagging.delay.Store(0)
}

// lossyWatch drops the changes it is told to and then reports compaction,
// as etcd does when a watcher fell too far behind.
type lossyWatch struct {
	authz.Store
	drop atomic.Bool
}

func (s *lossyWatch) Watch(ctx context.Context, after authz.Revision, fn func(authz.Change)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var compacted atomic.Bool
	err := s.Store.Watch(ctx, after, func(c authz.Change) {
		if s.drop.Load() && c.Kind != authz.ChangeProgress {
			s.drop.Store(false)
			compacted.Store(true)
			cancel()
			return
		}
		fn(c)
	})
	if compacted.Load() {
		return authz.ErrCompacted
	}
	return err
}

func TestMissedChangesFlushCaches(t *testing.T) {
	prefix := newPrefix("lossy")
	writer := openStore(t, embeddedEndpoints(t), prefix)
	lossy := &lossyWatch{Store: openStore(t, embeddedEndpoints(t), prefix)}
	svc := startService(t, lossy, testConfig())
	if _, err := svc.AddPermission(bg, "agents/l", "files#read"); err != nil {
		t.Fatal(err)
	}
	tok, _, _, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/l", Scopes: []string{"*#admin"}})
	if err != nil {
		t.Fatal(err)
	}
	warm(t, svc, tok, "files/f#read")
	restarts := svc.WatchStatus().Restarts
	lossy.drop.Store(true)
	if _, err := writer.RemoveGrants(bg, "agents/l", []string{"files#read"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "watch restart after compaction", func() bool { return svc.WatchStatus().Restarts > restarts })
	eventually(t, 5*time.Second, "removal visible after flush", func() bool { return allowed(svc, tok, "files/f#read") != nil })
}

// TestConcurrentMissesAreCoalesced hammers one cold decision from many
// goroutines; all must agree.
func TestConcurrentMissesAgree(t *testing.T) {
	svc := newService(t)
	if _, err := svc.AddPermission(bg, "agents/m", "x#read"); err != nil {
		t.Fatal(err)
	}
	tok, _, _, _ := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/m", Scopes: []string{"*#admin"}})
	var wg sync.WaitGroup
	var bad atomic.Int64
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if allowed(svc, tok, "x/y#read") != nil || allowed(svc, tok, "x/y#write") == nil {
				bad.Add(1)
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d goroutines got a wrong decision", bad.Load())
	}
}

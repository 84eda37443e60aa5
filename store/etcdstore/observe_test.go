package etcdstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/store/etcdstore"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// requests records what an Observer is told.
type requests struct {
	mu   sync.Mutex
	ops  map[string]int
	errs int
}

func (r *requests) EtcdRequest(op string, _ time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops[op]++
	if err != nil {
		r.errs++
	}
}

func (r *requests) count(op string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ops[op]
}

// TestWatchReportsCommitTimes: every change written through the Store
// carries its commit time, and the Observer hears every kind of request.
func TestWatchReportsCommitTimes(t *testing.T) {
	obs := &requests{ops: map[string]int{}}
	ctx := t.Context()
	s, err := etcdstore.Open(ctx, etcdstore.Config{
		Endpoints: etcdtest.SharedEmbedded(t), Prefix: fmt.Sprintf("/commit-times-%d/", time.Now().UnixNano()), Logger: slog.New(slog.DiscardHandler), Observer: obs,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start, err := s.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes := make(chan authz.Change, 100)
	go func() { _ = s.Watch(wctx, start, func(c authz.Change) { changes <- c }) }()

	exp := time.Now().Add(time.Hour)
	tk := authz.TokenRecord{ID: "t1", Digest: "d1", Subject: "users/u", ExpiresAt: &exp}
	writes := []func() (authz.Revision, error){
		func() (authz.Revision, error) { return s.AddGrant(ctx, "projects/p", "projects/p#read") },
		func() (authz.Revision, error) { return s.CreateToken(ctx, tk) },
		func() (authz.Revision, error) { return s.RevokeSession(ctx, "jti", exp) },
		func() (authz.Revision, error) { return s.CreateClient(ctx, authz.ClientRecord{ID: "c"}) },
		func() (authz.Revision, error) { return s.DeleteClient(ctx, "c") },
		func() (authz.Revision, error) { return s.DeleteTokens(ctx, []authz.TokenRecord{tk}) },
		func() (authz.Revision, error) { return s.RemoveGrants(ctx, "projects/p", []string{"projects/p#read"}) },
	}
	var last authz.Revision
	for _, w := range writes {
		if last, err = w(); err != nil {
			t.Fatal(err)
		}
	}
	seen := 0
	timeout := time.After(10 * time.Second)
	for seen < len(writes) {
		select {
		case c := <-changes:
			if c.Kind == authz.ChangeProgress {
				continue
			}
			seen++
			if c.CommittedAt.Before(began.Add(-time.Second)) || c.CommittedAt.After(time.Now()) {
				t.Errorf("change %v @%d: commit time %v, want between %v and now", c.Kind, c.Revision, c.CommittedAt, began)
			}
			if c.Revision > last {
				t.Fatalf("change after the last write: %+v", c)
			}
		case <-timeout:
			t.Fatalf("saw %d of %d changes", seen, len(writes))
		}
	}
	for _, op := range []string{etcdstore.OpTxnWrite, etcdstore.OpTxnRead, etcdstore.OpLeaseGrant, etcdstore.OpWatchOpen, etcdstore.OpGet} {
		if obs.count(op) == 0 {
			t.Errorf("observer never told of %s: %v", op, obs.ops)
		}
	}
}

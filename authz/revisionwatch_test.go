package authz_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
)

// pausingWatch, once armed, pauses after the first change it delivers, as
// a busy watch goroutine might between two changes of one transaction.
type pausingWatch struct {
	authz.Store
	armed     atomic.Bool
	delivered chan authz.Change
}

func (p *pausingWatch) Watch(ctx context.Context, after authz.Revision, fn func(authz.Change)) error {
	return p.Store.Watch(ctx, after, func(c authz.Change) {
		fn(c)
		if c.Kind != authz.ChangeProgress && p.armed.CompareAndSwap(true, false) {
			p.delivered <- c
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// A consistency token names a revision; a transaction at that revision
// may change several objects. Until the watch has applied all of them,
// verifications that demand the revision must not trust the caches.
func TestConsistencyTokenWaitsForTheWholeTransaction(t *testing.T) {
	prefix := newPrefix("wholetxn")
	raw := openStore(t, embeddedEndpoints(t), prefix)
	st := &pausingWatch{Store: raw, delivered: make(chan authz.Change, 1)}
	svc := startService(t, st, testConfig())
	for _, g := range [][2]string{{"agents/w", "roles/a"}, {"agents/w", "roles/b"}, {"roles/a", "x#read"}, {"roles/b", "y#read"}} {
		if _, err := svc.AddPermission(bg, g[0], g[1]); err != nil {
			t.Fatal(err)
		}
	}
	tok, _, rev, err := svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/w", Scopes: []string{"*#admin"}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the watch applied the setup", func() bool { return svc.WatchStatus().Revision >= rev })
	warm(t, svc, tok, "y/z#read")
	// An operator takes both roles' grants away in one transaction.
	st.armed.Store(true)
	resp, err := raw.EtcdClient().Txn(bg).Then(
		clientv3.OpDelete(prefix+"grants/roles/a|x#read"), clientv3.OpDelete(prefix+"holders/x#read|roles/a"),
		clientv3.OpDelete(prefix+"grants/roles/b|y#read"), clientv3.OpDelete(prefix+"holders/y#read|roles/b"),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-st.delivered:
		if c.Key != "roles/a" {
			t.Fatalf("first change of the transaction: %+v", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not deliver the transaction")
	}
	_, err = svc.VerifyAccess(bg, tok, "y/z#read", authz.VerifyOptions{AtLeastRevision: resp.Header.Revision})
	if !errors.Is(err, authz.ErrPermissionDenied) {
		t.Fatalf("verify at least as fresh as the revoking transaction: %v", err)
	}
}

package etcdstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/store/etcdstore"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// fault is how faultKV fails the write transaction it is armed for.
type fault int

const (
	passThrough fault = iota
	// applyThenFail applies the transaction, then loses etcd's answer: the
	// caller sees a deadline.
	applyThenFail
	// applyThenCancel applies the transaction, then cancels the caller's
	// context (faultKV.cancel) and reports that: the caller gave up just
	// as etcd committed.
	applyThenCancel
	// failUnsent fails the transaction without sending it, with the error
	// etcd gives for a proposal that timed out in raft.
	failUnsent
	// holdThenFail fails the transaction without sending it and keeps it:
	// sendLate sends it afterwards, as a proposal still in flight would
	// arrive after the caller was answered.
	holdThenFail
	// failAll fails every transaction, the re-read's too: etcd is out of
	// reach. It stays armed until disarmed.
	failAll
)

// faultKV is a client's KV that passes everything through to etcd except
// the write transactions it was armed for. It wraps the client's KV, below
// the Store's key prefix, so it sees exactly what is sent.
type faultKV struct {
	clientv3.KV
	mu     sync.Mutex
	mode   fault
	cancel context.CancelFunc // for applyThenCancel
	held   []*faultTxn
}

func (f *faultKV) arm(mode fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode = mode
}

// take returns the fault for a transaction and disarms a one-shot fault.
func (f *faultKV) take(writes bool) fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mode == failAll {
		return failAll
	}
	if !writes {
		return passThrough
	}
	m := f.mode
	f.mode = passThrough
	return m
}

// sendLate sends the held transaction, as it would arrive after the
// caller's error.
func (f *faultKV) sendLate(ctx context.Context, t *testing.T) *clientv3.TxnResponse {
	t.Helper()
	f.mu.Lock()
	held := f.held
	f.held = nil
	f.mu.Unlock()
	if len(held) != 1 {
		t.Fatalf("%d transactions held, want 1", len(held))
	}
	resp, err := held[0].send(ctx)
	if err != nil {
		t.Fatalf("late transaction: %v", err)
	}
	return resp
}

func (f *faultKV) Txn(ctx context.Context) clientv3.Txn { return &faultTxn{kv: f, ctx: ctx} }

type faultTxn struct {
	kv        *faultKV
	ctx       context.Context
	cmps      []clientv3.Cmp
	then, els []clientv3.Op
}

func (t *faultTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, cs...)
	return t
}

func (t *faultTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	return t
}

func (t *faultTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.els = append(t.els, ops...)
	return t
}

func (t *faultTxn) send(ctx context.Context) (*clientv3.TxnResponse, error) {
	return t.kv.KV.Txn(ctx).If(t.cmps...).Then(t.then...).Else(t.els...).Commit()
}

func (t *faultTxn) Commit() (*clientv3.TxnResponse, error) {
	switch t.kv.take(writes(t.then) || writes(t.els)) {
	case applyThenFail:
		if _, err := t.send(t.ctx); err != nil {
			return nil, err
		}
		return nil, context.DeadlineExceeded
	case applyThenCancel:
		if _, err := t.send(t.ctx); err != nil {
			return nil, err
		}
		t.kv.cancel()
		return nil, t.ctx.Err()
	case failUnsent:
		return nil, rpctypes.ErrTimeout
	case holdThenFail:
		t.kv.mu.Lock()
		t.kv.held = append(t.kv.held, t)
		t.kv.mu.Unlock()
		return nil, rpctypes.ErrTimeoutDueToLeaderFail
	case failAll:
		return nil, rpctypes.ErrNoLeader
	}
	return t.send(t.ctx)
}

func writes(ops []clientv3.Op) bool {
	for _, op := range ops {
		if op.IsPut() || op.IsDelete() || op.IsTxn() {
			return true
		}
	}
	return false
}

// newFaultStore opens a Store on a fresh prefix whose client's KV is a
// faultKV.
func newFaultStore(t *testing.T, endpoints []string) (*etcdstore.Store, *faultKV) {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f := &faultKV{KV: c.KV}
	c.KV = f
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	s, err := etcdstore.Open(t.Context(), etcdstore.Config{
		Client: c, Prefix: "/fence-" + hex.EncodeToString(b) + "/",
		RequestTimeout: 10 * time.Second, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, f
}

// modRevision returns the ModRevision of key (relative to the Store's
// prefix), 0 when it is absent.
func modRevision(t *testing.T, s *etcdstore.Store, key string) int64 {
	t.Helper()
	resp, err := s.EtcdClient().Get(t.Context(), s.Prefix()+key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}

// fencedWrites are writes of each shape commitWrite handles: writing in
// then (the marker guard joins the compares), writing in else (the
// transaction is nested under the guard), and writing keys on a lease of
// their own.
var fencedWrites = []struct {
	name  string
	write func(context.Context, *etcdstore.Store) (authz.Revision, error)
	key   string // a key the write puts
}{
	{"CreateUser writes in then", func(ctx context.Context, s *etcdstore.Store) (authz.Revision, error) {
		return s.CreateUser(ctx, authz.UserRecord{ID: "u", Username: "U"}, []string{"roles/r"})
	}, "users/u"},
	{"AddGrant writes in else", func(ctx context.Context, s *etcdstore.Store) (authz.Revision, error) {
		return s.AddGrant(ctx, "projects/p", "projects/p#read")
	}, "grants/projects/p|projects/p#read"},
	{"CreateToken writes on its own lease", func(ctx context.Context, s *etcdstore.Store) (authz.Revision, error) {
		exp := time.Now().Add(time.Hour)
		return s.CreateToken(ctx, authz.TokenRecord{ID: "t", Digest: "d", Subject: "users/u", ExpiresAt: &exp})
	}, "tokens/d"},
}

// TestAmbiguousWriteAppliedIsSuccess: a write that etcd applied but whose
// answer was lost (a deadline, or the caller giving up just then) is
// reported as the success it is, with the revision it committed at.
func TestAmbiguousWriteAppliedIsSuccess(t *testing.T) {
	endpoints := etcdtest.SharedEmbedded(t)
	for _, mode := range []struct {
		name  string
		fault fault
	}{{"answer lost", applyThenFail}, {"caller gave up", applyThenCancel}} {
		for _, w := range fencedWrites {
			t.Run(mode.name+"/"+w.name, func(t *testing.T) {
				s, f := newFaultStore(t, endpoints)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				f.cancel = cancel
				f.arm(mode.fault)
				rev, err := w.write(ctx, s)
				if err != nil {
					t.Fatalf("write applied by etcd reported as failed: %v", err)
				}
				if got := modRevision(t, s, w.key); got == 0 || got != rev {
					t.Errorf("key %s at revision %d, the write reported %d", w.key, got, rev)
				}
			})
		}
	}
}

// TestAmbiguousWriteNotAppliedIsError: a write that never reached etcd
// fails with ErrUnavailable (not ErrOutcomeUnknown: the re-read settled
// it), writes nothing, and can be retried.
func TestAmbiguousWriteNotAppliedIsError(t *testing.T) {
	endpoints := etcdtest.SharedEmbedded(t)
	for _, w := range fencedWrites {
		t.Run(w.name, func(t *testing.T) {
			s, f := newFaultStore(t, endpoints)
			ctx := t.Context()
			f.arm(failUnsent)
			_, err := w.write(ctx, s)
			if !errors.Is(err, authz.ErrUnavailable) || errors.Is(err, etcdstore.ErrOutcomeUnknown) || !strings.Contains(err.Error(), "not applied") {
				t.Fatalf("write that never reached etcd: %v, want ErrUnavailable saying it was not applied", err)
			}
			if got := modRevision(t, s, w.key); got != 0 {
				t.Fatalf("key %s written at revision %d by a write reported as failed", w.key, got)
			}
			rev, err := w.write(ctx, s)
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			if got := modRevision(t, s, w.key); got != rev {
				t.Errorf("retry: key %s at revision %d, reported %d", w.key, got, rev)
			}
		})
	}
}

// TestAmbiguousWriteArrivingLateNeverApplies: a write reported as not
// applied stays so even when its transaction reaches etcd afterwards (a
// proposal still in flight): the re-read's fence makes it fail.
func TestAmbiguousWriteArrivingLateNeverApplies(t *testing.T) {
	endpoints := etcdtest.SharedEmbedded(t)
	for _, w := range fencedWrites {
		t.Run(w.name, func(t *testing.T) {
			s, f := newFaultStore(t, endpoints)
			ctx := t.Context()
			f.arm(holdThenFail)
			_, err := w.write(ctx, s)
			if !errors.Is(err, authz.ErrUnavailable) || errors.Is(err, etcdstore.ErrOutcomeUnknown) {
				t.Fatalf("write held back: %v, want ErrUnavailable", err)
			}
			before, err := s.CurrentRevision(ctx)
			if err != nil {
				t.Fatal(err)
			}
			resp := f.sendLate(ctx, t)
			if resp.Succeeded {
				t.Errorf("the late transaction's guard held: %+v", resp)
			}
			if got := modRevision(t, s, w.key); got != 0 {
				t.Fatalf("late transaction wrote %s at revision %d after the write was reported as failed", w.key, got)
			}
			if after, err := s.CurrentRevision(ctx); err != nil || after != before {
				t.Errorf("revision %d → %d (%v): the late transaction wrote something", before, after, err)
			}
		})
	}
}

// TestAmbiguousWriteUnsettled: when etcd cannot be reached to re-read, the
// caller hears that the write may or may not have been applied, as a 503
// (ErrUnavailable), within the re-read's bound.
func TestAmbiguousWriteUnsettled(t *testing.T) {
	s, f := newFaultStore(t, etcdtest.SharedEmbedded(t))
	etcdstore.SetFenceTimings(s, 500*time.Millisecond, time.Minute)
	ctx := t.Context()
	// A first write, so the marker lease is granted before etcd "goes".
	if _, err := s.AddGrant(ctx, "projects/q", "projects/q#read"); err != nil {
		t.Fatal(err)
	}
	f.arm(failAll)
	start := time.Now()
	_, err := s.AddGrant(ctx, "projects/p", "projects/p#read")
	took := time.Since(start)
	f.arm(passThrough)
	if !errors.Is(err, etcdstore.ErrOutcomeUnknown) || !errors.Is(err, authz.ErrUnavailable) || !strings.Contains(err.Error(), "may or may not have been applied") {
		t.Fatalf("write with etcd out of reach: %v, want ErrOutcomeUnknown matching ErrUnavailable", err)
	}
	if took > 5*time.Second {
		t.Errorf("the re-read took %v with a 500ms bound", took)
	}

}

// TestTxnMarkersExpire: the markers of write transactions go away with
// their lease, and watchers report neither them nor their expiry.
func TestTxnMarkersExpire(t *testing.T) {
	s := etcdtest.NewStore(t, etcdtest.SharedEmbedded(t))
	etcdstore.SetFenceTimings(s, time.Second, 2*time.Second) // etcd's smallest TTL
	ctx := t.Context()
	changes := watchFromNow(t, s)

	if _, err := s.AddGrant(ctx, "projects/p", "projects/p#read"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateClient(ctx, authz.ClientRecord{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	markers := func() int64 {
		resp, err := s.EtcdClient().Get(ctx, s.Prefix()+"txn/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	if n := markers(); n != 2 {
		t.Fatalf("%d transaction markers after two writes, want 2", n)
	}
	deadline := time.Now().Add(20 * time.Second)
	for markers() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d transaction markers left 20s after writes with a 2s marker lease", markers())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Wait for the watch to pass the markers' deletion, then look at
	// everything it reported.
	gone, err := s.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []authz.Change
	timeout := time.After(10 * time.Second)
	for {
		select {
		case c := <-changes:
			if c.Kind != authz.ChangeProgress {
				got = append(got, c)
				continue
			}
			if c.Revision < gone {
				continue
			}
		case <-timeout:
			t.Fatalf("watch did not reach revision %d; reported %+v", gone, got)
		}
		break
	}
	if len(got) != 2 || got[0].Kind != authz.ChangeGrant || got[1].Kind != authz.ChangeClient {
		t.Errorf("watch reported %+v, want the grant and the client only", got)
	}
	for _, c := range got {
		if c.CommittedAt.IsZero() {
			t.Errorf("change %+v without its commit time", c)
		}
	}
}

// TestMarkerLeaseRevokedByHand: when the markers' lease is gone before
// its time (an operator revoked it, a backup was restored), the next write
// takes a fresh lease instead of failing.
func TestMarkerLeaseRevokedByHand(t *testing.T) {
	s := etcdtest.NewStore(t, etcdtest.SharedEmbedded(t))
	ctx := t.Context()
	if _, err := s.AddGrant(ctx, "projects/p", "projects/p#read"); err != nil {
		t.Fatal(err)
	}
	resp, err := s.EtcdClient().Get(ctx, s.Prefix()+"txn/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("markers after one write: %v, %v; want one, on a lease", resp, err)
	}
	if _, err := s.EtcdClient().Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	rev, err := s.AddGrant(ctx, "projects/q", "projects/q#read")
	if err != nil {
		t.Fatalf("write after the marker lease was revoked: %v", err)
	}
	if got := modRevision(t, s, "grants/projects/q|projects/q#read"); got != rev {
		t.Errorf("grant at revision %d, reported %d", got, rev)
	}
}

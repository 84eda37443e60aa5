package etcdstore

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Observer receives the Store's measurements, for metrics. The Store knows
// nothing of Prometheus; the binary wires an Observer that does. Methods
// must be safe for concurrent use and must not block.
type Observer interface {
	// EtcdRequest is called after every request the Store sends to etcd.
	// op is one of a fixed set of names (the Op* constants), took is how
	// long the request took, err its error (nil on success).
	EtcdRequest(op string, took time.Duration, err error)
}

// The operation names an Observer sees. They are metric label values: a
// fixed, small set.
const (
	OpGet        = "get"         // a single-key read
	OpRange      = "range"       // a prefix or range read
	OpPut        = "put"         // a single put outside a transaction
	OpDelete     = "delete"      // a single delete outside a transaction
	OpTxnRead    = "txn_read"    // a transaction without writes (batched reads)
	OpTxnWrite   = "txn_write"   // a transaction with writes
	OpLeaseGrant = "lease_grant" // granting a lease for expiring keys
	OpWatchOpen  = "watch_open"  // from opening a watch to etcd confirming it
	OpCompact    = "compact"     // a compaction (tests and tools only)
)

// Ops lists every operation name, for observers that pre-create series.
var Ops = []string{OpGet, OpRange, OpPut, OpDelete, OpTxnRead, OpTxnWrite, OpLeaseGrant, OpWatchOpen, OpCompact}

// observe reports one request to the Store's observer, if any.
func (s *Store) observe(op string, start time.Time, err error) {
	if s.obs != nil {
		s.obs.EtcdRequest(op, time.Since(start), err)
	}
}

// observedKV times every request of the KV it wraps. It sits outside the
// namespace wrapper, so it sees the Store's own calls one for one.
type observedKV struct {
	clientv3.KV
	s *Store
}

func (kv observedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	op := OpGet
	if len(clientv3.OpGet(key, opts...).RangeBytes()) > 0 {
		op = OpRange
	}
	start := time.Now()
	resp, err := kv.KV.Get(ctx, key, opts...)
	kv.s.observe(op, start, err)
	return resp, err
}

func (kv observedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	start := time.Now()
	resp, err := kv.KV.Put(ctx, key, val, opts...)
	kv.s.observe(OpPut, start, err)
	return resp, err
}

func (kv observedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	start := time.Now()
	resp, err := kv.KV.Delete(ctx, key, opts...)
	kv.s.observe(OpDelete, start, err)
	return resp, err
}

func (kv observedKV) Txn(ctx context.Context) clientv3.Txn {
	return &observedTxn{Txn: kv.KV.Txn(ctx), s: kv.s}
}

// observedTxn times Commit and names it by whether it writes.
type observedTxn struct {
	clientv3.Txn
	s      *Store
	writes bool
}

func (t *observedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *observedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.writes = t.writes || hasWrites(ops)
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *observedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.writes = t.writes || hasWrites(ops)
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *observedTxn) Commit() (*clientv3.TxnResponse, error) {
	op := OpTxnRead
	if t.writes {
		op = OpTxnWrite
	}
	start := time.Now()
	resp, err := t.Txn.Commit()
	t.s.observe(op, start, err)
	return resp, err
}

func hasWrites(ops []clientv3.Op) bool {
	for _, op := range ops {
		if op.IsPut() || op.IsDelete() || op.IsTxn() {
			return true
		}
	}
	return false
}

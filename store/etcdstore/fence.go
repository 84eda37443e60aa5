package etcdstore

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"

	"github.com/portcullis/portcullis/authz"
)

// ErrOutcomeUnknown is returned by a write whose transaction failed in a
// way that leaves open whether etcd applied it (a timeout, a lost
// connection, the caller giving up) and that could not be settled by
// re-reading either, because etcd stayed out of reach. The write may or
// may not have been applied. It matches authz.ErrUnavailable too, so it is
// answered like every other store outage (503).
var ErrOutcomeUnknown = fmt.Errorf("%w: %w", authz.ErrUnavailable, authz.ErrOutcomeUnknown)

// Defaults of the write fence (see commitWrite).
const (
	// defaultMarkerTTL is the lifetime of the lease the transaction markers
	// are put on. A lease is reused while at least half of it is left, so
	// a marker lives between 2.5 and 5 minutes: far longer than any
	// re-read (RequestTimeout plus fenceTimeout, seconds), and short enough
	// that one lease never holds more than a few minutes of writes.
	defaultMarkerTTL = 5 * time.Minute
	// fenceBackoffMax caps the pause between two re-read attempts.
	fenceBackoffMax = time.Second
)

// The values of txn/<id> markers. A committed write's marker carries its
// commit time (what watchers measure propagation from) and which branch
// of the transaction wrote it; a fence's carries only when it was put.
// The two never decode into each other, so a re-read always tells them
// apart.
type markerValue struct {
	At       time.Time `json:"at,omitzero"`
	Branch   string    `json:"branch,omitempty"` // branchThen or branchElse
	FencedAt time.Time `json:"fenced_at,omitzero"`
}

const (
	branchThen = "then"
	branchElse = "else"
)

// markerLeases hands out the lease that transaction markers are put on:
// one lease for many writes, so that a write costs no extra request, and
// a fresh one once the current has less than half its life left.
type markerLeases struct {
	ttl time.Duration
	// sem is a lock that a caller can stop waiting for when its context
	// ends: granting may take as long as etcd is slow.
	sem     chan struct{}
	mu      sync.Mutex // guards id and expires (read without sem)
	id      clientv3.LeaseID
	expires time.Time // by the local clock, from before the grant was sent
}

func newMarkerLeases(ttl time.Duration) *markerLeases {
	return &markerLeases{ttl: ttl, sem: make(chan struct{}, 1)}
}

// current returns the lease if it has at least half its TTL left.
func (m *markerLeases) current() (clientv3.LeaseID, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.id == clientv3.NoLease || time.Until(m.expires) < m.ttl/2 {
		return clientv3.NoLease, false
	}
	return m.id, true
}

// markerLease returns the lease for the marker of a write about to be sent.
func (s *Store) markerLease(ctx context.Context, op string) (clientv3.LeaseID, error) {
	m := s.markers
	if id, ok := m.current(); ok {
		return id, nil
	}
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return clientv3.NoLease, s.fail(ctx, op+": marker lease", ctx.Err())
	}
	defer func() { <-m.sem }()
	if id, ok := m.current(); ok { // granted while we waited
		return id, nil
	}
	start := time.Now()
	resp, err := s.lease.Grant(ctx, int64(m.ttl.Seconds()))
	s.observe(OpLeaseGrant, start, err)
	if err != nil {
		return clientv3.NoLease, s.fail(ctx, op+": grant marker lease", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// etcd may raise a TTL below its minimum; never lower it.
	m.id, m.expires = resp.ID, start.Add(time.Duration(resp.TTL)*time.Second)
	return m.id, nil
}

// forget drops id as the current lease, after etcd reported it unknown
// (revoked by hand, or a restored backup).
func (m *markerLeases) forget(id clientv3.LeaseID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.id == id {
		m.id = clientv3.NoLease
	}
}

// newMarkerKey returns the key of a fresh transaction marker: 128 random
// bits, so that no two transactions ever share one.
func newMarkerKey() string {
	var b [16]byte
	_, _ = crand.Read(b[:]) // never fails
	return markerKey(hex.EncodeToString(b[:]))
}

// commitWrite sends a transaction that writes in then, els or both, such
// that a failure which leaves its outcome open can be settled afterwards.
//
// Every such transaction carries a marker key of its own, txn/<random id>,
// which the branch that writes puts (with the commit time: the watchers'
// commit stamp), guarded by the marker being absent. Only a fence (see
// settle) ever creates that key otherwise, and a fence creates it only
// once the transaction's first send has failed. So:
//
//   - sent normally, the guard always holds and the caller's compares alone
//     decide the branch, exactly as without a marker;
//   - arriving late, after a fence, the guard fails and neither branch may
//     write.
//
// How the guard is placed keeps the second promise without breaking the
// first. When only then writes, absent(marker) joins the caller's
// compares: if it fails, els runs, and els only reads (its response goes
// to nobody: the caller was answered when the send failed). When els
// writes (AddGrant writes when its compares fail), adding the guard to the
// compares would send a fenced transaction into its writing els; instead
// the caller's transaction is nested inside an outer one,
// If(absent(marker)).Then(OpTxn(cmps, then, els)), whose else branch is
// empty.
func (s *Store) commitWrite(ctx context.Context, op string, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	for attempt := 1; ; attempt++ {
		lease, err := s.markerLease(ctx, op)
		if err != nil {
			return nil, err
		}
		resp, err := s.commitMarked(ctx, op, lease, cmps, then, els)
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return resp, err
		}
		if attempt > 1 {
			// Not ours, then: a lease of the caller's (a token's) is gone.
			return nil, s.fail(ctx, op, err)
		}
		// Perhaps our cached lease is gone although its time is not up
		// (revoked by hand, a restored backup): take a fresh one and send
		// again. Nothing was applied: etcd checks leases before it writes.
		s.markers.forget(lease)
	}
}

// commitMarked is one send of commitWrite with the given marker lease.
// Its errors are those of fail and settle, except that it returns
// rpctypes.ErrLeaseNotFound unwrapped as commitWrite's cue to retry.
func (s *Store) commitMarked(ctx context.Context, op string, lease clientv3.LeaseID, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	marker := newMarkerKey()
	at := time.Now().UTC() // taken as the transaction is sent: what watchers measure from includes the commit
	put := func(branch string) clientv3.Op {
		return clientv3.OpPut(marker, encode(markerValue{At: at, Branch: branch}), clientv3.WithLease(lease))
	}
	nested := hasWrites(els)
	if hasWrites(then) {
		then = append(then[:len(then):len(then)], put(branchThen))
	}
	if nested {
		els = append(els[:len(els):len(els)], put(branchElse))
	} else {
		cmps = append(cmps[:len(cmps):len(cmps)], absent(marker))
	}
	// Nested, etcd counts the outer level's one compare and one operation
	// against --max-txn-ops too, leaving the inner transaction one less.
	extra := 0
	if nested {
		extra = 1
	}
	if err := s.checkOps(op, len(cmps)+extra, len(then)+extra, len(els)+extra); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		// Not sent at all: nothing to settle.
		return nil, s.fail(ctx, op, ctx.Err())
	}

	var resp *clientv3.TxnResponse
	var err error
	if nested {
		var outer *clientv3.TxnResponse
		outer, err = s.kv.Txn(ctx).If(absent(marker)).Then(clientv3.OpTxn(cmps, then, els)).Commit()
		if err == nil {
			if !outer.Succeeded || len(outer.Responses) != 1 || outer.Responses[0].GetResponseTxn() == nil {
				// Only a fence creates the marker, and none ran.
				return nil, fmt.Errorf("%s: transaction marker %q exists before its transaction was sent", op, marker)
			}
			inner := outer.Responses[0].GetResponseTxn()
			resp = &clientv3.TxnResponse{Header: outer.Header, Succeeded: inner.Succeeded, Responses: inner.Responses}
		}
	} else {
		resp, err = s.kv.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
	}
	switch {
	case err == nil:
		return resp, nil
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return nil, err
	case !ambiguous(err):
		return nil, s.fail(ctx, op, err)
	}
	return s.settle(ctx, op, marker, lease, s.fail(ctx, op, err))
}

// settle finds out whether a transaction whose send failed ambiguously was
// applied, and makes sure that if it was not, it never will be: it puts
// the transaction's marker itself, if absent, which fails the
// transaction's guard should it still arrive (a proposal in flight in
// raft, a request stuck in a connection). The fence goes on the
// transaction's own lease, so the fence lives exactly as long as the
// transaction could still be applied: after the lease ends, etcd refuses
// the transaction's marker put, and with it the whole transaction.
//
// The outcomes:
//   - the marker was there, put by the transaction: it was applied; the
//     caller gets a response with the revision it committed at and which
//     branch ran (Succeeded). Responses is nil: it only ever carries reads,
//     and a branch that writes has none that callers look at;
//   - the fence put the marker (now or in an earlier attempt whose answer
//     was lost): the write was not applied and never will be; the caller
//     gets sendErr, and may retry;
//   - etcd could not be asked within fenceTimeout (or the lease ended
//     first): ErrOutcomeUnknown.
//
// It runs on a context detached from the caller's, whose cancellation is
// often what made the outcome unknown in the first place.
func (s *Store) settle(ctx context.Context, op, marker string, lease clientv3.LeaseID, sendErr error) (*clientv3.TxnResponse, error) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.fenceTimeout)
	defer cancel()
	fenced := encode(markerValue{FencedAt: time.Now().UTC()})
	wait := 50 * time.Millisecond
	var last error
	for {
		actx, acancel := context.WithTimeout(fctx, s.requestTimeout)
		resp, err := s.kv.Txn(actx).
			If(absent(marker)).
			Then(clientv3.OpPut(marker, fenced, clientv3.WithLease(lease))).
			Else(clientv3.OpGet(marker)).
			Commit()
		acancel()
		if err == nil {
			return s.settled(op, marker, resp, sendErr)
		}
		last = err
		if !unavailable(err) || s.client.Ctx().Err() != nil {
			// A refusal that retrying will not change (the lease ended:
			// the transaction can no longer apply, but if it did, its
			// marker is gone with the lease), or the Store was closed.
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-fctx.Done():
		}
		t.Stop()
		if fctx.Err() != nil {
			break
		}
		wait = min(2*wait, fenceBackoffMax)
	}
	return nil, fmt.Errorf("%w: %w; re-reading it failed too: %v", ErrOutcomeUnknown, sendErr, last)
}

// settled reads a fence's answer; see settle.
func (s *Store) settled(op, marker string, resp *clientv3.TxnResponse, sendErr error) (*clientv3.TxnResponse, error) {
	if resp.Succeeded {
		return nil, fmt.Errorf("%w (it was not applied)", sendErr)
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		// Impossible: the compare and the read see one revision.
		return nil, fmt.Errorf("%w: %w; the re-read found no marker", ErrOutcomeUnknown, sendErr)
	}
	var v markerValue
	if err := decode(kvs[0].Value, &v, marker); err != nil {
		return nil, fmt.Errorf("%w: %w; the re-read found: %w", ErrOutcomeUnknown, sendErr, err)
	}
	switch {
	case !v.FencedAt.IsZero():
		// An earlier attempt of this fence was applied but its answer lost.
		return nil, fmt.Errorf("%w (it was not applied)", sendErr)
	case !v.At.IsZero():
		header := *resp.Header
		header.Revision = kvs[0].ModRevision // the write's own revision
		return &clientv3.TxnResponse{Header: &header, Succeeded: v.Branch == branchThen}, nil
	}
	return nil, fmt.Errorf("%w: %w; the re-read found marker %q with neither a commit nor a fence time", ErrOutcomeUnknown, sendErr, marker)
}

// ambiguous reports whether a transaction that failed with err may have
// been applied anyway, or may still be: its request may have reached etcd
// and only the answer was lost or late. Clean refusals (too many
// operations, permission denied, a bad lease, no endpoint to send to)
// were never applied.
func ambiguous(err error) bool {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return true
	case errors.Is(err, clientv3.ErrNoAvailableEndpoints):
		return false
	}
	code, ok := grpcCode(err)
	if !ok {
		return false
	}
	switch code {
	case codes.Unavailable, // leader changed, connection lost, request timed out in raft
		codes.DeadlineExceeded,
		codes.Canceled,
		codes.Unknown: // an error gRPC could not classify, e.g. a broken stream
		return true
	}
	return false
}

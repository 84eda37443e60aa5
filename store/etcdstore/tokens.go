package etcdstore

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
)

// maxAttempts bounds the read-compare-write loops that retry after losing a
// race. Losing 16 times in a row means heavy contention on one object;
// failing with ErrConflict then is better than spinning.
const maxAttempts = 16

// backoff sleeps a little before attempt n (n >= 2) so that writers that
// collided do not collide again in lock step.
func backoff(ctx context.Context, attempt int) error {
	if attempt < 2 {
		return nil
	}
	d := time.Duration(rand.Int64N(int64(time.Millisecond) * int64(min(attempt, 10))))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// tokenGrace keeps a token's keys a second past its expiry, so that a
// verification racing with the expiry sees an expired token (and says so)
// rather than an unknown one.
const tokenGrace = time.Second

// grantLease returns a lease that ends at until (at least one second from
// now, etcd's smallest TTL). etcd may round the TTL up to its minimum and
// expires leases on a timer, so a key can outlive until by a second or two:
// readers that care compare the stored expiry themselves.
func (s *Store) grantLease(ctx context.Context, op string, until time.Time) (clientv3.LeaseID, error) {
	ttl := int64(math.Ceil(time.Until(until).Seconds()))
	if ttl < 1 {
		ttl = 1
	}
	start := time.Now()
	resp, err := s.lease.Grant(ctx, ttl)
	s.observe(OpLeaseGrant, start, err)
	if err != nil {
		return 0, s.fail(ctx, op+": grant lease", err)
	}
	return resp.ID, nil
}

// dropLease revokes a lease that ended up with no keys because the write it
// was for failed. Best effort: an orphaned lease expires by itself.
func (s *Store) dropLease(ctx context.Context, id clientv3.LeaseID) {
	if id != clientv3.NoLease {
		_, _ = s.lease.Revoke(ctx, id)
	}
}

// tokenLease returns the lease for the keys of t: none without ExpiresAt.
func (s *Store) tokenLease(ctx context.Context, op string, t authz.TokenRecord) (clientv3.LeaseID, error) {
	if t.ExpiresAt == nil {
		return clientv3.NoLease, nil
	}
	return s.grantLease(ctx, op, t.ExpiresAt.Add(tokenGrace))
}

// tokenPuts returns the puts that store t with its id and subject indexes.
func tokenPuts(t authz.TokenRecord, lease clientv3.LeaseID) []clientv3.Op {
	idx := encode(digestValue{Digest: t.Digest})
	return []clientv3.Op{
		clientv3.OpPut(tokenKey(t.Digest), encode(t), clientv3.WithLease(lease)),
		clientv3.OpPut(tokenIDKey(t.ID), idx, clientv3.WithLease(lease)),
		clientv3.OpPut(subjectTokenKey(t.Subject, t.ID), idx, clientv3.WithLease(lease)),
	}
}

// tokenDeletes returns the deletes of t and its indexes.
func tokenDeletes(t authz.TokenRecord) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpDelete(tokenKey(t.Digest))}
	if t.ID != "" {
		ops = append(ops, clientv3.OpDelete(tokenIDKey(t.ID)))
		if t.Subject != "" {
			ops = append(ops, clientv3.OpDelete(subjectTokenKey(t.Subject, t.ID)))
		}
	}
	return ops
}

// CreateToken implements authz.Store. With ExpiresAt, every key written
// (including the family's) is on one lease ending shortly after it.
func (s *Store) CreateToken(ctx context.Context, t authz.TokenRecord) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	lease, err := s.tokenLease(ctx, "create token", t)
	if err != nil {
		return 0, err
	}
	ops := tokenPuts(t, lease)
	if t.Family != "" {
		ops = append(ops, clientv3.OpPut(familyKey(t.Family), encode(familyValue{Subject: t.Subject}), clientv3.WithLease(lease)))
	}
	resp, err := s.commit(ctx, "create token",
		[]clientv3.Cmp{absent(tokenKey(t.Digest)), absent(tokenIDKey(t.ID))}, ops, nil)
	if err != nil {
		s.dropLease(ctx, lease)
		return 0, err
	}
	if !resp.Succeeded {
		s.dropLease(ctx, lease)
		return 0, fmt.Errorf("create token %q: %w", t.ID, authz.ErrConflict)
	}
	return resp.Header.Revision, nil
}

// Token implements authz.Store. It returns the token even when it has
// expired but etcd has not removed it yet: authz checks ExpiresAt.
func (s *Store) Token(ctx context.Context, digest string) (authz.TokenRecord, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	t, _, err := s.token(ctx, digest)
	return t, err
}

// token reads a token and its ModRevision.
func (s *Store) token(ctx context.Context, digest string) (authz.TokenRecord, int64, error) {
	resp, err := s.kv.Get(ctx, tokenKey(digest))
	if err != nil {
		return authz.TokenRecord{}, 0, s.fail(ctx, "read token", err)
	}
	if len(resp.Kvs) == 0 {
		return authz.TokenRecord{}, 0, fmt.Errorf("token: %w", authz.ErrNotFound)
	}
	var t authz.TokenRecord
	if err := decode(resp.Kvs[0].Value, &t, tokenKey(digest)); err != nil {
		return authz.TokenRecord{}, 0, err
	}
	return t, resp.Kvs[0].ModRevision, nil
}

// TokenByID implements authz.Store.
func (s *Store) TokenByID(ctx context.Context, id string) (authz.TokenRecord, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, tokenIDKey(id))
	if err != nil {
		return authz.TokenRecord{}, s.fail(ctx, "read token id", err)
	}
	if len(resp.Kvs) == 0 {
		return authz.TokenRecord{}, fmt.Errorf("token id %q: %w", id, authz.ErrNotFound)
	}
	var idx digestValue
	if err := decode(resp.Kvs[0].Value, &idx, tokenIDKey(id)); err != nil {
		return authz.TokenRecord{}, err
	}
	t, _, err := s.token(ctx, idx.Digest)
	if err != nil {
		return authz.TokenRecord{}, fmt.Errorf("token id %q: %w", id, err)
	}
	if t.ID != id {
		// A stale index entry left by a hand edit; the token is not this one.
		return authz.TokenRecord{}, fmt.Errorf("token id %q: %w", id, authz.ErrNotFound)
	}
	return t, nil
}

// subjectToken is one entry of a subject's token index.
type subjectToken struct {
	id, digest string
}

// subjectTokensOp returns the range op over subject's token index.
func subjectTokensOp(subject string) clientv3.Op {
	return clientv3.OpGet(subjectTokensOf(subject), clientv3.WithPrefix())
}

// parseSubjectTokens decodes the entries of a range over subject's index.
func parseSubjectTokens(subject string, kvs []*mvccpb.KeyValue) ([]subjectToken, error) {
	pfx := subjectTokensOf(subject)
	out := make([]subjectToken, 0, len(kvs))
	for _, kv := range kvs {
		var idx digestValue
		if err := decode(kv.Value, &idx, string(kv.Key)); err != nil {
			return nil, err
		}
		id, _ := strings.CutPrefix(string(kv.Key), pfx)
		out = append(out, subjectToken{id: id, digest: idx.Digest})
	}
	return out, nil
}

// tokenRecords reads the records of the indexed tokens. Entries whose token
// is gone (a stale index, or expiry between the two reads) are skipped.
func (s *Store) tokenRecords(ctx context.Context, op string, idx []subjectToken) ([]authz.TokenRecord, error) {
	keys := make([]string, len(idx))
	for i, e := range idx {
		keys[i] = tokenKey(e.digest)
	}
	vals, err := s.getEach(ctx, op, dedupe(keys))
	if err != nil {
		return nil, err
	}
	out := make([]authz.TokenRecord, 0, len(idx))
	for _, e := range idx {
		v, ok := vals[tokenKey(e.digest)]
		if !ok {
			continue
		}
		var t authz.TokenRecord
		if err := decode(v, &t, tokenKey(e.digest)); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// Tokens implements authz.Store.
func (s *Store) Tokens(ctx context.Context, subject string) ([]authz.TokenRecord, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, subjectTokensOf(subject), clientv3.WithPrefix())
	if err != nil {
		return nil, s.fail(ctx, "list tokens", err)
	}
	idx, err := parseSubjectTokens(subject, resp.Kvs)
	if err != nil {
		return nil, err
	}
	ts, err := s.tokenRecords(ctx, "list tokens", idx)
	if err != nil {
		return nil, err
	}
	// Keep only tokens that really are this subject's.
	out := ts[:0]
	for _, t := range ts {
		if t.Subject == subject {
			out = append(out, t)
		}
	}
	return out, nil
}

// DeleteTokens implements authz.Store. It deletes the index keys named by
// both the records given and the records stored, so a caller holding an
// incomplete or stale record still removes every key.
func (s *Store) DeleteTokens(ctx context.Context, tokens []authz.TokenRecord) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	idx := make([]subjectToken, len(tokens))
	for i, t := range tokens {
		idx[i] = subjectToken{id: t.ID, digest: t.Digest}
	}
	stored, err := s.tokenRecords(ctx, "delete tokens", idx)
	if err != nil {
		return 0, err
	}
	ops := deleteOps(append(append([]authz.TokenRecord(nil), tokens...), stored...))
	resp, err := s.commit(ctx, "delete tokens", nil, ops, nil)
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// deleteOps returns the deletes of every token and its indexes, each key
// once: etcd rejects a transaction that names a key twice.
func deleteOps(tokens []authz.TokenRecord) []clientv3.Op {
	seen := map[string]bool{}
	var ops []clientv3.Op
	for _, t := range tokens {
		for _, op := range tokenDeletes(t) {
			if k := string(op.KeyBytes()); !seen[k] {
				seen[k] = true
				ops = append(ops, op)
			}
		}
	}
	return ops
}

// RotateToken implements authz.Store. The write compares old's
// ModRevision as read (so of concurrent rotations only the first commits),
// that old was not used, that next does not exist, and that the family is
// the one read (so a racing RevokeFamily wins). A lost race re-reads, which
// then reports ErrConflict (used, family revoked) or ErrNotFound (deleted).
func (s *Store) RotateToken(ctx context.Context, old, next authz.TokenRecord) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	if next.Digest == old.Digest || next.ID == old.ID {
		return 0, fmt.Errorf("rotate token: next token reuses the old one's digest or id: %w", authz.ErrConflict)
	}
	lease := clientv3.NoLease
	defer func() { s.dropLease(ctx, lease) }() // set to NoLease once the lease holds keys
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if err := backoff(ctx, attempt); err != nil {
			return 0, s.fail(ctx, "rotate token", err)
		}
		resp, err := s.commit(ctx, "rotate token", nil, []clientv3.Op{clientv3.OpGet(tokenKey(old.Digest))}, nil)
		if err != nil {
			return 0, err
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			if attempt > 1 {
				// It existed when we first read it: a racing RevokeFamily or
				// DeleteTokens won, which the contract calls a conflict.
				return 0, fmt.Errorf("rotate token: deleted by a concurrent change: %w", authz.ErrConflict)
			}
			return 0, fmt.Errorf("rotate token: %w", authz.ErrNotFound)
		}
		var cur authz.TokenRecord
		if err := decode(kvs[0].Value, &cur, tokenKey(old.Digest)); err != nil {
			return 0, err
		}
		if cur.Used {
			return 0, fmt.Errorf("rotate token: already used: %w", authz.ErrConflict)
		}
		if next.Family == "" {
			next.Family = cur.Family
		}
		if next.Family != cur.Family {
			return 0, fmt.Errorf("rotate token: next token is in family %q, old one in %q: %w", next.Family, cur.Family, authz.ErrInvalid)
		}

		cmps := []clientv3.Cmp{
			unchanged(tokenKey(old.Digest), kvs[0].ModRevision),
			absent(tokenKey(next.Digest)),
			absent(tokenIDKey(next.ID)),
		}
		if cur.Family != "" {
			cmps = append(cmps, exists(familyKey(cur.Family)))
		}
		if lease == clientv3.NoLease {
			if lease, err = s.tokenLease(ctx, "rotate token", next); err != nil {
				return 0, err
			}
		}
		used := cur
		used.Used = true
		// The old token keeps its own lease: it must stay until it expires,
		// so that a replay of it is detected.
		ops := append([]clientv3.Op{clientv3.OpPut(tokenKey(old.Digest), encode(used), clientv3.WithIgnoreLease())},
			tokenPuts(next, lease)...)
		if next.Family != "" {
			// Moving the family onto the newest token's lease keeps it alive
			// as long as any token of the family can still be rotated.
			ops = append(ops, clientv3.OpPut(familyKey(next.Family), encode(familyValue{Subject: next.Subject}), clientv3.WithLease(lease)))
		}
		// On failure, read what decides the error in the same round trip.
		els := []clientv3.Op{
			clientv3.OpGet(tokenKey(next.Digest), clientv3.WithCountOnly()),
			clientv3.OpGet(tokenIDKey(next.ID), clientv3.WithCountOnly()),
		}
		if cur.Family != "" {
			els = append(els, clientv3.OpGet(familyKey(cur.Family), clientv3.WithCountOnly()))
		}
		resp, err = s.commit(ctx, "rotate token", cmps, ops, els)
		if err != nil {
			return 0, err
		}
		if resp.Succeeded {
			lease = clientv3.NoLease
			return resp.Header.Revision, nil
		}
		if resp.Responses[0].GetResponseRange().Count > 0 || resp.Responses[1].GetResponseRange().Count > 0 {
			return 0, fmt.Errorf("rotate token: next token exists: %w", authz.ErrConflict)
		}
		if cur.Family != "" && resp.Responses[2].GetResponseRange().Count == 0 {
			return 0, fmt.Errorf("rotate token: family %q revoked: %w", cur.Family, authz.ErrConflict)
		}
		// old changed since we read it: re-read to learn whether a
		// concurrent rotation used it (ErrConflict) or it was deleted.
	}
	return 0, fmt.Errorf("rotate token: gave up after %d lost races: %w", maxAttempts, authz.ErrConflict)
}

// RevokeFamily implements authz.Store. The family key is rewritten by
// every rotation, so comparing its ModRevision (and that the subject's
// token index gained no entry) guarantees no token of the family escapes.
func (s *Store) RevokeFamily(ctx context.Context, subject, family string) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if err := backoff(ctx, attempt); err != nil {
			return 0, s.fail(ctx, "revoke family", err)
		}
		resp, err := s.commit(ctx, "revoke family", nil, []clientv3.Op{
			subjectTokensOp(subject),
			clientv3.OpGet(familyKey(family)),
		}, nil)
		if err != nil {
			return 0, err
		}
		rev := resp.Header.Revision
		idx, err := parseSubjectTokens(subject, resp.Responses[0].GetResponseRange().Kvs)
		if err != nil {
			return 0, err
		}
		var famRev int64
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			famRev = kvs[0].ModRevision
		}
		ts, err := s.tokenRecords(ctx, "revoke family", idx)
		if err != nil {
			return 0, err
		}
		var doomed []authz.TokenRecord
		for _, t := range ts {
			if t.Family == family && t.Subject == subject {
				doomed = append(doomed, t)
			}
		}
		ops := append(deleteOps(doomed), clientv3.OpDelete(familyKey(family)))
		txn, err := s.commit(ctx, "revoke family",
			[]clientv3.Cmp{unchanged(familyKey(family), famRev), noneNewer(subjectTokensOf(subject), rev)},
			ops, nil)
		if err != nil {
			return 0, err
		}
		if txn.Succeeded {
			return txn.Header.Revision, nil
		}
	}
	return 0, fmt.Errorf("revoke family: gave up after %d lost races: %w", maxAttempts, authz.ErrConflict)
}

// RevokeSession implements authz.Store. The key is on a lease ending at
// expires, so the revocation list never outgrows the live sessions.
func (s *Store) RevokeSession(ctx context.Context, jti string, expires time.Time) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	lease, err := s.grantLease(ctx, "revoke session", expires)
	if err != nil {
		return 0, err
	}
	// A transaction rather than a put, for the commit stamp and the fence.
	resp, err := s.commit(ctx, "revoke session", nil, []clientv3.Op{clientv3.OpPut(sessionKey(jti), encode(sessionValue{ExpiresAt: expires.UTC()}), clientv3.WithLease(lease))}, nil)
	if err != nil {
		s.dropLease(ctx, lease)
		return 0, err
	}
	return resp.Header.Revision, nil
}

// SessionRevoked implements authz.Store.
func (s *Store) SessionRevoked(ctx context.Context, jti string) (bool, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, sessionKey(jti), clientv3.WithCountOnly())
	if err != nil {
		return false, s.fail(ctx, "read session", err)
	}
	return resp.Count > 0, nil
}

package etcdstore

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
)

// createIfAbsent puts value at key unless the key exists (ErrConflict).
func (s *Store) createIfAbsent(ctx context.Context, op, key, value string) (authz.Revision, error) {
	resp, err := s.commit(ctx, op, []clientv3.Cmp{absent(key)}, []clientv3.Op{clientv3.OpPut(key, value)}, nil)
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("%s: %w", op, authz.ErrConflict)
	}
	return resp.Header.Revision, nil
}

// CreateClient implements authz.Store.
func (s *Store) CreateClient(ctx context.Context, c authz.ClientRecord) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	return s.createIfAbsent(ctx, fmt.Sprintf("create client %q", c.ID), clientKey(c.ID), encode(c))
}

// Client implements authz.Store.
func (s *Store) Client(ctx context.Context, id string) (authz.ClientRecord, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, clientKey(id))
	if err != nil {
		return authz.ClientRecord{}, s.fail(ctx, "read client", err)
	}
	if len(resp.Kvs) == 0 {
		return authz.ClientRecord{}, fmt.Errorf("client %q: %w", id, authz.ErrNotFound)
	}
	var c authz.ClientRecord
	if err := decode(resp.Kvs[0].Value, &c, clientKey(id)); err != nil {
		return authz.ClientRecord{}, err
	}
	return c, nil
}

// Clients implements authz.Store.
func (s *Store) Clients(ctx context.Context) ([]authz.ClientRecord, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, pfxClients, clientv3.WithPrefix())
	if err != nil {
		return nil, s.fail(ctx, "list clients", err)
	}
	out := make([]authz.ClientRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var c authz.ClientRecord
		if err := decode(kv.Value, &c, string(kv.Key)); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// DeleteClient implements authz.Store.
func (s *Store) DeleteClient(ctx context.Context, id string) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	// A transaction rather than a delete, for the commit stamp and the
	// fence (and so only when the client exists: no stamp for nothing).
	resp, err := s.commit(ctx, "delete client", []clientv3.Cmp{exists(clientKey(id))}, []clientv3.Op{clientv3.OpDelete(clientKey(id))}, nil)
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("delete client %q: %w", id, authz.ErrNotFound)
	}
	return resp.Header.Revision, nil
}

// PutAuthCode implements authz.Store. The code is on a lease ending at
// c.ExpiresAt, so codes never taken do not accumulate.
func (s *Store) PutAuthCode(ctx context.Context, digest string, c authz.AuthCode) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	lease, err := s.grantLease(ctx, "put auth code", c.ExpiresAt)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, authCodeKey(digest), encode(c), clientv3.WithLease(lease)); err != nil {
		s.dropLease(ctx, lease)
		return s.fail(ctx, "put auth code", err)
	}
	return nil
}

// TakeAuthCode implements authz.Store with a read and a compare-and-set
// transaction that deletes the code and creates its used-auth-codes/ record
// (the record needs the code's subject and client, hence the read first).
// etcd serializes the transactions, so exactly one caller gets the code.
// A code past ExpiresAt is not returned even if its lease has not fired
// yet (etcd expires leases on a timer, with a minimum TTL); it is deleted
// without a record, as nothing can have been issued for it.
func (s *Store) TakeAuthCode(ctx context.Context, digest string) (authz.AuthCode, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	const op = "take auth code"
	key := authCodeKey(digest)
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return authz.AuthCode{}, s.fail(ctx, op, err)
	}
	if len(resp.Kvs) == 0 {
		return authz.AuthCode{}, fmt.Errorf("%s: %w", op, authz.ErrNotFound)
	}
	var c authz.AuthCode
	if err := decode(resp.Kvs[0].Value, &c, key); err != nil {
		return authz.AuthCode{}, err
	}
	taken := unchanged(key, resp.Kvs[0].ModRevision)
	if !time.Now().Before(c.ExpiresAt) {
		if _, err := s.commit(ctx, op, []clientv3.Cmp{taken}, []clientv3.Op{clientv3.OpDelete(key)}, nil); err != nil {
			return authz.AuthCode{}, err
		}
		return authz.AuthCode{}, fmt.Errorf("%s: expired: %w", op, authz.ErrNotFound)
	}
	lease, err := s.grantLease(ctx, op, time.Now().Add(authz.UsedAuthCodeRetention))
	if err != nil {
		return authz.AuthCode{}, err
	}
	used := authz.UsedAuthCode{Subject: c.Subject, ClientID: c.ClientID}
	txn, err := s.commit(ctx, op, []clientv3.Cmp{taken}, []clientv3.Op{
		clientv3.OpDelete(key),
		clientv3.OpPut(usedAuthCodeKey(digest), encode(used), clientv3.WithLease(lease)),
	}, nil)
	if err != nil {
		s.dropLease(ctx, lease)
		return authz.AuthCode{}, err
	}
	if !txn.Succeeded {
		s.dropLease(ctx, lease)
		return authz.AuthCode{}, fmt.Errorf("%s: taken by a concurrent call: %w", op, authz.ErrNotFound)
	}
	return c, nil
}

// RecordAuthCodeIssue implements authz.Store. TakeAuthCode creates the
// record, so version 1 means nobody wrote it since; the put compares the
// revision it read, so a replay marking it in between makes it fail.
func (s *Store) RecordAuthCodeIssue(ctx context.Context, digest, family string, access *authz.IssuedAccess) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	const op = "record auth code issue"
	key := usedAuthCodeKey(digest)
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return s.fail(ctx, op, err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("%s: %w", op, authz.ErrNotFound)
	}
	kv := resp.Kvs[0]
	if kv.Version != 1 {
		return fmt.Errorf("%s: the used code was written since it was taken: %w", op, authz.ErrConflict)
	}
	var u authz.UsedAuthCode
	if err := decode(kv.Value, &u, key); err != nil {
		return err
	}
	u.Family, u.Access = family, access
	// The record keeps the lease TakeAuthCode gave it.
	txn, err := s.commit(ctx, op, []clientv3.Cmp{unchanged(key, kv.ModRevision)},
		[]clientv3.Op{clientv3.OpPut(key, encode(u), clientv3.WithIgnoreLease())}, nil)
	if err != nil {
		return err
	}
	if !txn.Succeeded {
		return fmt.Errorf("%s: the used code was written concurrently: %w", op, authz.ErrConflict)
	}
	return nil
}

// ReplayAuthCode implements authz.Store with a compare-and-set loop: the
// only other writer is RecordAuthCodeIssue, so after a lost race the
// re-read record names what was issued.
func (s *Store) ReplayAuthCode(ctx context.Context, digest string) (authz.UsedAuthCode, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	const op = "replay auth code"
	key := usedAuthCodeKey(digest)
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if err := backoff(ctx, attempt); err != nil {
			return authz.UsedAuthCode{}, s.fail(ctx, op, err)
		}
		resp, err := s.kv.Get(ctx, key)
		if err != nil {
			return authz.UsedAuthCode{}, s.fail(ctx, op, err)
		}
		if len(resp.Kvs) == 0 {
			return authz.UsedAuthCode{}, fmt.Errorf("%s: %w", op, authz.ErrNotFound)
		}
		var u authz.UsedAuthCode
		if err := decode(resp.Kvs[0].Value, &u, key); err != nil {
			return authz.UsedAuthCode{}, err
		}
		if u.Replayed {
			return u, nil
		}
		u.Replayed = true
		txn, err := s.commit(ctx, op, []clientv3.Cmp{unchanged(key, resp.Kvs[0].ModRevision)},
			[]clientv3.Op{clientv3.OpPut(key, encode(u), clientv3.WithIgnoreLease())}, nil)
		if err != nil {
			return authz.UsedAuthCode{}, err
		}
		if txn.Succeeded {
			return u, nil
		}
	}
	return authz.UsedAuthCode{}, fmt.Errorf("%s: gave up after %d lost races: %w", op, maxAttempts, authz.ErrConflict)
}

// SigningKeys implements authz.Store.
func (s *Store) SigningKeys(ctx context.Context) ([]authz.SigningKey, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, pfxSigningKeys, clientv3.WithPrefix())
	if err != nil {
		return nil, s.fail(ctx, "list signing keys", err)
	}
	out := make([]authz.SigningKey, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var k authz.SigningKey
		if err := decode(kv.Value, &k, string(kv.Key)); err != nil {
			return nil, err
		}
		k.Revision = kv.CreateRevision
		out = append(out, k)
	}
	return out, nil
}

// AddSigningKey implements authz.Store.
func (s *Store) AddSigningKey(ctx context.Context, k authz.SigningKey) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	return s.createIfAbsent(ctx, fmt.Sprintf("add signing key %q", k.ID), signingKeyKey(k.ID), encode(k))
}

// UpdateSigningKey implements authz.Store.
func (s *Store) UpdateSigningKey(ctx context.Context, k authz.SigningKey) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.commit(ctx, "update signing key",
		[]clientv3.Cmp{exists(signingKeyKey(k.ID))},
		[]clientv3.Op{clientv3.OpPut(signingKeyKey(k.ID), encode(k))}, nil)
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("update signing key %q: %w", k.ID, authz.ErrNotFound)
	}
	return resp.Header.Revision, nil
}

// DeleteSigningKey implements authz.Store.
func (s *Store) DeleteSigningKey(ctx context.Context, id string) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Delete(ctx, signingKeyKey(id))
	if err != nil {
		return 0, s.fail(ctx, "delete signing key", err)
	}
	return resp.Header.Revision, nil
}

// loginAttempt is the value of a login-attempts/<account>/<id> key.
type loginAttempt struct {
	At time.Time `json:"at"`
}

// TakeLoginAttempt implements authz.Store without a read-modify-write
// race: every attempt is its own key, on a lease of one window, and etcd's
// revisions order them. An attempt is counted when no more than limit
// attempt keys, its own included, were created at or before its revision;
// otherwise its key is deleted again. So however many callers race on
// however many replicas, at most limit attempts are counted in any window
// (the window slides: each attempt expires window after it was made).
func (s *Store) TakeLoginAttempt(ctx context.Context, account string, limit int, window time.Duration) (string, bool, time.Time, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	const op = "take login attempt"
	pfx := loginAttemptsOf(account)
	// Refuse without writing while the budget is spent: the common case
	// under attack.
	resp, err := s.kv.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return "", false, time.Time{}, s.fail(ctx, op, err)
	}
	if resp.Count >= int64(limit) {
		end, err := s.loginWindowEnd(ctx, pfx, window)
		return "", false, end, err
	}
	now := time.Now().UTC()
	lease, err := s.grantLease(ctx, op, now.Add(window))
	if err != nil {
		return "", false, time.Time{}, err
	}
	id := randomKeyID()
	put, err := s.kv.Put(ctx, pfx+id, encode(loginAttempt{At: now}), clientv3.WithLease(lease))
	if err != nil {
		s.dropLease(ctx, lease)
		return "", false, time.Time{}, s.fail(ctx, op, err)
	}
	// Not WithCountOnly: etcd counts before it filters by revision.
	resp, err = s.kv.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMaxCreateRev(put.Header.Revision))
	if err != nil {
		return "", false, time.Time{}, s.fail(ctx, op, err)
	}
	if len(resp.Kvs) <= limit {
		return id, true, time.Time{}, nil
	}
	// Revoking the lease deletes the key with it.
	if _, err := s.lease.Revoke(ctx, lease); err != nil {
		return "", false, time.Time{}, s.fail(ctx, op, err)
	}
	end, err := s.loginWindowEnd(ctx, pfx, window)
	return "", false, end, err
}

// loginWindowEnd is when the oldest counted attempt expires.
func (s *Store) loginWindowEnd(ctx context.Context, pfx string, window time.Duration) (time.Time, error) {
	resp, err := s.kv.Get(ctx, pfx, append([]clientv3.OpOption{clientv3.WithPrefix()}, clientv3.WithFirstCreate()...)...)
	if err != nil {
		return time.Time{}, s.fail(ctx, "read login attempts", err)
	}
	if len(resp.Kvs) == 0 {
		return time.Now(), nil
	}
	var a loginAttempt
	if err := decode(resp.Kvs[0].Value, &a, string(resp.Kvs[0].Key)); err != nil {
		return time.Time{}, err
	}
	return a.At.Add(window), nil
}

// ReturnLoginAttempt implements authz.Store.
func (s *Store) ReturnLoginAttempt(ctx context.Context, account, id string) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	if id == "" {
		return nil
	}
	if _, err := s.kv.Delete(ctx, loginAttemptsOf(account)+id); err != nil {
		return s.fail(ctx, "return login attempt", err)
	}
	return nil
}

// randomKeyID returns 16 random hex digits for keys that only need to be
// distinct.
func randomKeyID() string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

package etcdstore

import (
	"context"
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
	resp, err := s.kv.Delete(ctx, clientKey(id))
	if err != nil {
		return 0, s.fail(ctx, "delete client", err)
	}
	if resp.Deleted == 0 {
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

// TakeAuthCode implements authz.Store with one delete that returns the
// deleted value: etcd serializes deletes, so exactly one caller gets it.
// A code past ExpiresAt is not returned even if its lease has not fired
// yet (etcd expires leases on a timer, with a minimum TTL).
func (s *Store) TakeAuthCode(ctx context.Context, digest string) (authz.AuthCode, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Delete(ctx, authCodeKey(digest), clientv3.WithPrevKV())
	if err != nil {
		return authz.AuthCode{}, s.fail(ctx, "take auth code", err)
	}
	if len(resp.PrevKvs) == 0 {
		return authz.AuthCode{}, fmt.Errorf("take auth code: %w", authz.ErrNotFound)
	}
	var c authz.AuthCode
	if err := decode(resp.PrevKvs[0].Value, &c, authCodeKey(digest)); err != nil {
		return authz.AuthCode{}, err
	}
	if !time.Now().Before(c.ExpiresAt) {
		return authz.AuthCode{}, fmt.Errorf("take auth code: expired: %w", authz.ErrNotFound)
	}
	return c, nil
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

// loginAttempts is the value of a login-attempts/ key: the attempts
// counted in the window that ends at WindowEnd.
type loginAttempts struct {
	Count     int       `json:"count"`
	WindowEnd time.Time `json:"window_end"`
}

// TakeLoginAttempt implements authz.Store with a compare-and-set loop on
// the counter's mod revision, so concurrent callers on every replica share
// one count. A new window's key is put on a lease ending with the window;
// later increments keep that lease.
func (s *Store) TakeLoginAttempt(ctx context.Context, account string, limit int, window time.Duration) (bool, time.Time, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	const op = "take login attempt"
	key := loginAttemptsKey(account)
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if err := backoff(ctx, attempt); err != nil {
			return false, time.Time{}, s.fail(ctx, op, err)
		}
		resp, err := s.kv.Get(ctx, key)
		if err != nil {
			return false, time.Time{}, s.fail(ctx, op, err)
		}
		var cur loginAttempts
		var modRev int64
		if len(resp.Kvs) > 0 {
			modRev = resp.Kvs[0].ModRevision
			if err := decode(resp.Kvs[0].Value, &cur, key); err != nil {
				return false, time.Time{}, err
			}
		}
		now := time.Now()
		var put clientv3.Op
		lease := clientv3.NoLease
		if modRev == 0 || !now.Before(cur.WindowEnd) {
			next := loginAttempts{Count: 1, WindowEnd: now.Add(window).UTC()}
			if lease, err = s.grantLease(ctx, op, next.WindowEnd); err != nil {
				return false, time.Time{}, err
			}
			put = clientv3.OpPut(key, encode(next), clientv3.WithLease(lease))
		} else if cur.Count >= limit {
			return false, cur.WindowEnd, nil
		} else {
			put = clientv3.OpPut(key, encode(loginAttempts{Count: cur.Count + 1, WindowEnd: cur.WindowEnd}), clientv3.WithIgnoreLease())
		}
		tr, err := s.commit(ctx, op, []clientv3.Cmp{unchanged(key, modRev)}, []clientv3.Op{put}, nil)
		if err != nil {
			s.dropLease(ctx, lease)
			return false, time.Time{}, err
		}
		if tr.Succeeded {
			return true, time.Time{}, nil
		}
		s.dropLease(ctx, lease)
	}
	return false, time.Time{}, fmt.Errorf("%s: %w: too much contention", op, authz.ErrUnavailable)
}

// ReturnLoginAttempt implements authz.Store.
func (s *Store) ReturnLoginAttempt(ctx context.Context, account string) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	const op = "return login attempt"
	key := loginAttemptsKey(account)
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if err := backoff(ctx, attempt); err != nil {
			return s.fail(ctx, op, err)
		}
		resp, err := s.kv.Get(ctx, key)
		if err != nil {
			return s.fail(ctx, op, err)
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		var cur loginAttempts
		if err := decode(resp.Kvs[0].Value, &cur, key); err != nil {
			return err
		}
		if cur.Count <= 0 || !time.Now().Before(cur.WindowEnd) {
			return nil
		}
		cur.Count--
		tr, err := s.commit(ctx, op, []clientv3.Cmp{unchanged(key, resp.Kvs[0].ModRevision)},
			[]clientv3.Op{clientv3.OpPut(key, encode(cur), clientv3.WithIgnoreLease())}, nil)
		if err != nil {
			return err
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%s: %w: too much contention", op, authz.ErrUnavailable)
}

package etcdstore

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
)

// The keys of external sign-in (docs/etcd-layout.md):
//
//	external-ids/<provider>|<subject>: authz.ExternalLink
//	external-logins/<digest>: authz.ExternalLoginState, on a lease
const (
	pfxExternalIDs    = "external-ids/"
	pfxExternalLogins = "external-logins/"
)

func externalIDKey(key string) string       { return pfxExternalIDs + key }
func externalLoginKey(digest string) string { return pfxExternalLogins + digest }

var _ authz.ExternalStore = (*Store)(nil)

// PutExternalLoginState implements authz.ExternalStore, on a lease that
// ends when the state expires.
func (s *Store) PutExternalLoginState(ctx context.Context, digest string, st authz.ExternalLoginState) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	lease, err := s.grantLease(ctx, "put external login", st.ExpiresAt)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, externalLoginKey(digest), encode(st), clientv3.WithLease(lease)); err != nil {
		s.dropLease(ctx, lease)
		return s.fail(ctx, "put external login", err)
	}
	return nil
}

// TakeExternalLoginState implements authz.ExternalStore with one delete
// that returns the deleted value: etcd serializes deletes, so exactly one
// caller gets it.
func (s *Store) TakeExternalLoginState(ctx context.Context, digest string) (authz.ExternalLoginState, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Delete(ctx, externalLoginKey(digest), clientv3.WithPrevKV())
	if err != nil {
		return authz.ExternalLoginState{}, s.fail(ctx, "take external login", err)
	}
	if len(resp.PrevKvs) == 0 {
		return authz.ExternalLoginState{}, fmt.Errorf("take external login: %w", authz.ErrNotFound)
	}
	var st authz.ExternalLoginState
	if err := decode(resp.PrevKvs[0].Value, &st, externalLoginKey(digest)); err != nil {
		return authz.ExternalLoginState{}, err
	}
	if !time.Now().Before(st.ExpiresAt) {
		return authz.ExternalLoginState{}, fmt.Errorf("take external login: expired: %w", authz.ErrNotFound)
	}
	return st, nil
}

// ExternalLink implements authz.ExternalStore.
func (s *Store) ExternalLink(ctx context.Context, provider, subject string) (authz.ExternalLink, authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	key := externalIDKey(authz.ExternalKey(provider, subject))
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return authz.ExternalLink{}, 0, s.fail(ctx, "read external link", err)
	}
	if len(resp.Kvs) == 0 {
		return authz.ExternalLink{}, 0, fmt.Errorf("external link: %w", authz.ErrNotFound)
	}
	var l authz.ExternalLink
	if err := decode(resp.Kvs[0].Value, &l, key); err != nil {
		return authz.ExternalLink{}, 0, err
	}
	return l, resp.Kvs[0].ModRevision, nil
}

// CreateExternalUser implements authz.ExternalStore: CreateUser's
// transaction plus the link key, guarded by its ModRevision.
func (s *Store) CreateExternalUser(ctx context.Context, u authz.UserRecord, grants []string, link authz.ExternalLink, linkRev authz.Revision) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	subject := userSubject(u.ID)
	cmps := []clientv3.Cmp{absent(userKey(u.ID)), unchanged(externalIDKey(link.Key()), linkRev)}
	then := []clientv3.Op{clientv3.OpPut(userKey(u.ID), encode(u)), clientv3.OpPut(externalIDKey(link.Key()), encode(link))}
	owner := encode(loginValue{UserID: u.ID})
	for _, l := range u.LoginIDs() {
		cmps = append(cmps, absent(loginKey(l)))
		then = append(then, clientv3.OpPut(loginKey(l), owner))
	}
	g := encode(grantValue{CreatedAt: now()})
	for _, grant := range dedupe(grants) {
		then = append(then, clientv3.OpPut(grantKey(subject, grant), g), clientv3.OpPut(holderKey(grant, subject), g))
	}
	resp, err := s.commit(ctx, "create external user", cmps, then, nil)
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("create external user: user id, login id or link taken: %w", authz.ErrConflict)
	}
	return resp.Header.Revision, nil
}

// UpdateExternalRoles implements authz.ExternalStore. The user must still
// exist, so that no grant is written for a user deleted meanwhile.
func (s *Store) UpdateExternalRoles(ctx context.Context, link authz.ExternalLink, linkRev authz.Revision, add, remove []string) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	subject := userSubject(link.UserID)
	cmps := []clientv3.Cmp{unchanged(externalIDKey(link.Key()), linkRev), exists(userKey(link.UserID))}
	then := []clientv3.Op{clientv3.OpPut(externalIDKey(link.Key()), encode(link))}
	g := encode(grantValue{CreatedAt: now()})
	for _, grant := range dedupe(add) {
		then = append(then, clientv3.OpPut(grantKey(subject, grant), g), clientv3.OpPut(holderKey(grant, subject), g))
	}
	for _, grant := range dedupe(remove) {
		then = append(then, clientv3.OpDelete(grantKey(subject, grant)), clientv3.OpDelete(holderKey(grant, subject)))
	}
	resp, err := s.commit(ctx, "update external roles", cmps, then, nil)
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("update external roles: the link or user changed: %w", authz.ErrConflict)
	}
	return resp.Header.Revision, nil
}

package etcdstore

import (
	"context"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
)

// AddGrant implements authz.Store. When both keys already exist nothing is
// written, so a repeated grant neither moves its created_at nor wakes
// watchers.
func (s *Store) AddGrant(ctx context.Context, resource, grant string) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	v := encode(grantValue{CreatedAt: now()})
	resp, err := s.commit(ctx, "add grant",
		[]clientv3.Cmp{exists(grantKey(resource, grant)), exists(holderKey(grant, resource))},
		nil,
		[]clientv3.Op{
			clientv3.OpPut(grantKey(resource, grant), v),
			clientv3.OpPut(holderKey(grant, resource), v),
		})
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// RemoveGrants implements authz.Store.
func (s *Store) RemoveGrants(ctx context.Context, resource string, grants []string) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	grants = dedupe(grants)
	ops := make([]clientv3.Op, 0, 2*len(grants))
	for _, g := range grants {
		ops = append(ops, clientv3.OpDelete(grantKey(resource, g)), clientv3.OpDelete(holderKey(g, resource)))
	}
	resp, err := s.commit(ctx, "remove grants", nil, ops, nil)
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// Grants implements authz.Store: one transaction without conditions whose
// range reads all see the same revision.
func (s *Store) Grants(ctx context.Context, resources []string) (map[string][]string, authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resources = dedupe(resources)
	ops := make([]clientv3.Op, len(resources))
	for i, r := range resources {
		ops[i] = clientv3.OpGet(grantsOf(r), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	}
	if len(ops) == 0 {
		// Still one request, to report a revision.
		ops = []clientv3.Op{clientv3.OpGet(keySchema, clientv3.WithCountOnly())}
	}
	resp, err := s.commit(ctx, "read grants", nil, ops, nil)
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string][]string, len(resources))
	for i, r := range resources {
		if gs := grantNames(resp.Responses[i].GetResponseRange(), r); len(gs) > 0 {
			out[r] = gs
		}
	}
	return out, resp.Header.Revision, nil
}

// grantNames extracts the grant names from a range over grantsOf(resource).
func grantNames(rr *etcdserverpb.RangeResponse, resource string) []string {
	if rr == nil || len(rr.Kvs) == 0 {
		return nil
	}
	pfx := grantsOf(resource)
	out := make([]string, 0, len(rr.Kvs))
	for _, kv := range rr.Kvs {
		if g, ok := strings.CutPrefix(string(kv.Key), pfx); ok && g != "" {
			out = append(out, g)
		}
	}
	return out
}

// ResourcesWithGrant implements authz.Store with one range over the
// holders/ index.
func (s *Store) ResourcesWithGrant(ctx context.Context, grant, prefix string) ([]string, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, holdersOf(grant)+prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, s.fail(ctx, "resources with grant", err)
	}
	pfx := holdersOf(grant)
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if r, ok := strings.CutPrefix(string(kv.Key), pfx); ok && r != "" {
			out = append(out, r)
		}
	}
	// etcd returns keys in byte order, which is Go's string order; sorting
	// again costs nothing and does not rely on it.
	slices.Sort(out)
	return out, nil
}

// Subject implements authz.Store: one transaction reading the subject's
// grants, its user record and the session's revocation at one revision.
func (s *Store) Subject(ctx context.Context, subject, jti string) (authz.SubjectSnapshot, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	ops := []clientv3.Op{clientv3.OpGet(grantsOf(subject), clientv3.WithPrefix(), clientv3.WithKeysOnly())}
	userID, isUser := strings.CutPrefix(subject, userSubjectPrefix)
	isUser = isUser && userID != ""
	if isUser {
		ops = append(ops, clientv3.OpGet(userKey(userID)))
	}
	if jti != "" {
		ops = append(ops, clientv3.OpGet(sessionKey(jti), clientv3.WithCountOnly()))
	}
	resp, err := s.commit(ctx, "read subject", nil, ops, nil)
	if err != nil {
		return authz.SubjectSnapshot{}, err
	}
	snap := authz.SubjectSnapshot{
		Grants:   grantNames(resp.Responses[0].GetResponseRange(), subject),
		Revision: resp.Header.Revision,
	}
	next := 1
	if isUser {
		if kvs := resp.Responses[next].GetResponseRange().Kvs; len(kvs) > 0 {
			var u authz.UserRecord
			if err := decode(kvs[0].Value, &u, userKey(userID)); err != nil {
				return authz.SubjectSnapshot{}, err
			}
			snap.User = &u
		}
		next++
	}
	if jti != "" {
		snap.SessionRevoked = resp.Responses[next].GetResponseRange().Count > 0
	}
	return snap, nil
}

// dedupe returns xs without repeats, in first-seen order. etcd rejects a
// transaction that writes one key twice, and reading a key twice is waste.
func dedupe(xs []string) []string {
	seen := make(map[string]bool, len(xs))
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

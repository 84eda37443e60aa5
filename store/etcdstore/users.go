package etcdstore

import (
	"context"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
)

// CreateUser implements authz.Store. The transaction requires the user key
// and every login key to be absent; when it fails, its else branch has read
// those keys at the same revision, which tells which one conflicted.
func (s *Store) CreateUser(ctx context.Context, u authz.UserRecord, grants []string) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	logins := u.LoginIDs()
	subject := userSubject(u.ID)
	cmps := []clientv3.Cmp{absent(userKey(u.ID))}
	then := []clientv3.Op{clientv3.OpPut(userKey(u.ID), encode(u))}
	els := []clientv3.Op{clientv3.OpGet(userKey(u.ID), clientv3.WithCountOnly())}
	owner := encode(loginValue{UserID: u.ID})
	for _, l := range logins {
		cmps = append(cmps, absent(loginKey(l)))
		then = append(then, clientv3.OpPut(loginKey(l), owner))
		els = append(els, clientv3.OpGet(loginKey(l), clientv3.WithCountOnly()))
	}
	g := encode(grantValue{CreatedAt: now()})
	for _, grant := range dedupe(grants) {
		then = append(then, clientv3.OpPut(grantKey(subject, grant), g), clientv3.OpPut(holderKey(grant, subject), g))
	}
	resp, err := s.commit(ctx, "create user", cmps, then, els)
	if err != nil {
		return 0, err
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	if resp.Responses[0].GetResponseRange().Count > 0 {
		return 0, fmt.Errorf("create user: user id %q: %w", u.ID, authz.ErrConflict)
	}
	for i, l := range logins {
		if resp.Responses[i+1].GetResponseRange().Count > 0 {
			return 0, fmt.Errorf("create user: login id %q: %w", l, authz.ErrConflict)
		}
	}
	// Unreachable: the else branch read the compared keys at the revision
	// the compares failed at.
	return 0, fmt.Errorf("create user: %w", authz.ErrConflict)
}

// User implements authz.Store.
func (s *Store) User(ctx context.Context, id string) (authz.UserRecord, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, userKey(id))
	if err != nil {
		return authz.UserRecord{}, s.fail(ctx, "read user", err)
	}
	if len(resp.Kvs) == 0 {
		return authz.UserRecord{}, fmt.Errorf("user %q: %w", id, authz.ErrNotFound)
	}
	var u authz.UserRecord
	if err := decode(resp.Kvs[0].Value, &u, userKey(id)); err != nil {
		return authz.UserRecord{}, err
	}
	return u, nil
}

// UserByLogin implements authz.Store. A login key whose user no longer
// lists that login id (a stale key left by a hand edit) is not a match.
func (s *Store) UserByLogin(ctx context.Context, login string) (authz.UserRecord, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, loginKey(login))
	if err != nil {
		return authz.UserRecord{}, s.fail(ctx, "read login", err)
	}
	if len(resp.Kvs) == 0 {
		return authz.UserRecord{}, fmt.Errorf("login: %w", authz.ErrNotFound)
	}
	var owner loginValue
	if err := decode(resp.Kvs[0].Value, &owner, loginKey(login)); err != nil {
		return authz.UserRecord{}, err
	}
	uresp, err := s.kv.Get(ctx, userKey(owner.UserID))
	if err != nil {
		return authz.UserRecord{}, s.fail(ctx, "read user", err)
	}
	if len(uresp.Kvs) == 0 {
		return authz.UserRecord{}, fmt.Errorf("login: %w", authz.ErrNotFound)
	}
	var u authz.UserRecord
	if err := decode(uresp.Kvs[0].Value, &u, userKey(owner.UserID)); err != nil {
		return authz.UserRecord{}, err
	}
	if !slices.Contains(u.LoginIDs(), strings.ToLower(login)) {
		return authz.UserRecord{}, fmt.Errorf("login: %w", authz.ErrNotFound)
	}
	return u, nil
}

// Users implements authz.Store.
func (s *Store) Users(ctx context.Context) ([]authz.UserRecord, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, pfxUsers, clientv3.WithPrefix())
	if err != nil {
		return nil, s.fail(ctx, "list users", err)
	}
	out := make([]authz.UserRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var u authz.UserRecord
		if err := decode(kv.Value, &u, string(kv.Key)); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// loginOwner is a login key as read: who owns it, at which ModRevision.
type loginOwner struct {
	userID string // "" when the key is absent
	modRev int64
}

// loginOwners reads the login keys of ids in one round trip.
func (s *Store) loginOwners(ctx context.Context, op string, ids []string) (map[string]loginOwner, error) {
	out := make(map[string]loginOwner, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	ops := make([]clientv3.Op, len(ids))
	for i, id := range ids {
		ops[i] = clientv3.OpGet(loginKey(id))
	}
	resp, err := s.commit(ctx, op, nil, ops, nil)
	if err != nil {
		return nil, err
	}
	for i, id := range ids {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			out[id] = loginOwner{}
			continue
		}
		var v loginValue
		if err := decode(kvs[0].Value, &v, loginKey(id)); err != nil {
			return nil, err
		}
		out[id] = loginOwner{userID: v.UserID, modRev: kvs[0].ModRevision}
	}
	return out, nil
}

// UpdateUser implements authz.Store. Each attempt reads the user (and its
// token index when tokens may be dropped), calls update, reads the owners of
// the login ids that change hands, and commits only if none of that changed
// meanwhile: the user's ModRevision, each login key's, and no token added.
func (s *Store) UpdateUser(ctx context.Context, id string, update func(*authz.UserRecord) error, dropToken func(authz.TokenRecord) bool) (authz.UserRecord, authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	subject := userSubject(id)
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if err := backoff(ctx, attempt); err != nil {
			return authz.UserRecord{}, 0, s.fail(ctx, "update user", err)
		}
		reads := []clientv3.Op{clientv3.OpGet(userKey(id))}
		if dropToken != nil {
			reads = append(reads, subjectTokensOp(subject))
		}
		resp, err := s.commit(ctx, "update user", nil, reads, nil)
		if err != nil {
			return authz.UserRecord{}, 0, err
		}
		rev := resp.Header.Revision
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return authz.UserRecord{}, 0, fmt.Errorf("update user %q: %w", id, authz.ErrNotFound)
		}
		var cur authz.UserRecord
		if err := decode(kvs[0].Value, &cur, userKey(id)); err != nil {
			return authz.UserRecord{}, 0, err
		}
		// decode gave us a record no one else holds; the copy handed to
		// update must not share LastActivity with cur either.
		next := cur
		if cur.LastActivity != nil {
			t := *cur.LastActivity
			next.LastActivity = &t
		}
		if err := update(&next); err != nil {
			return authz.UserRecord{}, 0, err
		}
		if next.ID != id {
			return authz.UserRecord{}, 0, fmt.Errorf("update user %q: update changed the id to %q: %w", id, next.ID, authz.ErrInvalid)
		}

		oldIDs, newIDs := cur.LoginIDs(), next.LoginIDs()
		var added, removed []string
		for _, l := range newIDs {
			if !slices.Contains(oldIDs, l) {
				added = append(added, l)
			}
		}
		for _, l := range oldIDs {
			if !slices.Contains(newIDs, l) {
				removed = append(removed, l)
			}
		}
		owners, err := s.loginOwners(ctx, "update user", append(append([]string(nil), added...), removed...))
		if err != nil {
			return authz.UserRecord{}, 0, err
		}

		cmps := []clientv3.Cmp{unchanged(userKey(id), kvs[0].ModRevision)}
		then := []clientv3.Op{clientv3.OpPut(userKey(id), encode(next))}
		mine := encode(loginValue{UserID: id})
		for _, l := range added {
			switch o := owners[l]; o.userID {
			case "":
				cmps = append(cmps, absent(loginKey(l)))
				then = append(then, clientv3.OpPut(loginKey(l), mine))
			case id: // already ours (left over from an earlier edit): keep it ours
				cmps = append(cmps, unchanged(loginKey(l), o.modRev))
			default:
				return authz.UserRecord{}, 0, fmt.Errorf("update user %q: login id %q: %w", id, l, authz.ErrConflict)
			}
		}
		for _, l := range removed {
			// Free only what is still ours; never another user's key.
			if o := owners[l]; o.userID == id {
				cmps = append(cmps, unchanged(loginKey(l), o.modRev))
				then = append(then, clientv3.OpDelete(loginKey(l)))
			}
		}
		if dropToken != nil {
			idx, err := parseSubjectTokens(subject, resp.Responses[1].GetResponseRange().Kvs)
			if err != nil {
				return authz.UserRecord{}, 0, err
			}
			ts, err := s.tokenRecords(ctx, "update user", idx)
			if err != nil {
				return authz.UserRecord{}, 0, err
			}
			var doomed []authz.TokenRecord
			for _, t := range ts {
				if t.Subject == subject && dropToken(t) {
					doomed = append(doomed, t)
				}
			}
			// A token created after our read was not offered to dropToken.
			cmps = append(cmps, noneNewer(subjectTokensOf(subject), rev))
			then = append(then, deleteOps(doomed)...)
		}
		txn, err := s.commit(ctx, "update user", cmps, then, nil)
		if err != nil {
			return authz.UserRecord{}, 0, err
		}
		if txn.Succeeded {
			return next, txn.Header.Revision, nil
		}
	}
	return authz.UserRecord{}, 0, fmt.Errorf("update user %q: gave up after %d lost races: %w", id, maxAttempts, authz.ErrConflict)
}

// DeleteUser implements authz.Store. It reads everything the user owns,
// then deletes it in one transaction that commits only if the user record,
// its grants, its token index and its login keys did not change since.
func (s *Store) DeleteUser(ctx context.Context, id string) (authz.Revision, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	subject := userSubject(id)
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if err := backoff(ctx, attempt); err != nil {
			return 0, s.fail(ctx, "delete user", err)
		}
		resp, err := s.commit(ctx, "delete user", nil, []clientv3.Op{
			clientv3.OpGet(userKey(id)),
			clientv3.OpGet(grantsOf(subject), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
			subjectTokensOp(subject),
		}, nil)
		if err != nil {
			return 0, err
		}
		rev := resp.Header.Revision
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return 0, fmt.Errorf("delete user %q: %w", id, authz.ErrNotFound)
		}
		var u authz.UserRecord
		if err := decode(kvs[0].Value, &u, userKey(id)); err != nil {
			return 0, err
		}
		grants := grantNames(resp.Responses[1].GetResponseRange(), subject)
		idx, err := parseSubjectTokens(subject, resp.Responses[2].GetResponseRange().Kvs)
		if err != nil {
			return 0, err
		}
		ts, err := s.tokenRecords(ctx, "delete user", idx)
		if err != nil {
			return 0, err
		}
		logins := u.LoginIDs()
		owners, err := s.loginOwners(ctx, "delete user", logins)
		if err != nil {
			return 0, err
		}

		cmps := []clientv3.Cmp{
			unchanged(userKey(id), kvs[0].ModRevision),
			noneNewer(grantsOf(subject), rev),
			noneNewer(subjectTokensOf(subject), rev),
		}
		then := []clientv3.Op{clientv3.OpDelete(userKey(id))}
		for _, l := range logins {
			if o := owners[l]; o.userID == id {
				cmps = append(cmps, unchanged(loginKey(l), o.modRev))
				then = append(then, clientv3.OpDelete(loginKey(l)))
			}
		}
		for _, x := range u.ExternalIDs {
			then = append(then, clientv3.OpDelete(externalIDKey(x)))
		}
		// The prefix deletes also sweep index entries that point nowhere.
		then = append(then,
			clientv3.OpDelete(grantsOf(subject), clientv3.WithPrefix()),
			clientv3.OpDelete(subjectTokensOf(subject), clientv3.WithPrefix()))
		for _, g := range grants {
			then = append(then, clientv3.OpDelete(holderKey(g, subject)))
		}
		var families []string
		var doomed []authz.TokenRecord
		for _, t := range ts {
			if t.Subject != subject {
				continue
			}
			doomed = append(doomed, t)
			if t.Family != "" && !slices.Contains(families, t.Family) {
				families = append(families, t.Family)
			}
		}
		then = append(then, deleteOps(doomed)...)
		for _, f := range families {
			then = append(then, clientv3.OpDelete(familyKey(f)))
		}
		txn, err := s.commit(ctx, "delete user", cmps, then, nil)
		if err != nil {
			return 0, err
		}
		if txn.Succeeded {
			return txn.Header.Revision, nil
		}
	}
	return 0, fmt.Errorf("delete user %q: gave up after %d lost races: %w", id, maxAttempts, authz.ErrConflict)
}

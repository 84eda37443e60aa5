package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis/portcullis/authz"
)

// Watch implements authz.Store with one etcd watch over the whole prefix.
//
// All changes of one revision (one transaction) are passed to fn before
// Watch looks at ctx again, so a caller that resumes from the last revision
// it saw misses nothing. Several keys of one transaction that map to the
// same Change (a user's grants) are reported once.
func (s *Store) Watch(ctx context.Context, after authz.Revision, fn func(authz.Change)) error {
	// etcd (3.4.24+, 3.5.8+, 3.6) sends progress notifications only once
	// its revision has reached the watch's start revision, so a watch from
	// after+1 on an idle store would never hear one. Starting at after
	// itself and dropping its events keeps progress flowing. Only if
	// revision after is compacted while after+1 is not does the start move.
	start := max(after, 1) // revision 0 would mean "from now" to etcd
	err := s.watch(ctx, start, after, fn)
	var c compactedError
	if errors.As(err, &c) && start == after && c.rev <= after+1 {
		err = s.watch(ctx, after+1, after, fn)
	}
	if errors.As(err, &c) {
		return fmt.Errorf("watch from revision %d: history compacted up to %d: %w", after+1, c.rev, authz.ErrCompacted)
	}
	return err
}

// compactedError reports that the start revision of a watch was compacted.
type compactedError struct{ rev int64 }

func (e compactedError) Error() string { return fmt.Sprintf("compacted up to %d", e.rev) }

// watch runs one etcd watch from start, reporting changes after after.
func (s *Store) watch(ctx context.Context, start, after authz.Revision, fn func(authz.Change)) error {
	// Cancelling this context is how clientv3 releases the watch; without
	// WithRequireLeader a watch on a member cut off from its leader would
	// hang silently instead of failing.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opened := time.Now()
	wch := s.watcher.Watch(wctx, "", clientv3.WithPrefix(), clientv3.WithRev(start), clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	created := false

	// A consumer trusts its caches only once it knows the watch is current,
	// which a progress notification says. etcd sends them on its own only
	// every few minutes, so ask for one as soon as the watch exists, and
	// again until one arrives (a request racing the watch's creation is lost,
	// and etcd ignores it until the watch has caught up). Only on servers
	// that answer such requests correctly: see progressRequestsSafe.
	progressed := make(chan struct{})
	var progressOnce sync.Once
	requestProgress := func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if wctx.Err() != nil {
				// Asking now could open a stream no watch uses any more.
				return
			}
			_ = s.watcher.RequestProgress(wctx)
			select {
			case <-progressed:
				return
			case <-wctx.Done():
				return
			case <-t.C:
			}
		}
	}

	// Once current, the watch must keep proving it is alive: a member whose
	// process is frozen keeps the stream open and says nothing, and the
	// caches would go on trusting a watch that no longer delivers
	// revocations. Every livenessInterval the watchdog asks for progress;
	// when nothing at all (event or progress) has arrived for three
	// intervals, it ends the watch, the caller bypasses its caches and
	// watches again (on another member, once the endpoint checker has left
	// the frozen one out).
	var heard, silentFor atomic.Int64
	heard.Store(time.Now().UnixNano())
	watchdog := func() {
		t := time.NewTicker(s.livenessInterval)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			if since := time.Since(time.Unix(0, heard.Load())); since > 3*s.livenessInterval {
				silentFor.Store(int64(since))
				cancel()
				return
			}
			// On a frozen stream the request itself may block until the
			// watch ends.
			go s.watcher.RequestProgress(wctx)
		}
	}
	silent := func() error {
		if d := time.Duration(silentFor.Load()); d != 0 {
			return fmt.Errorf("watch: %w: nothing heard from etcd for %v", authz.ErrUnavailable, d.Round(time.Millisecond))
		}
		return nil
	}

	var (
		lastRev int64
		seen    = map[authz.Change]bool{}
		// current is set once a progress notification said the watch
		// has caught up; from then on, every response's last revision
		// is complete when its events have been passed on.
		current bool
	)
	for resp := range wch {
		heard.Store(time.Now().UnixNano())
		if !created {
			created = true
			s.observe(OpWatchOpen, opened, resp.Err())
		}
		if resp.CompactRevision != 0 {
			return compactedError{rev: resp.CompactRevision}
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := silent(); err != nil {
				return err
			}
			if errors.Is(err, rpctypes.ErrCompacted) {
				return compactedError{rev: after + 1}
			}
			return fmt.Errorf("watch: %w: %w", authz.ErrUnavailable, err)
		}
		if resp.Created {
			if s.progressRequests {
				go requestProgress()
			}
			continue
		}
		if resp.IsProgressNotify() {
			current = true
			first := false
			progressOnce.Do(func() {
				first = true
				close(progressed)
				if s.livenessInterval > 0 {
					go watchdog()
				}
			})
			// Servers that answer progress requests unsafely (see
			// progressRequestsSafe) may answer the watchdog's with a
			// revision whose events are still on their way: from them
			// only etcd's own first notification says the watch is
			// current; later ones only say it is alive.
			if first || s.progressRequests {
				fn(authz.Change{Kind: authz.ChangeProgress, Revision: resp.Header.Revision})
			}
			continue
		}
		stamps := commitStamps(resp.Events)
		var done int64 // the newest revision of this response
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision <= after {
				continue // the caller saw it; we only started early (see Watch)
			}
			done = max(done, ev.Kv.ModRevision)
			c, ok := change(string(ev.Kv.Key))
			if !ok {
				continue
			}
			c.Revision = ev.Kv.ModRevision // for a delete, the revision of the delete
			if c.Revision != lastRev {
				lastRev = c.Revision
				clear(seen)
			}
			if seen[c] {
				continue
			}
			seen[c] = true
			c.CommittedAt = stamps.at(c.Revision)
			c.Revocation = revocation(c.Kind, ev.Type == mvccpb.DELETE)
			fn(c)
		}
		// etcd never splits a revision across responses (without
		// WithFragment), so every change up to done has now been passed
		// on: say so, so that a consumer knows the last transaction is
		// complete without waiting for etcd's next notification.
		if current && done > 0 {
			fn(authz.Change{Kind: authz.ChangeProgress, Revision: done})
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := silent(); err != nil {
		return err
	}
	// The channel closes without an error response when the client or the
	// Store is closed.
	return fmt.Errorf("watch: %w: watch channel closed", authz.ErrUnavailable)
}

// stamps are the commit times found in one watch response, by revision.
type stamps []struct {
	rev int64
	at  time.Time
}

// commitStamps finds the commit times in the events of a response: the
// puts of transaction markers (and of keyCommittedAt, from older
// versions). Every write transaction of this package puts its marker
// last, so the time is found only after the transaction's other events:
// hence this separate pass. A fence's marker has no commit time, and the
// deletion of markers when their lease ends is no put: both are skipped.
func commitStamps(evs []*clientv3.Event) stamps {
	var out stamps
	for _, ev := range evs {
		if ev.Type != mvccpb.PUT {
			continue
		}
		if k := string(ev.Kv.Key); !strings.HasPrefix(k, pfxTxnMarkers) && k != keyCommittedAt {
			continue
		}
		var v committedAtValue
		if json.Unmarshal(ev.Kv.Value, &v) == nil && !v.At.IsZero() {
			out = append(out, struct {
				rev int64
				at  time.Time
			}{ev.Kv.ModRevision, v.At})
		}
	}
	return out
}

// at returns the commit time of revision rev, or zero when it has none
// (lease expiries, writes by other tools).
func (st stamps) at(rev int64) time.Time {
	for _, s := range st {
		if s.rev == rev {
			return s.at
		}
	}
	return time.Time{}
}

// revocation says whether a change of kind takes access away: a deleted
// grant, token, user or client, or a recorded session revocation. (The
// deletion of a revoked-session key is its lease expiring, which revokes
// nothing.)
func revocation(kind authz.ChangeKind, deleted bool) bool {
	switch kind {
	case authz.ChangeGrant, authz.ChangeToken, authz.ChangeUser, authz.ChangeClient:
		return deleted
	case authz.ChangeSession:
		return !deleted
	}
	return false
}

// change maps a key (relative to the prefix) to the Change it reports;
// index keys and unknown keys report nothing.
func change(key string) (authz.Change, bool) {
	for _, k := range changeKinds {
		rest, ok := strings.CutPrefix(key, k.prefix)
		if !ok || rest == "" {
			continue
		}
		if k.kind == authz.ChangeGrant {
			// grants/<resource>|<grant>: the resource's grants changed.
			resource, _, ok := strings.Cut(rest, "|")
			if !ok || resource == "" {
				return authz.Change{}, false
			}
			rest = resource
		}
		return authz.Change{Kind: k.kind, Key: rest}, true
	}
	return authz.Change{}, false
}

// changeKinds maps the key prefixes Watch reports to their kind. Index
// keys (holders/, logins/, token-ids/, …) are absent on purpose: every
// change to them comes with a change to the object they index.
var changeKinds = []struct {
	prefix string
	kind   authz.ChangeKind
}{
	{pfxGrants, authz.ChangeGrant},
	{pfxTokens, authz.ChangeToken},
	{pfxRevokedSessions, authz.ChangeSession},
	{pfxUsers, authz.ChangeUser},
	{pfxClients, authz.ChangeClient},
	{pfxSigningKeys, authz.ChangeSigningKey},
}

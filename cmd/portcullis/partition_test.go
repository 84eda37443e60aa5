package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis/portcullis/store/etcdtest"
)

// Network partitions between replicas and etcd members. Each replica
// reaches each member through its own etcdtest.Link, so one replica can be
// cut off from some or all members while the others, and the cluster
// itself, are unaffected. A cut link loses packets: connections stay open
// and hang, which only timeouts, the watch's liveness check and gRPC
// keepalive notice (a killed member refuses connections, a frozen one
// keeps them; neither is quite this).
//
// Partitions between members are not tested: on loopback every member
// dials the same peer address, so cutting one peer link needs network
// namespaces (root or user namespaces and iproute2), which CI machines do
// not reliably allow. A member frozen with SIGSTOP
// (TestMemberPauseNoStaleAllow) is what its peers see of a partitioned
// member.

// partitionTopology is a topology whose replicas reach the members through
// links: links[r][m] is replica r's link to member m.
type partitionTopology struct {
	*topology
	links [][]*etcdtest.Link
}

func startPartitionTopology(t *testing.T, replicas int) *partitionTopology {
	t.Helper()
	c := etcdtest.StartCluster(t, 3)
	top := &topology{etcd: c, client: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxIdleConns: 256},
	}}
	t.Cleanup(top.client.CloseIdleConnections)
	pt := &partitionTopology{topology: top}
	for range replicas {
		var links []*etcdtest.Link
		var eps []string
		for _, m := range c.Members() {
			l := etcdtest.NewLink(t, m.Endpoint())
			links = append(links, l)
			eps = append(eps, l.Endpoint())
		}
		pt.links = append(pt.links, links)
		api, metrics, logs, stop := startServe(t, "--etcd-endpoints", strings.Join(eps, ","), "--admin-password", reliabilityAdminPassword, "--bcrypt-cost", "10")
		top.replicas = append(top.replicas, &replica{api: api, metrics: metrics, stop: stop, logs: logs})
	}
	top.admin = top.login(t, 0, "admin", reliabilityAdminPassword)
	return pt
}

// watchHealthy reads portcullis_watch_healthy from replica r's metrics
// listener, which answers whatever the store does.
func (top *topology) watchHealthy(r int) (bool, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + top.replicas[r].metrics + "/metrics")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "portcullis_watch_healthy "); ok {
			return v == "1", nil
		}
	}
	return false, fmt.Errorf("no portcullis_watch_healthy in /metrics of replica %d", r)
}

// waitFor polls cond every 20 ms until it holds or bound passes, and
// returns when it was first seen to hold (after the poll that saw it).
func waitFor(t *testing.T, what string, bound time.Duration, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Now()
}

// tokenDecision is one decision of a tokenLoad, on the named token.
type tokenDecision struct {
	decision
	token string
}

// tokenLoad asks every replica about every named token in turn, two
// clients per replica, recording every answer.
type tokenLoad struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	history []tokenDecision
}

func (top *topology) startTokenLoad(tokens map[string]string) *tokenLoad {
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range tokens {
			if !yield(n) {
				return
			}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	l := &tokenLoad{cancel: cancel}
	for r := range top.replicas {
		for w := range 2 {
			l.wg.Go(func() {
				for i := w; ctx.Err() == nil; i++ {
					name := names[i%len(names)]
					d := top.decide(ctx, r, tokens[name])
					if ctx.Err() != nil {
						return
					}
					l.mu.Lock()
					l.history = append(l.history, tokenDecision{d, name})
					l.mu.Unlock()
					time.Sleep(2 * time.Millisecond)
				}
			})
		}
	}
	return l
}

// stop ends the load and returns its history in order of start.
func (l *tokenLoad) stop() []tokenDecision {
	l.cancel()
	l.wg.Wait()
	slices.SortFunc(l.history, func(a, b tokenDecision) int { return a.start.Compare(b.start) })
	return l.history
}

// where selects decisions.
func where(h []tokenDecision, keep func(tokenDecision) bool) []tokenDecision {
	var out []tokenDecision
	for _, d := range h {
		if keep(d) {
			out = append(out, d)
		}
	}
	return out
}

func slowest(h []tokenDecision) time.Duration {
	var s time.Duration
	for _, d := range h {
		s = max(s, d.end.Sub(d.start))
	}
	return s
}

func statusCounts(h []tokenDecision) map[int]int {
	out := map[int]int{}
	for _, d := range h {
		out[d.status]++
	}
	return out
}

// Bounds of TestStorePartition. A replica's watch asks for progress every
// 500 ms and gives up after 1.5 s of silence, checked every 500 ms: a
// cached answer can outlive a partition by 2 s, plus scheduling slack. A
// decision that has to read an unreachable store fails with 503 when the
// store's 5 s request timeout ends.
const (
	staleBound    = 2500 * time.Millisecond
	decisionBound = 6 * time.Second
)

// TestStorePartition cuts replicas off from etcd members under load, with
// links that lose packets rather than refuse or reset connections.
//
// A replica cut off from every member may serve cached decisions only while
// its watch is still trusted (at most staleBound), then fails closed with
// 503 in bounded time; /readyz follows; a token revoked meanwhile through
// another replica is never allowed once the watch is distrusted, nor after
// the heal; it recovers without a restart when the links heal.
//
// A replica cut off from one member fails over to the others: it keeps
// deciding, revocations through other replicas reach it, and it is ready
// again while the link is still cut.
func TestStorePartition(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	// Both longer than the store's request timeout, so that decisions stuck
	// on a cut connection end by it rather than by the heal.
	outage, cutFor := 8*time.Second, 6*time.Second
	if reliabilityLong() {
		outage, cutFor = 30*time.Second, 15*time.Second
	}
	pt := startPartitionTopology(t, 3)
	top := pt.topology
	top.readerUser(t, "partition")
	session := top.login(t, 0, "partition", "partition-password")
	mint := func() string {
		var tok string
		top.call(t, 0, "POST", "/auth/tokens?"+url.Values{"token_type": {"api-token"}, "scope": {checkedPermission}}.Encode(), session, nil, 200, &tok)
		return tok
	}
	valid := mint()
	// warm has every replica allow tok, so it is in their caches.
	warm := func(t *testing.T, tok string) {
		for r := range top.replicas {
			waitFor(t, fmt.Sprintf("replica %d allows a fresh token", r), 5*time.Second, func() bool {
				return top.decide(context.Background(), r, tok).allowed()
			})
		}
	}

	// cutOffAll cuts replica 2 off from every member for outage, then ends
	// the partition with heal; the replica must be ready within
	// recoverBound of it.
	cutOffAll := func(t *testing.T, outage time.Duration, heal func(*etcdtest.Link), recoverBound time.Duration) {
		const cut = 2
		victim := mint()
		warm(t, victim)
		load := top.startTokenLoad(map[string]string{"valid": valid, "victim": victim})
		time.Sleep(300 * time.Millisecond)

		partitioned := time.Now()
		for _, l := range pt.links[cut] {
			l.Partition()
		}
		// Revoked through a replica that still reaches the store, while the
		// cut replica's watch may still be trusted.
		acked := top.revokeRetrying(t, 0, session, victim, 10*time.Second)
		distrusted := waitFor(t, "the cut replica distrusts its watch", 5*time.Second, func() bool {
			ok, err := top.watchHealthy(cut)
			return err == nil && !ok
		})
		notReady := waitFor(t, "the cut replica's /readyz answers 503", 5*time.Second, func() bool {
			return top.readyz(cut) == http.StatusServiceUnavailable
		})
		time.Sleep(time.Until(partitioned.Add(outage)))

		healed := time.Now()
		for _, l := range pt.links[cut] {
			heal(l)
		}
		ready := waitFor(t, "the cut replica's /readyz answers 200 after the heal", recoverBound, func() bool {
			return top.readyz(cut) == http.StatusOK
		})
		allowing := waitFor(t, "the cut replica allows the valid token after the heal", recoverBound, func() bool {
			return top.decide(context.Background(), cut, valid).allowed()
		})
		time.Sleep(time.Second)
		history := load.stop()

		mine := where(history, func(d tokenDecision) bool { return d.replica == cut })
		others := where(history, func(d tokenDecision) bool { return d.replica != cut })
		lastAllow, firstUnavailable := time.Time{}, time.Time{}
		for _, d := range mine {
			if d.start.After(partitioned) && d.end.Before(healed) {
				if d.allowed() {
					lastAllow = d.start
				}
				if d.status == http.StatusServiceUnavailable && firstUnavailable.IsZero() {
					firstUnavailable = d.end
				}
			}
		}
		t.Logf("cut off from every member for %v: watch distrusted after %v, /readyz 503 after %v, last allow sent %v and first 503 received %v after the cut; slowest decision %v; statuses %v",
			outage, distrusted.Sub(partitioned).Round(time.Millisecond), notReady.Sub(partitioned).Round(time.Millisecond),
			after(partitioned, lastAllow), after(partitioned, firstUnavailable),
			slowest(mine).Round(time.Millisecond), statusCounts(mine))
		t.Logf("after the heal: /readyz 200 within %v, allowing within %v", ready.Sub(healed).Round(time.Millisecond), allowing.Sub(healed).Round(time.Millisecond))

		for _, d := range mine {
			switch {
			case d.token == "victim" && d.allowed() && d.start.After(distrusted):
				t.Errorf("the revoked token was allowed by a request sent %v after the cut, %v after the watch was distrusted",
					d.start.Sub(partitioned).Round(time.Millisecond), d.start.Sub(distrusted).Round(time.Millisecond))
			case d.allowed() && d.start.After(distrusted) && d.end.Before(healed):
				t.Errorf("%s token allowed by a request sent %v after the watch was distrusted, before the heal: no store to read it from",
					d.token, d.start.Sub(distrusted).Round(time.Millisecond))
			case d.allowed() && d.start.After(partitioned.Add(staleBound)) && d.end.Before(healed):
				t.Errorf("%s token allowed by a request sent %v into the partition: a cached answer outlived the watch",
					d.token, d.start.Sub(partitioned).Round(time.Millisecond))
			case d.status == 0:
				t.Errorf("a %s decision sent %v after the cut got no answer within the client's %v", d.token, d.start.Sub(partitioned).Round(time.Millisecond), top.client.Timeout)
			case d.token == "valid" && !d.allowed() && d.status != http.StatusServiceUnavailable:
				t.Errorf("the valid token got %d (sent %v after the cut), want 200 or 503", d.status, d.start.Sub(partitioned).Round(time.Millisecond))
			}
		}
		if firstUnavailable.IsZero() {
			t.Error("the cut replica never answered 503")
		} else if got := firstUnavailable.Sub(partitioned); got > staleBound+decisionBound {
			t.Errorf("first 503 %v after the cut, want ≤ %v", got, staleBound+decisionBound)
		}
		if s := slowest(mine); s > decisionBound {
			t.Errorf("a decision of the cut replica took %v, want ≤ %v", s, decisionBound)
		}
		for _, d := range others {
			switch {
			case d.token == "valid" && !d.allowed():
				t.Errorf("replica %d, not cut, answered %d for the valid token", d.replica, d.status)
			case d.token == "victim" && d.allowed() && d.start.After(acked.Add(time.Second)):
				t.Errorf("replica %d, not cut, allowed the revoked token %v after the acknowledgement", d.replica, d.start.Sub(acked).Round(time.Millisecond))
			}
		}
	}
	t.Run("replica cut off from every member", func(t *testing.T) {
		cutOffAll(t, outage, (*etcdtest.Link).Heal, 10*time.Second)
	})
	if reliabilityLong() {
		// The connections' state is lost in the outage: only gRPC keepalive
		// (10 s + 5 s) tells the replica to give them up and redial. The
		// outage is shorter than that, so the dead connections are still
		// in use when the network returns.
		t.Run("replica cut off from every member, connections lost", func(t *testing.T) {
			cutOffAll(t, 8*time.Second, (*etcdtest.Link).HealNewOnly, 30*time.Second)
		})
	}

	t.Run("replica cut off from one member", func(t *testing.T) {
		const cut = 1
		// Each member in turn, so one of them carries the replica's watch.
		for m, member := range top.etcd.Members() {
			victim, later := mint(), mint()
			warm(t, victim)
			warm(t, later)
			load := top.startTokenLoad(map[string]string{"valid": valid, "victim": victim, "later": later})
			time.Sleep(300 * time.Millisecond)

			partitioned := time.Now()
			pt.links[cut][m].Partition()
			acked := top.revokeRetrying(t, 0, session, victim, 10*time.Second)
			// Failed over: the endpoint check left the member out, the watch
			// is current again and the store answers, all through the other
			// members.
			leftOut := waitFor(t, "the replica's endpoint check leaves the cut member out", 10*time.Second, func() bool {
				logs := top.replicas[cut].logs.String()
				i := strings.LastIndex(logs, "endpoints in use changed")
				if i < 0 {
					return false
				}
				line, _, _ := strings.Cut(logs[i:], "\n")
				inUse, _, _ := strings.Cut(line, "configured=")
				return !strings.Contains(inUse, pt.links[cut][m].Addr())
			})
			time.Sleep(time.Until(partitioned.Add(staleBound)))
			ready := waitFor(t, "the replica is ready again through the other members", 10*time.Second, func() bool {
				ok, err := top.watchHealthy(cut)
				return err == nil && ok && top.readyz(cut) == http.StatusOK
			})
			// A revocation through another replica reaches it by its watch.
			laterAcked := top.revokeRetrying(t, 2, session, later, 5*time.Second)
			laterDenied := waitFor(t, "the replica denies a token revoked through another replica", 5*time.Second, func() bool {
				d := top.decide(context.Background(), cut, later)
				return d.status == http.StatusUnauthorized || d.status == http.StatusForbidden
			})
			time.Sleep(time.Until(partitioned.Add(cutFor)))
			failedOver := ready
			pt.links[cut][m].Heal()
			time.Sleep(500 * time.Millisecond)
			history := load.stop()

			mine := where(history, func(d tokenDecision) bool { return d.replica == cut })
			var victimDenied time.Time
			for _, d := range mine {
				denied := d.status == http.StatusUnauthorized || d.status == http.StatusForbidden
				if d.token == "victim" && denied && d.start.After(acked) && victimDenied.IsZero() {
					victimDenied = d.end
				}
			}
			unavailable := where(mine, func(d tokenDecision) bool { return d.status == http.StatusServiceUnavailable })
			t.Logf("cut off from member %s for %v: left out %v and ready through the others %v after the cut; revoked token denied %v after the acknowledgement; token revoked through another replica after the fail-over denied within %v; %d decisions, %d 503 (last sent %v after the cut), slowest %v",
				member.Name, cutFor, leftOut.Sub(partitioned).Round(time.Millisecond), failedOver.Sub(partitioned).Round(time.Millisecond), victimDenied.Sub(acked).Round(time.Millisecond),
				laterDenied.Sub(laterAcked).Round(time.Millisecond), len(mine), len(unavailable), after(partitioned, lastStart(unavailable)),
				slowest(mine).Round(time.Millisecond))

			if victimDenied.IsZero() {
				t.Errorf("member %s cut: the revoked token was never denied", member.Name)
			}
			if laterDenied.Sub(laterAcked) > time.Second {
				t.Errorf("member %s cut: a revocation through another replica took %v to reach the failed-over replica", member.Name, laterDenied.Sub(laterAcked))
			}
			deniedAt := map[string]time.Time{}
			for _, d := range mine {
				revokedAt := acked
				if d.token == "later" {
					revokedAt = laterAcked
				}
				switch {
				case d.status == 0:
					t.Errorf("member %s cut: a %s decision got no answer within the client's %v", member.Name, d.token, top.client.Timeout)
				case d.token != "valid" && d.allowed() && d.start.After(revokedAt.Add(staleBound)):
					// By then the watch delivered the revocation or was
					// distrusted.
					t.Errorf("member %s cut: the revoked %s token was allowed by a request sent %v after the acknowledgement", member.Name, d.token, d.start.Sub(revokedAt).Round(time.Millisecond))
				case d.token != "valid" && d.allowed() && !deniedAt[d.token].IsZero() && d.start.After(deniedAt[d.token]):
					t.Errorf("member %s cut: the revoked %s token was allowed again %v after the replica had denied it", member.Name, d.token, d.start.Sub(deniedAt[d.token]).Round(time.Millisecond))
				case d.token != "valid" && !d.allowed() && d.start.After(revokedAt) && deniedAt[d.token].IsZero():
					deniedAt[d.token] = d.end
				case d.token == "valid" && !d.allowed() && d.status != http.StatusServiceUnavailable:
					t.Errorf("member %s cut: the valid token got %d", member.Name, d.status)
				case d.token == "valid" && !d.allowed() && d.start.After(failedOver):
					t.Errorf("member %s cut: the valid token got %d %v after the replica had failed over", member.Name, d.status, d.start.Sub(failedOver).Round(time.Millisecond))
				}
			}
			if s := slowest(mine); s > decisionBound {
				t.Errorf("member %s cut: a decision took %v, want ≤ %v", member.Name, s, decisionBound)
			}
			waitFor(t, "the replica is ready after the heal", 10*time.Second, func() bool { return top.readyz(cut) == http.StatusOK })
		}
	})
}

// after says how long after t0 t was, or "never" for a zero t.
func after(t0, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Sub(t0).Round(time.Millisecond).String()
}

func lastStart(h []tokenDecision) time.Time {
	if len(h) == 0 {
		return time.Time{}
	}
	return h[len(h)-1].start
}

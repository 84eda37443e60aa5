package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis/portcullis/store/etcdtest"
)

// The reliability suite runs real processes on loopback: a 3-member etcd
// cluster (Debian's etcd-server) and 3 Portcullis replicas pointed at it.
// The default run keeps short versions; PORTCULLIS_RELIABILITY_LONG=1 runs
// the long ones that docs/RELIABILITY.md reports, and
// PORTCULLIS_RELIABILITY_REPORT=<file> writes the figures as JSON.

func reliabilityLong() bool { return os.Getenv("PORTCULLIS_RELIABILITY_LONG") == "1" }

// topology is an etcd cluster and the replicas using it.
type topology struct {
	etcd     *etcdtest.Cluster
	replicas []*replica
	admin    string // the admin's session token
	client   *http.Client
}

type replica struct {
	api, metrics string
	stop         func()
	logs         *etcdtest.SyncBuffer
}

const reliabilityAdminPassword = "reliability-admin-password"

func startTopology(t *testing.T, members, replicas int) *topology {
	t.Helper()
	c := etcdtest.StartCluster(t, members)
	top := &topology{etcd: c, client: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxIdleConns: 256},
	}}
	t.Cleanup(top.client.CloseIdleConnections)
	eps := strings.Join(c.Endpoints(), ",")
	for range replicas {
		api, metrics, logs, stop := startServe(t, "--etcd-endpoints", eps, "--admin-password", reliabilityAdminPassword, "--bcrypt-cost", "10")
		top.replicas = append(top.replicas, &replica{api: api, metrics: metrics, stop: stop, logs: logs})
	}
	top.admin = top.login(t, 0, "admin", reliabilityAdminPassword)
	return top
}

// call sends one API request to a replica and decodes a JSON answer into
// out (when not nil); any status but want fails the test.
func (top *topology) call(t *testing.T, r int, method, path, bearer string, body any, want int, out any) {
	t.Helper()
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case url.Values:
		rd, ctype = strings.NewReader(b.Encode()), "application/x-www-form-urlencoded"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd, ctype = bytes.NewReader(j), "application/json"
	}
	req, err := http.NewRequest(method, "http://"+top.replicas[r].api+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := top.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

func (top *topology) login(t *testing.T, r int, user, password string) string {
	t.Helper()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	top.call(t, r, "POST", "/auth/oauth/token", "", url.Values{"grant_type": {"password"}, "username": {user}, "password": {password}}, 200, &tok)
	return tok.AccessToken
}

// readerUser creates the user name (password name+"-password") holding the
// checked permission directly, and returns its id.
func (top *topology) readerUser(t *testing.T, name string) string {
	t.Helper()
	var u struct {
		ID string `json:"id"`
	}
	top.call(t, 0, "POST", "/users", top.admin, map[string]any{"username": name, "password": name + "-password"}, 200, &u)
	top.call(t, 0, "POST", "/auth/permissions?"+url.Values{"resource_name": {"users/" + u.ID}, "permission": {checkedPermission}}.Encode(), top.admin, nil, 204, nil)
	return u.ID
}

// checkedPermission is what every decision of the suite asks for.
const checkedPermission = "projects/reliability#read"

var forwardPath = "/auth/forward?permission=" + url.QueryEscape(checkedPermission)

// decision is one forward-auth request as the client saw it.
type decision struct {
	replica    int
	start, end time.Time
	status     int // 0: transport error
}

func (d decision) allowed() bool { return d.status == http.StatusOK }

// decide asks replica r whether bearer may read the checked permission.
func (top *topology) decide(ctx context.Context, r int, bearer string) decision {
	d := decision{replica: r, start: time.Now()}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+top.replicas[r].api+forwardPath, nil)
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := top.client.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d.status = resp.StatusCode
	}
	d.end = time.Now()
	return d
}

// A revocation is a write that takes the checked permission away from one
// token.
type revocation struct {
	kind string
	// token is what the pollers present; prepare makes it and the state
	// the write will undo.
	prepare func(t *testing.T, top *topology, i int) (token string, write func(t *testing.T, r int))
}

// revocations are the writes the issue names: revoke tokens (API and
// session), remove grants, disable users, change roles.
func revocations() []revocation {
	user := func(t *testing.T, top *topology, name string) string {
		var u struct {
			ID string `json:"id"`
		}
		top.call(t, 0, "POST", "/users", top.admin, map[string]any{"username": name, "password": name + "-password"}, 200, &u)
		return u.ID
	}
	grant := func(t *testing.T, top *topology, resource, permission string) {
		top.call(t, 0, "POST", "/auth/permissions?"+url.Values{"resource_name": {resource}, "permission": {permission}}.Encode(), top.admin, nil, 204, nil)
	}
	ungrant := func(t *testing.T, top *topology, r int, resource, permission string) {
		top.call(t, r, "DELETE", "/auth/permissions?"+url.Values{"resource_name": {resource}, "permission": {permission}}.Encode(), top.admin, nil, 204, nil)
	}
	apiToken := func(t *testing.T, top *topology, session string) string {
		var tok string
		top.call(t, 0, "POST", "/auth/tokens?"+url.Values{"token_type": {"api-token"}, "scope": {checkedPermission}}.Encode(), session, nil, 200, &tok)
		return tok
	}
	revoke := func(t *testing.T, top *topology, r int, caller, token string) {
		top.call(t, r, "POST", "/auth/oauth/revoke", caller, url.Values{"token": {token}}, 200, nil)
	}
	// granted makes a user holding the checked permission directly and
	// returns its id and a session token.
	granted := func(t *testing.T, top *topology, kind string, i int) (string, string) {
		name := fmt.Sprintf("%s-%d", kind, i)
		return top.readerUser(t, name), top.login(t, 0, name, name+"-password")
	}
	return []revocation{
		{kind: "revoke API token", prepare: func(t *testing.T, top *topology, i int) (string, func(*testing.T, int)) {
			_, session := granted(t, top, "apitoken", i)
			tok := apiToken(t, top, session)
			return tok, func(t *testing.T, r int) { revoke(t, top, r, session, tok) }
		}},
		{kind: "revoke session", prepare: func(t *testing.T, top *topology, i int) (string, func(*testing.T, int)) {
			_, session := granted(t, top, "session", i)
			return session, func(t *testing.T, r int) { revoke(t, top, r, session, session) }
		}},
		{kind: "remove grant", prepare: func(t *testing.T, top *topology, i int) (string, func(*testing.T, int)) {
			id, session := granted(t, top, "grant", i)
			tok := apiToken(t, top, session)
			return tok, func(t *testing.T, r int) { ungrant(t, top, r, "users/"+id, checkedPermission) }
		}},
		{kind: "disable user", prepare: func(t *testing.T, top *topology, i int) (string, func(*testing.T, int)) {
			id, session := granted(t, top, "disable", i)
			tok := apiToken(t, top, session)
			return tok, func(t *testing.T, r int) {
				top.call(t, r, "PATCH", "/users/"+id, top.admin, map[string]any{"disabled": true}, 200, nil)
			}
		}},
		{kind: "change role", prepare: func(t *testing.T, top *topology, i int) (string, func(*testing.T, int)) {
			// The permission comes through a role; the write takes it
			// out of the role, not off the user.
			name := fmt.Sprintf("role-%d", i)
			id := user(t, top, name)
			role := "roles/reliability-" + name
			grant(t, top, role, checkedPermission)
			grant(t, top, "users/"+id, role)
			tok := apiToken(t, top, top.login(t, 0, name, name+"-password"))
			return tok, func(t *testing.T, r int) { ungrant(t, top, r, role, checkedPermission) }
		}},
	}
}

// eventResult is one revocation observed on every replica.
type eventResult struct {
	Kind     string `json:"kind"`
	Writer   int    `json:"writer"`
	WriteMs  float64
	acked    time.Time
	history  []decision
	Lag      []float64 `json:"lag_ms"` // per replica; the writer's too
	Problems []string  `json:"problems,omitempty"`
}

// observe polls one token on every replica while write runs through
// replica w, until every replica has denied it steadily (or a deadline).
func (top *topology) observe(t *testing.T, kind, token string, w int, write func(*testing.T, int)) eventResult {
	t.Helper()
	const pollersPerReplica = 2
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var history []decision
	var wg sync.WaitGroup
	for r := range top.replicas {
		for range pollersPerReplica {
			wg.Go(func() {
				for ctx.Err() == nil {
					d := top.decide(ctx, r, token)
					if ctx.Err() != nil {
						return
					}
					mu.Lock()
					history = append(history, d)
					mu.Unlock()
				}
			})
		}
	}
	// Every replica allows before the write.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		seen := map[int]bool{}
		for _, d := range history {
			if d.allowed() {
				seen[d.replica] = true
			}
		}
		mu.Unlock()
		if len(seen) == len(top.replicas) {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			wg.Wait()
			t.Fatalf("%s: not every replica allowed the token before the write", kind)
		}
		time.Sleep(5 * time.Millisecond)
	}
	writeStart := time.Now()
	write(t, w)
	acked := time.Now()
	// Poll on until each replica has denied for a while, at most 2 s.
	stable := 50 * time.Millisecond
	for time.Since(acked) < 2*time.Second {
		time.Sleep(10 * time.Millisecond)
		mu.Lock()
		done := true
		for r := range top.replicas {
			if lastAllowEnd(history, r).After(time.Now().Add(-stable)) || !deniedSince(history, r, acked) {
				done = false
			}
		}
		mu.Unlock()
		if done && time.Since(acked) > stable {
			break
		}
	}
	cancel()
	wg.Wait()
	res := eventResult{Kind: kind, Writer: w, WriteMs: ms(acked.Sub(writeStart)), acked: acked, history: history}
	res.check(len(top.replicas))
	return res
}

func lastAllowEnd(h []decision, r int) time.Time {
	var last time.Time
	for _, d := range h {
		if d.replica == r && d.allowed() && d.end.After(last) {
			last = d.end
		}
	}
	return last
}

func deniedSince(h []decision, r int, since time.Time) bool {
	for _, d := range h {
		if d.replica == r && !d.allowed() && d.status != 0 && d.start.After(since) {
			return true
		}
	}
	return false
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// check reads the history as a checker of the revocation's guarantees:
//   - lag: for each replica, from the write's acknowledgement to the end of
//     the first request of the final run of denials (an upper bound on when
//     it started denying; 0 when it already denied at the acknowledgement);
//   - no allow that contradicts an acknowledged write: none on the writing
//     replica for a request sent after the acknowledgement, none anywhere
//     after that replica had already denied (no flip back), none after the
//     2 s the observation lasts;
//   - no errors: a denial is 401 or 403, never a 5xx or a broken connection.
func (res *eventResult) check(replicas int) {
	slices.SortFunc(res.history, func(a, b decision) int { return a.start.Compare(b.start) })
	for r := range replicas {
		var firstFinalDeny *decision
		deniedAt := time.Time{}
		for i := range res.history {
			d := &res.history[i]
			if d.replica != r {
				continue
			}
			switch {
			case d.status == 0 || d.status >= 500:
				res.Problems = append(res.Problems, fmt.Sprintf("replica %d: status %d", r, d.status))
			case d.allowed():
				firstFinalDeny = nil
				if r == res.Writer && d.start.After(res.acked) {
					res.Problems = append(res.Problems, fmt.Sprintf("replica %d (the writer) allowed a request sent %.1f ms after the write was acknowledged", r, ms(d.start.Sub(res.acked))))
				}
				if !deniedAt.IsZero() && d.start.After(deniedAt) && d.start.After(res.acked) {
					res.Problems = append(res.Problems, fmt.Sprintf("replica %d allowed again %.1f ms after the acknowledgement, having denied", r, ms(d.start.Sub(res.acked))))
				}
			default:
				if firstFinalDeny == nil {
					firstFinalDeny = d
				}
				if d.start.After(res.acked) && deniedAt.IsZero() {
					deniedAt = d.end
				}
			}
		}
		if firstFinalDeny == nil {
			res.Problems = append(res.Problems, fmt.Sprintf("replica %d never denied", r))
			res.Lag = append(res.Lag, -1)
			continue
		}
		res.Lag = append(res.Lag, max(0, ms(firstFinalDeny.end.Sub(res.acked))))
	}
}

// steadyLoad keeps every replica busy with a token that stays valid, so
// revocations are measured under load; it reports what it saw.
type steadyLoad struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	ok, bad int
	badSeen []int
	started time.Time
	stopped time.Time
}

func (top *topology) startLoad(token string, perReplica int) *steadyLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &steadyLoad{cancel: cancel, started: time.Now()}
	for r := range top.replicas {
		for range perReplica {
			l.wg.Go(func() {
				for ctx.Err() == nil {
					d := top.decide(ctx, r, token)
					if ctx.Err() != nil {
						return
					}
					l.mu.Lock()
					if d.allowed() {
						l.ok++
					} else {
						l.bad++
						if len(l.badSeen) < 10 {
							l.badSeen = append(l.badSeen, d.status)
						}
					}
					l.mu.Unlock()
				}
			})
		}
	}
	return l
}

func (l *steadyLoad) stop() {
	l.cancel()
	l.wg.Wait()
	l.stopped = time.Now()
}

func (l *steadyLoad) rate() float64 {
	return float64(l.ok+l.bad) / l.stopped.Sub(l.started).Seconds()
}

// percentile of sorted values, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// TestRevocationPropagation revokes tokens, removes grants, disables users
// and changes roles through one replica while all three are under load,
// and measures when each replica starts denying. Required: p99 ≤ 100 ms
// over the other replicas, no allow on the writing replica after the
// acknowledgement, no allow contradicting an acknowledged write anywhere.
func TestRevocationPropagation(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	top := startTopology(t, 3, 3)
	rounds := 4
	if reliabilityLong() {
		rounds = 40
	}
	// The steady load's token belongs to a user whose grant never changes.
	top.readerUser(t, "steady")
	load := top.startLoad(top.login(t, 0, "steady", "steady-password"), 3)

	var results []eventResult
	kinds := revocations()
	for i := range rounds {
		for k, rv := range kinds {
			token, write := rv.prepare(t, top, i)
			w := (i + k) % len(top.replicas)
			results = append(results, top.observe(t, rv.kind, token, w, write))
		}
	}
	load.stop()

	var others, all []float64
	problems := 0
	perKind := map[string][]float64{}
	for _, res := range results {
		for r, lag := range res.Lag {
			if lag < 0 {
				continue
			}
			all = append(all, lag)
			if r != res.Writer {
				others = append(others, lag)
				perKind[res.Kind] = append(perKind[res.Kind], lag)
			}
		}
		for _, p := range res.Problems {
			problems++
			t.Errorf("%s via replica %d: %s", res.Kind, res.Writer, p)
		}
	}
	slices.Sort(others)
	slices.Sort(all)
	decisions := 0
	for _, res := range results {
		decisions += len(res.history)
	}
	t.Logf("%d revocations, %d decisions checked, %d problems; steady load %.0f req/s over 3 replicas, %d non-200", len(results), decisions, problems, load.rate(), load.bad)
	t.Logf("lag to denial on the other replicas: p50 %.1f ms, p99 %.1f ms, max %.1f ms (n=%d)", percentile(others, .5), percentile(others, .99), percentile(others, 1), len(others))
	for _, rv := range kinds {
		l := perKind[rv.kind]
		slices.Sort(l)
		t.Logf("  %-17s p50 %.1f ms, max %.1f ms", rv.kind, percentile(l, .5), percentile(l, 1))
	}
	if load.bad > 0 {
		t.Errorf("steady load: %d of %d decisions were not 200 (first statuses %v)", load.bad, load.ok+load.bad, load.badSeen)
	}
	if p99 := percentile(others, .99); p99 > 100 {
		t.Errorf("revocation propagation p99 = %.1f ms, want ≤ 100 ms", p99)
	}
	writeReport(t, "revocation_propagation", map[string]any{
		"revocations": len(results), "decisions": decisions, "problems": problems,
		"steady_load_rps": load.rate(), "steady_load_non_200": load.bad,
		"lag_ms_other_replicas": map[string]float64{"p50": percentile(others, .5), "p99": percentile(others, .99), "max": percentile(others, 1)},
		"events":                results,
	})
}

// writeReport adds a section to the JSON report named by
// PORTCULLIS_RELIABILITY_REPORT, if set.
func writeReport(t *testing.T, name string, v any) {
	path := os.Getenv("PORTCULLIS_RELIABILITY_REPORT")
	if path == "" {
		return
	}
	report := map[string]json.RawMessage{}
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &report)
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	report[name] = b
	out, _ := json.MarshalIndent(report, "", "  ")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRevocationChecker feeds the checker histories with known faults, so
// that a clean report of the suite means something.
func TestRevocationChecker(t *testing.T) {
	t0 := time.Now()
	at := func(r int, fromMs, toMs float64, status int) decision {
		return decision{replica: r, start: t0.Add(time.Duration(fromMs * float64(time.Millisecond))), end: t0.Add(time.Duration(toMs * float64(time.Millisecond))), status: status}
	}
	acked := t0.Add(10 * time.Millisecond)
	for _, c := range []struct {
		name     string
		history  []decision
		lag      []float64
		problems int
	}{
		{"clean", []decision{at(0, 0, 1, 200), at(0, 11, 12, 401), at(1, 5, 6, 200), at(1, 14, 15, 200), at(1, 16, 18, 403), at(1, 19, 20, 403)}, []float64{2, 8}, 0},
		{"writer allows after the acknowledgement", []decision{at(0, 11, 12, 200), at(0, 13, 14, 401), at(1, 11, 12, 401)}, []float64{4, 2}, 1},
		{"replica flips back to allow", []decision{at(0, 11, 12, 401), at(1, 11, 12, 401), at(1, 13, 14, 200), at(1, 15, 16, 401)}, []float64{2, 6}, 1},
		{"replica never denies", []decision{at(0, 11, 12, 401), at(1, 11, 12, 200)}, []float64{2, -1}, 1},
		{"server error is a problem", []decision{at(0, 11, 12, 401), at(1, 11, 12, 503), at(1, 13, 14, 403)}, []float64{2, 4}, 1},
		{"already denying at the acknowledgement", []decision{at(0, 1, 2, 401), at(1, 3, 4, 401), at(1, 12, 13, 401)}, []float64{0, 0}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := eventResult{Writer: 0, acked: acked, history: c.history}
			res.check(2)
			if len(res.Problems) != c.problems {
				t.Errorf("problems %q, want %d", res.Problems, c.problems)
			}
			if !slices.Equal(res.Lag, c.lag) {
				t.Errorf("lag %v, want %v", res.Lag, c.lag)
			}
		})
	}
}

// writeRetrying runs a write until it is acknowledged, as a client facing a
// store fault would: a 5xx means the write may not have happened, and the
// test needs it to happen. It returns when the last try was acknowledged.
func (top *topology) revokeRetrying(t *testing.T, r int, caller, token string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		req, _ := http.NewRequest("POST", "http://"+top.replicas[r].api+"/auth/oauth/revoke", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+caller)
		resp, err := top.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return time.Now()
			}
			if resp.StatusCode < 500 {
				t.Fatalf("revoke: status %d", resp.StatusCode)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("revoke not acknowledged within %v (last: %v)", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMemberPauseNoStaleAllow freezes each etcd member in turn (SIGSTOP), as
// a hung host would, and revokes a token through a replica. A replica whose
// watch stream was on the frozen member hears nothing: it must notice and
// stop trusting its caches, so that every replica denies the revoked token
// within a bound, and no request hangs.
func TestMemberPauseNoStaleAllow(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	top := startTopology(t, 3, 3)
	top.readerUser(t, "paused")
	const bound = 5 * time.Second
	for i, m := range top.etcd.Members() {
		session := top.login(t, 0, "paused", "paused-password")
		var tok string
		top.call(t, 0, "POST", "/auth/tokens?"+url.Values{"token_type": {"api-token"}, "scope": {checkedPermission}}.Encode(), session, nil, 200, &tok)
		// Warm every replica's caches with an allow.
		for r := range top.replicas {
			if d := top.decide(context.Background(), r, tok); !d.allowed() {
				t.Fatalf("replica %d: status %d before the pause", r, d.status)
			}
		}
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		w := i % len(top.replicas)
		acked := top.revokeRetrying(t, w, session, tok, 20*time.Second)
		var slowest time.Duration
		for r := range top.replicas {
			var deniedAfter time.Duration = -1
			for time.Since(acked) < bound+2*time.Second {
				d := top.decide(context.Background(), r, tok)
				slowest = max(slowest, d.end.Sub(d.start))
				if d.status == 401 || d.status == 403 {
					deniedAfter = d.end.Sub(acked)
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("member %s paused, revoke via replica %d: replica %d denies %.0f ms after the acknowledgement", m.Name, w, r, ms(deniedAfter))
			if deniedAfter < 0 || deniedAfter > bound {
				t.Errorf("member %s paused: replica %d still allowed (or failed) the revoked token %v after the acknowledgement", m.Name, r, bound)
			}
		}
		if slowest > 6*time.Second {
			t.Errorf("member %s paused: a decision took %v", m.Name, slowest)
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := m.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
}

// faultLoad drives every replica with a token that must be allowed and one
// that must not (revoked before the fault), classifying every answer.
type faultLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	// wrongAllows are 200s for the revoked token: never acceptable.
	wrongAllows int
	// validOK, validUnavailable, validOther count the valid token's
	// answers: 200, 503, anything else (a hang shows as a transport error).
	validOK, validUnavailable, validOther int
	slowest                               time.Duration
	lastFailure                           time.Time
	others                                []int
}

func (top *topology) startFaultLoad(valid, revoked string) *faultLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &faultLoad{cancel: cancel}
	for r := range top.replicas {
		for range 2 {
			l.wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					tok := valid
					if i%2 == 1 {
						tok = revoked
					}
					d := top.decide(ctx, r, tok)
					if ctx.Err() != nil {
						return
					}
					l.mu.Lock()
					l.slowest = max(l.slowest, d.end.Sub(d.start))
					switch {
					case tok == revoked && d.allowed():
						l.wrongAllows++
					case tok == revoked:
					case d.allowed():
						l.validOK++
					case d.status == http.StatusServiceUnavailable:
						l.validUnavailable++
						l.lastFailure = d.end
					default:
						l.validOther++
						l.lastFailure = d.end
						if len(l.others) < 10 {
							l.others = append(l.others, d.status)
						}
					}
					l.mu.Unlock()
					time.Sleep(2 * time.Millisecond)
				}
			})
		}
	}
	return l
}

func (l *faultLoad) stop() {
	l.cancel()
	l.wg.Wait()
}

func (l *faultLoad) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("valid token: %d allowed, %d 503, %d other %v; revoked token allowed %d times; slowest decision %v",
		l.validOK, l.validUnavailable, l.validOther, l.others, l.wrongAllows, l.slowest.Round(time.Millisecond))
}

// readyz reports a replica's /readyz status (0 when it does not answer).
func (top *topology) readyz(r int) int {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + top.replicas[r].metrics + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitAll polls until cond holds for every replica or the bound passes, and
// returns how long it took.
func (top *topology) waitAll(t *testing.T, what string, bound time.Duration, cond func(r int) bool) time.Duration {
	t.Helper()
	start := time.Now()
	for r := range top.replicas {
		for !cond(r) {
			if time.Since(start) > bound {
				t.Fatalf("%s: replica %d not there after %v", what, r, bound)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return time.Since(start)
}

// TestStoreFaults kills the etcd leader under load and restarts it, then
// stops the whole cluster and brings it back. At no point may the revoked
// token be allowed; decisions fail closed (503) in bounded time, writes
// fail with 5xx while the store is gone, /readyz follows the store, and
// everything recovers without restarting Portcullis.
func TestStoreFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	top := startTopology(t, 3, 3)
	userID := top.readerUser(t, "faults")
	session := top.login(t, 0, "faults", "faults-password")
	mint := func() string {
		var tok string
		top.call(t, 0, "POST", "/auth/tokens?"+url.Values{"token_type": {"api-token"}, "scope": {checkedPermission}}.Encode(), session, nil, 200, &tok)
		return tok
	}
	valid, revoked := mint(), mint()
	top.revokeRetrying(t, 0, session, revoked, 5*time.Second)
	time.Sleep(100 * time.Millisecond)

	t.Run("leader killed and restarted", func(t *testing.T) {
		load := top.startFaultLoad(valid, revoked)
		time.Sleep(500 * time.Millisecond)
		leader, err := top.etcd.Leader(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		leader.Kill()
		time.Sleep(2 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := top.etcd.Restart(ctx, leader); err != nil {
			t.Fatalf("restart %s: %v\n%s", leader.Name, err, leader.Log())
		}
		time.Sleep(2 * time.Second)
		load.stop()
		recovered := "no failed decision"
		if !load.lastFailure.IsZero() {
			recovered = fmt.Sprintf("last failed decision %v after the kill", load.lastFailure.Sub(killed).Round(time.Millisecond))
		}
		t.Logf("leader %s killed: %s; %s", leader.Name, load, recovered)
		if load.wrongAllows > 0 {
			t.Errorf("the revoked token was allowed %d times", load.wrongAllows)
		}
		if load.validOther > 0 {
			t.Errorf("decisions other than 200 or 503: %v", load.others)
		}
		if load.slowest > 6*time.Second {
			t.Errorf("a decision took %v", load.slowest)
		}
	})

	t.Run("whole cluster stopped and restarted", func(t *testing.T) {
		outage := 5 * time.Second
		if reliabilityLong() {
			outage = 30 * time.Second
		}
		load := top.startFaultLoad(valid, revoked)
		time.Sleep(500 * time.Millisecond)
		stopped := time.Now()
		for _, m := range top.etcd.Members() {
			m.Kill()
		}
		notReady := top.waitAll(t, "/readyz 503 with the store gone", 10*time.Second, func(r int) bool { return top.readyz(r) == http.StatusServiceUnavailable })
		// A write with the store gone fails with a 5xx, in bounded time.
		probe := "users/" + userID
		writeStart := time.Now()
		req, _ := http.NewRequest("POST", "http://"+top.replicas[1].api+"/auth/permissions?"+url.Values{"resource_name": {probe}, "permission": {"projects/outage#read"}}.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+top.admin)
		resp, err := top.client.Do(req)
		writeTook := time.Since(writeStart)
		writeStatus := 0
		if err == nil {
			resp.Body.Close()
			writeStatus = resp.StatusCode
		}
		if writeStatus < 500 {
			t.Errorf("a write with the store gone answered %d (err %v), want a 5xx", writeStatus, err)
		}
		if writeTook > 15*time.Second {
			t.Errorf("the write took %v to fail", writeTook)
		}
		time.Sleep(time.Until(stopped.Add(outage)))
		var wg sync.WaitGroup
		errs := make([]error, len(top.etcd.Members()))
		for i, m := range top.etcd.Members() {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				errs[i] = top.etcd.Restart(ctx, m)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		ready := top.waitAll(t, "/readyz 200 after the store returned", 30*time.Second, func(r int) bool { return top.readyz(r) == http.StatusOK })
		deciding := top.waitAll(t, "allow after the store returned", 30*time.Second, func(r int) bool {
			return top.decide(context.Background(), r, valid).allowed()
		})
		load.stop()
		// The failed write must not have happened behind our back.
		var perms []string
		top.call(t, 0, "GET", "/auth/permissions?"+url.Values{"resource_name": {probe}}.Encode(), top.admin, nil, 200, &perms)
		if slices.Contains(perms, "projects/outage#read") {
			t.Errorf("the write reported as %d is in the store after all", writeStatus)
		}
		t.Logf("cluster stopped %v: /readyz 503 after %v; write failed with %d after %v; after restart /readyz 200 within %v, decisions within %v; %s",
			outage, notReady.Round(time.Millisecond), writeStatus, writeTook.Round(time.Millisecond), ready.Round(time.Millisecond), deciding.Round(time.Millisecond), load)
		if load.wrongAllows > 0 {
			t.Errorf("the revoked token was allowed %d times", load.wrongAllows)
		}
		if load.validOther > 0 {
			t.Errorf("decisions other than 200 or 503: %v", load.others)
		}
		if load.slowest > 6*time.Second {
			t.Errorf("a decision took %v (want a bounded 503)", load.slowest)
		}
	})
}

// TestCrashDuringWriteStorm SIGKILLs a replica on the embedded etcd while
// it is busy with writes, restarts it on the same data directory, and
// checks that every acknowledged write is there and nothing is
// half-written: each user has its default grants, each grant is found
// from both sides (the resource's grants and the reverse index), each
// acknowledged token verifies.
func TestCrashDuringWriteStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--admin-password", reliabilityAdminPassword, "--bcrypt-cost", "10"}
	p := startServeProcess(t, args...)
	top := &topology{replicas: []*replica{{api: p.api, metrics: p.metrics}}, client: &http.Client{Timeout: 10 * time.Second}}
	top.admin = top.login(t, 0, "admin", reliabilityAdminPassword)

	type acked struct {
		users  map[string]string // id → username
		grants map[string]string // resource → permission
		tokens []string
	}
	var mu sync.Mutex
	got := acked{users: map[string]string{}, grants: map[string]string{}}
	// send is one write; only a 2xx counts as acknowledged.
	send := func(method, path string, body any) (int, []byte) {
		var rd io.Reader
		if body != nil {
			j, _ := json.Marshal(body)
			rd = bytes.NewReader(j)
		}
		req, _ := http.NewRequest(method, "http://"+p.api+path, rd)
		req.Header.Set("Authorization", "Bearer "+top.admin)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := top.client.Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("storm-%d-%d", g, i)
				if st, b := send("POST", "/users", map[string]any{"username": name, "password": name + "-password"}); st == 200 {
					var u struct {
						ID string `json:"id"`
					}
					if json.Unmarshal(b, &u) == nil {
						mu.Lock()
						got.users[u.ID] = name
						mu.Unlock()
					}
				}
				res, perm := "users/storm-"+name, "projects/storm-"+name+"#read"
				if st, _ := send("POST", "/auth/permissions?"+url.Values{"resource_name": {res}, "permission": {perm}}.Encode(), nil); st == 204 {
					mu.Lock()
					got.grants[res] = perm
					mu.Unlock()
				}
				if st, b := send("POST", "/auth/tokens?"+url.Values{"token_type": {"api-token"}, "scope": {perm}}.Encode(), nil); st == 200 {
					var tok string
					if json.Unmarshal(b, &tok) == nil {
						mu.Lock()
						got.tokens = append(got.tokens, tok)
						mu.Unlock()
					}
				}
			}
		})
	}
	time.Sleep(2 * time.Second)
	p.kill()
	cancel()
	wg.Wait()
	mu.Lock()
	t.Logf("acknowledged before the kill: %d users, %d grants, %d tokens", len(got.users), len(got.grants), len(got.tokens))
	mu.Unlock()
	if len(got.users) == 0 || len(got.grants) == 0 || len(got.tokens) == 0 {
		t.Fatal("the storm acknowledged nothing before the kill: nothing to check")
	}

	p = startServeProcess(t, args...)
	top.replicas[0] = &replica{api: p.api, metrics: p.metrics}
	top.admin = top.login(t, 0, "admin", reliabilityAdminPassword)
	for id, name := range got.users {
		var u struct {
			Username string `json:"username"`
		}
		top.call(t, 0, "GET", "/users/"+id, top.admin, nil, 200, &u)
		if u.Username != name {
			t.Errorf("user %s: username %q, want %q", id, u.Username, name)
		}
	}
	for res, perm := range got.grants {
		var perms []string
		top.call(t, 0, "GET", "/auth/permissions?"+url.Values{"resource_name": {res}}.Encode(), top.admin, nil, 200, &perms)
		if !slices.Contains(perms, perm) {
			t.Errorf("acknowledged grant %s on %s is gone", perm, res)
		}
	}
	for _, tok := range got.tokens {
		body, _ := json.Marshal(tok)
		req, _ := http.NewRequest("POST", "http://"+p.api+"/auth/tokens/verify", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := top.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("acknowledged token no longer verifies: %d", resp.StatusCode)
		}
	}
	// Nothing half-written, acknowledged or not: every user that exists
	// has its default grants, and every storm grant is found from both
	// sides.
	var users []struct {
		ID       string `json:"id"`
		Username string `json:"username"`
	}
	top.call(t, 0, "GET", "/users", top.admin, nil, 200, &users)
	for _, u := range users {
		if !strings.HasPrefix(u.Username, "storm-") {
			continue
		}
		var perms []string
		top.call(t, 0, "GET", "/auth/permissions?"+url.Values{"resource_name": {"users/" + u.ID}, "resolve_roles": {"false"}}.Encode(), top.admin, nil, 200, &perms)
		if !slices.Contains(perms, "users/"+u.ID+"#admin") || !slices.Contains(perms, "roles/user") {
			t.Errorf("user %s (%s) exists without its default grants: %q", u.ID, u.Username, perms)
		}
		res := "users/storm-" + u.Username
		var grants []string
		top.call(t, 0, "GET", "/auth/permissions?"+url.Values{"resource_name": {res}}.Encode(), top.admin, nil, 200, &grants)
		for _, perm := range grants {
			var holders []string
			top.call(t, 0, "GET", "/auth/resources?"+url.Values{"permission": {perm}}.Encode(), top.admin, nil, 200, &holders)
			if !slices.Contains(holders, res) {
				t.Errorf("grant %s on %s is missing from the reverse index: %q", perm, res, holders)
			}
		}
	}
}

// TestGracefulRestartUnderLoad restarts each of two replicas in turn
// (SIGTERM, wait for exit 0, start again) while clients keep sending
// authorised requests through the proxy, moving to the other replica when
// its /readyz turns 503 or a connection is refused, as a load balancer
// would. No request that
// a replica accepted may be lost: every answer is the upstream's 200, and
// the only errors are refused connections.
func TestGracefulRestartUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("reliability suite: not in -short")
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // requests are in flight when the signal lands
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(up.Close)
	c := etcdtest.StartCluster(t, 1)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "portcullis.yaml")
	if err := os.WriteFile(cfg, []byte("upstream: "+up.URL+"\nroutes:\n  - path: /app/**\n    permission: 'apps#{level}'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", cfg, "--etcd-endpoints", strings.Join(c.Endpoints(), ","), "--admin-password", reliabilityAdminPassword,
		"--bcrypt-cost", "10", "--shutdown-delay", "1s", "--shutdown-grace-period", "10s"}
	replicas := make([]*proc, 2)
	var mu sync.RWMutex
	for i := range replicas {
		replicas[i] = launch(t, args...)
		replicas[i].waitReady(t, http.DefaultClient, "http")
	}
	token := passwordLogin(t, "http://"+replicas[0].api, "admin", reliabilityAdminPassword)

	var ok, refused, lost atomic.Int64
	var firstLost atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// A load balancer polls readiness: a replica whose /readyz says 503
	// (from SIGTERM on, for shutdown_delay) gets no new requests. Without
	// this, a connection still in the listen backlog when the listener
	// closes is reset, a request no server ever read.
	var draining [2]atomic.Bool
	probe := &http.Client{Timeout: time.Second}
	wg.Go(func() {
		for ctx.Err() == nil {
			for i := range draining {
				mu.RLock()
				metrics := replicas[i].metrics
				mu.RUnlock()
				resp, err := probe.Get("http://" + metrics + "/readyz")
				ready := err == nil && resp.StatusCode == 200
				if err == nil {
					resp.Body.Close()
				}
				draining[i].Store(!ready)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for w := range 8 {
		wg.Go(func() {
			target := w % 2
			for ctx.Err() == nil {
				if draining[target].Load() && !draining[1-target].Load() {
					target = 1 - target
				}
				mu.RLock()
				api := replicas[target].api
				mu.RUnlock()
				req, _ := http.NewRequest("GET", "http://"+api+"/app/x", nil)
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := client.Do(req)
				switch {
				case err != nil && errors.Is(err, syscall.ECONNREFUSED):
					refused.Add(1)
					target = 1 - target
					continue
				case err != nil:
					lost.Add(1)
					firstLost.CompareAndSwap(nil, err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					lost.Add(1)
					firstLost.CompareAndSwap(nil, fmt.Sprintf("status %d", resp.StatusCode))
					continue
				}
				ok.Add(1)
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	for i := range replicas {
		p := replicas[i]
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			t.Fatalf("replica %d did not exit within 30 s of SIGTERM:\n%s", i, p.logs)
		}
		if p.err != nil {
			t.Errorf("replica %d exited with %v:\n%s", i, p.err, p.logs)
		}
		next := launch(t, args...)
		next.waitReady(t, http.DefaultClient, "http")
		mu.Lock()
		replicas[i] = next
		mu.Unlock()
		time.Sleep(500 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	t.Logf("two rolling restarts under load: %d requests answered 200, %d refused connections, %d lost", ok.Load(), refused.Load(), lost.Load())
	if lost.Load() > 0 {
		t.Errorf("%d accepted requests were lost; first: %v", lost.Load(), firstLost.Load())
	}
	if ok.Load() == 0 {
		t.Error("no request completed")
	}
}

package authz

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TokenInfo is what may be disclosed about a token: never its secret.
type TokenInfo struct {
	ID          string     `json:"id"`
	Type        string     `json:"token_type"`
	Purpose     string     `json:"token_purpose,omitempty"`
	Subject     string     `json:"subject"`
	Scopes      []string   `json:"scopes"`
	Description string     `json:"description,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	ClientID    string     `json:"client_id,omitempty"`
}

// Access is contaxy's AuthorizedAccess: the outcome of a successful verify.
// Resource and Level are those of the requested permission (empty when
// none was asked for). Callers must treat its slices as read-only: they are
// shared with the cache.
type Access struct {
	Subject  string    `json:"authorized_subject"`
	Resource string    `json:"resource_name,omitempty"`
	Level    string    `json:"access_level,omitempty"`
	Token    TokenInfo `json:"access_token"`
	// Username and Email describe the subject when it is a user, for the
	// identity headers forward-auth sends upstream.
	Username string `json:"-"`
	Email    string `json:"-"`
	// Revision is the store revision the decision is at least as fresh as.
	Revision Revision `json:"-"`
	// Explanation is set when VerifyOptions.Explain was asked for.
	Explanation *Explanation `json:"explanation,omitempty"`
	// Cache says how the decision cache served this verification.
	Cache CacheResult `json:"-"`

	key digest     // the token's digest, to re-check the caller later without its secret
	p   *principal // the resolved token, for the same purpose
}

// Explanation says why a decision went the way it did.
type Explanation struct {
	Allowed bool `json:"allowed"`
	// Scope is the token scope that covers the permission ("" if none does).
	Scope string `json:"scope,omitempty"`
	// Grant is the base permission that covers it, held by Holder, reached
	// from the subject through the roles in Via (empty: held directly).
	Grant  string   `json:"grant,omitempty"`
	Holder string   `json:"holder,omitempty"`
	Via    []string `json:"via,omitempty"`
	// Missing names what was lacking on a denial: "scope" or "grant".
	Missing string `json:"missing,omitempty"`
	Reason  string `json:"reason"`
}

// DeniedError is returned when a valid token lacks the permission. It
// matches ErrPermissionDenied with errors.Is and carries the explanation.
type DeniedError struct {
	Explanation *Explanation
}

func (e *DeniedError) Error() string { return "permission denied: " + e.Explanation.Reason }

// Is makes errors.Is(err, ErrPermissionDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrPermissionDenied }

// VerifyOptions modify a verification.
type VerifyOptions struct {
	// AtLeastRevision demands a decision at least as fresh as this store
	// revision (a consistency token returned by a write): cached entries
	// older than it are bypassed.
	AtLeastRevision Revision
	// NoCache reads everything from the store (contaxy's use_cache=false).
	NoCache bool
	// Explain fills Access.Explanation, or the DeniedError's explanation.
	Explain bool
}

// maxTokenLen bounds the token strings we are willing to hash or parse.
const maxTokenLen = 8192

var errNoToken = fmt.Errorf("%w: no token", ErrUnauthenticated)

// VerifyAccess is contaxy's verify_access: token must be valid (else
// ErrUnauthenticated); with a permission, one of the token's scopes and the
// subject's resolved grants must both grant it (else a *DeniedError). A bad
// permission is ErrInvalid.
//
// Access.Cache says how the decision cache served the call, on every
// return, errors included.
func (s *Service) VerifyAccess(ctx context.Context, token, permission string, opt VerifyOptions) (Access, error) {
	if s.obs == nil {
		return s.verifyAccess(ctx, token, permission, opt, s.now())
	}
	// Clock reads are a visible part of a cached decision's cost: the
	// start time doubles as "now" for the cache's expiry check, unless
	// a test replaced the clock.
	start := time.Now()
	now := start
	if s.fakeClock {
		now = s.now()
	}
	acc, err := s.verifyAccess(ctx, token, permission, opt, now)
	s.obs.Verified(acc.Cache, time.Since(start))
	return acc, err
}

// verifyAccess is VerifyAccess at time now.
func (s *Service) verifyAccess(ctx context.Context, token, permission string, opt VerifyOptions, now time.Time) (Access, error) {
	if token == "" {
		return Access{}, errNoToken
	}
	if len(token) > maxTokenLen {
		return Access{}, fmt.Errorf("%w: token longer than %d bytes", ErrUnauthenticated, maxTokenLen)
	}
	d := digestOf(token)
	result := CacheMiss
	if !opt.NoCache && !opt.Explain {
		key := decisionKey(d, permission)
		e, ok := s.hot.get(key)
		if !ok || !s.usable(e, d, permission, opt.AtLeastRevision, now) {
			e, ok = s.decisions.Get(key)
			if ok && (e.key != d || e.perm != permission) {
				ok = false // another token's or permission's entry on a colliding key
			}
			if ok && s.usable(e, d, permission, opt.AtLeastRevision, now) {
				s.hot.put(key, e)
			} else if ok {
				result, ok = CacheStale, false
			}
		}
		if ok {
			// A cached denial returns the caller too, as the slow path
			// does (the access log and shadow rules need the subject).
			acc := e.access
			acc.Cache = CacheHit
			return acc, e.err
		}
	}
	acc, err := s.verifySlow(ctx, token, d, permission, opt)
	acc.Cache = result
	return acc, err
}

var decisionSeed = maphash.MakeSeed()

// usable reports whether the cached decision e answers (d, permission) now:
// the same checks for an entry from either cache, so that the hot front
// can never serve what the decision cache itself would not.
func (s *Service) usable(e *decisionEntry, d digest, permission string, atLeast Revision, now time.Time) bool {
	return e.key == d && e.perm == permission && s.gens.valid(e.epoch, e.deps) && s.cacheUsable(e.rev, atLeast) &&
		e.live(now) && now.Before(e.cachedUntil)
}

// hotDecisions is a small lock-free front to the decision cache for the
// decisions being served right now. Every forward-auth request looks its
// decision up; with few hot tokens, the cores all read-lock the same
// ristretto shard and its lock's cache line bounces between them, which
// cost more than the rest of a warm decision. Entries are the decision
// cache's own and are checked the same way on every hit (usable), so a
// stale one is never served; the front only has to stay small: it is
// emptied whenever it has taken maxHotDecisions entries.
type hotDecisions struct {
	m     sync.Map // uint64 decision key → *decisionEntry
	added atomic.Int32
}

const maxHotDecisions = 4096

func (h *hotDecisions) get(key uint64) (*decisionEntry, bool) {
	v, ok := h.m.Load(key)
	if !ok {
		return nil, false
	}
	return v.(*decisionEntry), true
}

func (h *hotDecisions) put(key uint64, e *decisionEntry) {
	if h.added.Add(1) > maxHotDecisions {
		h.clear()
	}
	h.m.Store(key, e)
}

func (h *hotDecisions) clear() {
	h.m.Clear()
	h.added.Store(0)
}

func decisionKey(d digest, permission string) uint64 {
	return d.key64() ^ maphash.String(decisionSeed, permission)
}

// verifyDigest re-checks an earlier verified caller for another permission
// without its secret: only cached state can be used, so a miss re-reads the
// token by digest.
func (s *Service) verifyDigest(ctx context.Context, a Access, permission string) error {
	if e, ok := s.decisions.Get(decisionKey(a.key, permission)); ok && e.key == a.key && e.perm == permission &&
		s.gens.valid(e.epoch, e.deps) && s.cacheUsable(e.rev, 0) && e.live(s.now()) {
		return e.err
	}
	if a.p == nil {
		// Not a verified token (e.g. an authenticated client): it holds nothing.
		return fmt.Errorf("%w: the caller has no grants", ErrPermissionDenied)
	}
	_, err := s.verifyResolved(ctx, "", a.key, a.p, permission, VerifyOptions{})
	return err
}

// decisionEntry is a cached decision for (token digest, permission string).
type decisionEntry struct {
	key     digest
	perm    string
	access  Access
	err     error // nil or a *DeniedError
	expires time.Time
	epoch   uint64
	deps    []dep
	rev     Revision
	// cachedUntil is when the decision cache's TTL drops the entry; the
	// hot front, which has no TTL of its own, stops serving it then too.
	cachedUntil time.Time
}

func (e *decisionEntry) live(now time.Time) bool { return e.expires.IsZero() || now.Before(e.expires) }

func (s *Service) verifySlow(ctx context.Context, token string, d digest, permission string, opt VerifyOptions) (Access, error) {
	return s.verifyResolved(ctx, token, d, nil, permission, opt)
}

// verifyResolved decides from the store and the caches. known, when set, is
// an earlier resolution of the same token (used when the secret is gone).
func (s *Service) verifyResolved(ctx context.Context, token string, d digest, known *principal, permission string, opt VerifyOptions) (Access, error) {
	var req Permission
	if permission != "" {
		var err error
		if req, err = ParsePermission(permission); err != nil {
			return Access{}, err
		}
	}
	epoch := s.gens.epoch.Load()
	useCache := !opt.NoCache
	p, se, err := s.resolve(ctx, token, d, known, useCache, opt.AtLeastRevision)
	if err != nil {
		return Access{}, err
	}
	acc, expl, err := s.decide(p, se, req, permission != "")
	if err != nil && !errors.Is(err, ErrPermissionDenied) {
		return Access{}, err
	}
	acc.key, acc.p = d, p
	rev := min(p.rev, se.rev)
	acc.Revision = max(rev, s.watch.applied.Load())
	if useCache && s.watch.healthy.Load() {
		deps := make([]dep, 0, len(p.deps)+len(se.deps))
		deps = append(append(deps, p.deps...), se.deps...)
		ttl := jitterTTL(s.cfg.CacheTTL)
		e := &decisionEntry{key: d, perm: permission, access: acc, err: err, epoch: epoch, deps: deps, rev: rev, expires: p.expires, cachedUntil: s.now().Add(ttl)}
		s.decisions.Set(decisionKey(d, permission), e, int64(200+len(permission)+16*len(deps)), ttl)
	}
	if opt.Explain {
		if err != nil {
			var de *DeniedError
			errors.As(err, &de)
			de.Explanation = expl
		}
		acc.Explanation = expl
	}
	return acc, err
}

// decide combines a resolved token and subject into a decision.
func (s *Service) decide(p *principal, se *subjectEntry, req Permission, hasPerm bool) (Access, *Explanation, error) {
	if !p.expires.IsZero() && !s.now().Before(p.expires) {
		return Access{}, nil, fmt.Errorf("%w: token expired", ErrUnauthenticated)
	}
	if p.userID != "" {
		switch {
		case se.user == nil:
			return Access{}, nil, fmt.Errorf("%w: the token's user no longer exists", ErrUnauthenticated)
		case se.user.Disabled:
			return Access{}, nil, fmt.Errorf("%w: user is disabled", ErrUnauthenticated)
		case p.session && p.epoch != se.user.SessionEpoch:
			return Access{}, nil, fmt.Errorf("%w: session ended (password changed or user disabled)", ErrUnauthenticated)
		}
	}
	if se.clientMissing {
		return Access{}, nil, fmt.Errorf("%w: the token's client no longer exists", ErrUnauthenticated)
	}
	acc := Access{Subject: p.subject, Token: p.info}
	if se.user != nil {
		acc.Username, acc.Email = se.user.Username, se.user.Email
	}
	if !hasPerm {
		return acc, &Explanation{Allowed: true, Reason: "valid token; no permission requested"}, nil
	}
	acc.Resource, acc.Level = req.Resource, req.Level.String()
	expl := &Explanation{}
	for _, sc := range p.scopes {
		if sc.Covers(req) {
			expl.Scope = sc.String()
			break
		}
	}
	if expl.Scope == "" {
		expl.Missing = "scope"
		expl.Reason = "no scope of the token grants " + req.String()
		return acc, expl, &DeniedError{Explanation: expl}
	}
	res, held, ok := se.lookup(req)
	if !ok {
		expl.Missing = "grant"
		expl.Reason = p.subject + " holds no grant covering " + req.String()
		return acc, expl, &DeniedError{Explanation: expl}
	}
	expl.Allowed = true
	expl.Grant = res + "#" + held.level.String()
	expl.Holder = held.holder
	expl.Via = held.via
	if len(held.via) == 0 {
		expl.Reason = "token scope " + expl.Scope + " and grant " + expl.Grant + " held by " + held.holder
	} else {
		expl.Reason = "token scope " + expl.Scope + " and grant " + expl.Grant + " held by " + held.holder + " via " + strings.Join(held.via, " → ")
	}
	return acc, expl, nil
}

package authz

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Bounds on role resolution: deeper or wider role graphs are cut off, which
// can only withhold permissions, never add them.
const (
	maxRoleDepth     = 32
	maxRoleResources = 4096
)

// principal is a resolved token.
type principal struct {
	info     TokenInfo
	scopes   []Permission
	subject  string
	userID   string // set when subject is users/<id>
	clientID string // set when subject is clients/<id>
	session  bool   // a session JWT (else a stored token)
	jti      string
	epoch    uint64
	expires  time.Time
	deps     []dep
	rev      Revision
}

type tokenEntry struct {
	key   digest
	p     *principal
	epoch uint64
}

// heldGrant is the strongest base permission a subject holds on one resource.
type heldGrant struct {
	level  Level
	holder string   // the resource that holds the grant: the subject or a role
	via    []string // roles from the subject to holder
}

// subjectEntry is a subject's resolved grants plus what else a decision needs.
type subjectEntry struct {
	subject       string
	raw           []string // grants the subject holds directly
	base          []string // distinct base permissions of the whole closure
	levels        map[string]heldGrant
	user          *UserRecord
	clientMissing bool
	epoch         uint64
	deps          []dep
	rev           Revision
}

// lookup finds the strongest held grant covering req: on req's resource, on
// an ancestor at a '/' or ':' boundary, or on "*". Its cost depends on the
// depth of req's resource, not on the number of grants.
func (se *subjectEntry) lookup(req Permission) (string, heldGrant, bool) {
	r := req.Resource
	for {
		if h, ok := se.levels[r]; ok && h.level >= req.Level {
			return r, h, true
		}
		i := strings.LastIndexAny(r, "/:")
		if i < 0 {
			break
		}
		r = r[:i]
	}
	if h, ok := se.levels["*"]; ok && h.level >= req.Level {
		return "*", h, true
	}
	return "", heldGrant{}, false
}

type grantsEntry struct {
	grants []string
	epoch  uint64
	dep    dep
	rev    Revision
}

type clientEntry struct {
	exists bool
	epoch  uint64
	dep    dep
}

// resolve turns a token into a principal and its subject's grants, from the
// caches when they are usable and from the store otherwise, in at most two
// store round trips when the roles involved are cached.
func (s *Service) resolve(ctx context.Context, token string, d digest, known *principal, useCache bool, atLeast Revision) (*principal, *subjectEntry, error) {
	if useCache {
		if te, ok := s.tokens.Get(d.key64()); ok && te.key == d && s.gens.valid(te.epoch, te.p.deps) && s.cacheUsable(te.p.rev, atLeast) {
			se, _, err := s.resolveSubject(ctx, te.p, "", useCache, atLeast)
			return te.p, se, err
		}
	}
	epoch := s.gens.epoch.Load()
	var p *principal
	var err error
	switch {
	case known != nil && known.session:
		p = known
	case token == "" && known != nil:
		p, err = s.readStoredToken(ctx, d, useCache)
	case looksLikeJWT(token):
		p, err = s.parseSession(ctx, token)
	default:
		p, err = s.readStoredToken(ctx, d, useCache)
	}
	if err != nil {
		return nil, nil, err
	}
	if !p.session {
		se, _, err := s.resolveSubject(ctx, p, "", useCache, atLeast)
		if err != nil {
			return nil, nil, err
		}
		s.cacheToken(d, p, epoch, useCache)
		return p, se, nil
	}
	// A session: its revocation is read with the subject when possible.
	sessDep := s.gens.capture(slotSession, p.jti)
	se, revoked, err := s.resolveSubject(ctx, p, p.jti, useCache, atLeast)
	if err != nil {
		return nil, nil, err
	}
	if revoked {
		return nil, nil, fmt.Errorf("%w: session revoked", ErrUnauthenticated)
	}
	// The principal is shared with the cache: give it its own copy with deps.
	cp := *p
	cp.deps = []dep{sessDep}
	cp.rev = se.rev
	s.cacheToken(d, &cp, epoch, useCache)
	return &cp, se, nil
}

func (s *Service) cacheToken(d digest, p *principal, epoch uint64, useCache bool) {
	if !useCache || !s.watch.healthy.Load() {
		return
	}
	cost := int64(256 + len(p.subject) + 32*len(p.scopes))
	ttl := jitterTTL(s.cfg.CacheTTL)
	if !p.expires.IsZero() {
		ttl = min(ttl, time.Until(p.expires)+time.Second)
	}
	s.tokens.Set(d.key64(), &tokenEntry{key: d, p: p, epoch: epoch}, cost, ttl)
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

func looksLikeJWT(t string) bool {
	return strings.HasPrefix(t, "eyJ") && strings.Count(t, ".") == 2
}

// readStoredToken reads an opaque token by digest; concurrent identical
// misses share one store read.
func (s *Service) readStoredToken(ctx context.Context, d digest, useCache bool) (*principal, error) {
	hex := d.hex()
	tokDep := s.gens.capture(slotToken, hex)
	var rec TokenRecord
	var err error
	if useCache {
		var v any
		v, err = s.coalesce(ctx, "token:"+hex, func(ctx context.Context) (any, error) { return s.store.Token(ctx, hex) })
		if err == nil {
			rec = v.(TokenRecord)
		}
	} else {
		rec, err = s.store.Token(ctx, hex)
	}
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
		}
		return nil, fmt.Errorf("read token: %w", err)
	}
	if rec.Type != TokenTypeAPI || rec.Purpose == PurposeRefresh {
		// A refresh token is not an access token.
		return nil, fmt.Errorf("%w: not an access token", ErrUnauthenticated)
	}
	p := &principal{
		info:    rec.info(),
		subject: rec.Subject,
		deps:    []dep{tokDep},
	}
	p.userID, p.clientID = subjectIDs(rec.Subject)
	if rec.ExpiresAt != nil {
		p.expires = *rec.ExpiresAt
	}
	p.scopes = parseScopes(rec.Scopes)
	return p, nil
}

func (s *Service) parseSession(ctx context.Context, token string) (*principal, error) {
	c, err := s.keys.parse(ctx, token)
	if err != nil {
		return nil, err
	}
	scopes := strings.Fields(c.Scope)
	p := &principal{
		info: TokenInfo{
			ID:       c.ID,
			Type:     TokenTypeSession,
			Purpose:  c.Purpose,
			Subject:  c.Subject,
			Scopes:   scopes,
			ClientID: c.ClientID,
		},
		subject: c.Subject,
		session: true,
		jti:     c.ID,
		epoch:   c.Epoch,
		scopes:  parseScopes(scopes),
	}
	if c.IssuedAt != nil {
		p.info.CreatedAt = c.IssuedAt.Time
	}
	exp := c.ExpiresAt.Time
	p.info.ExpiresAt = &exp
	p.expires = exp
	p.userID, p.clientID = subjectIDs(c.Subject)
	return p, nil
}

// parseScopes keeps the scopes that parse; a stored scope that does not
// (written by hand) grants nothing.
func parseScopes(in []string) []Permission {
	out := make([]Permission, 0, len(in))
	for _, sc := range in {
		if p, err := ParsePermission(sc); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func subjectIDs(subject string) (userID, clientID string) {
	if id, ok := strings.CutPrefix(subject, "users/"); ok {
		return id, ""
	}
	if id, ok := strings.CutPrefix(subject, "clients/"); ok {
		return "", id
	}
	return "", ""
}

func (r *TokenRecord) info() TokenInfo {
	return TokenInfo{
		ID:          r.ID,
		Type:        r.Type,
		Purpose:     r.Purpose,
		Subject:     r.Subject,
		Scopes:      r.Scopes,
		Description: r.Description,
		CreatedAt:   r.CreatedAt,
		ExpiresAt:   r.ExpiresAt,
		ClientID:    r.ClientID,
	}
}

// resolveSubject returns the resolved grants of p's subject. With jti set
// it also reports whether that session is revoked, reading both in the same
// round trip when the subject is not cached.
func (s *Service) resolveSubject(ctx context.Context, p *principal, jti string, useCache bool, atLeast Revision) (*subjectEntry, bool, error) {
	se, revoked, err := s.subjectGrants(ctx, p.subject, jti, useCache, atLeast)
	if err != nil {
		return nil, false, err
	}
	return se, revoked, nil
}

// subjectGrants resolves any resource's grants with its roles (a subject is
// just the resource its grants are held by).
func (s *Service) subjectGrants(ctx context.Context, subject, jti string, useCache bool, atLeast Revision) (*subjectEntry, bool, error) {
	if useCache {
		if se, ok := s.subjects.Get(subject); ok && s.gens.valid(se.epoch, se.deps) && s.cacheUsable(se.rev, atLeast) {
			if jti == "" {
				return se, false, nil
			}
			revoked, err := s.store.SessionRevoked(ctx, jti)
			if err != nil {
				return nil, false, fmt.Errorf("read session: %w", err)
			}
			return se, revoked, nil
		}
	}
	type result struct {
		se      *subjectEntry
		revoked bool
	}
	load := func(ctx context.Context) (any, error) {
		se, revoked, err := s.loadSubject(ctx, subject, jti, useCache, atLeast)
		return result{se, revoked}, err
	}
	var v any
	var err error
	if useCache && atLeast == 0 {
		v, err = s.coalesce(ctx, "subject:"+subject+"|"+jti, load)
	} else {
		v, err = load(ctx)
	}
	if err != nil {
		return nil, false, err
	}
	r := v.(result)
	return r.se, r.revoked, nil
}

func (s *Service) loadSubject(ctx context.Context, subject, jti string, useCache bool, atLeast Revision) (*subjectEntry, bool, error) {
	epoch := s.gens.epoch.Load()
	userID, clientID := subjectIDs(subject)
	deps := []dep{s.gens.capture(slotGrant, subject)}
	if userID != "" {
		deps = append(deps, s.gens.capture(slotUser, userID))
	}
	if clientID != "" {
		deps = append(deps, s.gens.capture(slotClient, clientID))
	}
	snap, err := s.store.Subject(ctx, subject, jti)
	if err != nil {
		return nil, false, fmt.Errorf("read subject: %w", err)
	}
	se := &subjectEntry{subject: subject, raw: snap.Grants, user: snap.User, epoch: epoch, rev: snap.Revision}
	if clientID != "" {
		if _, err := s.store.Client(ctx, clientID); err != nil {
			if !isNotFound(err) {
				return nil, false, fmt.Errorf("read client: %w", err)
			}
			se.clientMissing = true
		}
	}
	roleDeps, rev, err := s.resolveRoles(ctx, se, useCache, atLeast)
	if err != nil {
		return nil, false, err
	}
	se.deps = append(deps, roleDeps...)
	se.rev = min(se.rev, rev)
	if useCache && s.watch.healthy.Load() {
		cost := int64(256 + 64*len(se.base) + 16*len(se.deps))
		s.subjects.Set(subject, se, cost, jitterTTL(s.cfg.CacheTTL))
	}
	return se, snap.SessionRevoked, nil
}

// resolveRoles fills se.levels and se.base from se.raw and, recursively and
// breadth-first, the grants of every role reached; cycles end because each
// resource is visited once. It returns the dependencies on those roles.
func (s *Service) resolveRoles(ctx context.Context, se *subjectEntry, useCache bool, atLeast Revision) ([]dep, Revision, error) {
	se.levels = make(map[string]heldGrant)
	visited := map[string][]string{se.subject: nil}
	seenBase := make(map[string]bool)
	var deps []dep
	minRev := se.rev
	add := func(holder string, via []string, grants []string) (next []string) {
		for _, gs := range grants {
			g, err := ParseGrant(gs)
			if err != nil {
				continue // written by hand and unreadable: grants nothing
			}
			if g.IsRole() {
				if _, seen := visited[g.Resource]; !seen && len(visited) < maxRoleResources {
					chain := append(via[:len(via):len(via)], g.Resource)
					visited[g.Resource] = chain
					next = append(next, g.Resource)
				}
				continue
			}
			key := g.String()
			if !seenBase[key] {
				seenBase[key] = true
				se.base = append(se.base, key)
			}
			if cur, ok := se.levels[g.Resource]; !ok || g.Level > cur.level {
				se.levels[g.Resource] = heldGrant{level: g.Level, holder: holder, via: via}
			}
		}
		return next
	}
	frontier := add(se.subject, nil, se.raw)
	for depth := 0; len(frontier) > 0; depth++ {
		if depth >= maxRoleDepth {
			s.log.Warn("role resolution cut off: roles nested too deep", "subject", se.subject, "depth", depth)
			break
		}
		grants, rdeps, rev, err := s.roleGrants(ctx, frontier, useCache, atLeast)
		if err != nil {
			return nil, 0, err
		}
		deps = append(deps, rdeps...)
		minRev = min(minRev, rev)
		var next []string
		for _, r := range frontier {
			next = append(next, add(r, visited[r], grants[r])...)
		}
		frontier = next
	}
	return deps, minRev, nil
}

// roleGrants returns the raw grants of each resource, from the cache where
// valid and from one batched store read for the rest.
func (s *Service) roleGrants(ctx context.Context, resources []string, useCache bool, atLeast Revision) (map[string][]string, []dep, Revision, error) {
	out := make(map[string][]string, len(resources))
	deps := make([]dep, 0, len(resources))
	minRev := Revision(1<<63 - 1)
	var missing []string
	for _, r := range resources {
		if useCache {
			if ge, ok := s.resources.Get(r); ok && s.gens.valid(ge.epoch, []dep{ge.dep}) && s.cacheUsable(ge.rev, atLeast) {
				out[r] = ge.grants
				deps = append(deps, ge.dep)
				minRev = min(minRev, ge.rev)
				continue
			}
		}
		missing = append(missing, r)
	}
	if len(missing) == 0 {
		return out, deps, minRev, nil
	}
	epoch := s.gens.epoch.Load()
	mdeps := make([]dep, len(missing))
	for i, r := range missing {
		mdeps[i] = s.gens.capture(slotGrant, r)
	}
	got, rev, err := s.store.Grants(ctx, missing)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("read role grants: %w", err)
	}
	minRev = min(minRev, rev)
	cacheIt := useCache && s.watch.healthy.Load()
	for i, r := range missing {
		out[r] = got[r]
		deps = append(deps, mdeps[i])
		if cacheIt {
			ge := &grantsEntry{grants: got[r], epoch: epoch, dep: mdeps[i], rev: rev}
			s.resources.Set(r, ge, int64(64+48*len(got[r])), jitterTTL(s.cfg.CacheTTL))
		}
	}
	return out, deps, minRev, nil
}

// coalesce runs fn once for concurrent callers with the same key. fn runs
// detached from any one caller's cancellation (the store bounds each
// request's time); each caller still stops waiting when its own ctx ends.
//
// Callers share a read only if no change was applied between their
// arrivals: a caller that arrives after a revocation returned (which bumps
// a generation before returning) must not get the answer of a read that
// started before it, so the flight key carries the change count.
func (s *Service) coalesce(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	key += "@" + strconv.FormatUint(s.gens.changes.Load(), 10)
	ch := s.flights.DoChan(key, func() (any, error) {
		return fn(context.WithoutCancel(ctx))
	})
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

package authz

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Sign-in through external OpenID Connect providers. The HTTP layer runs
// the protocol (discovery, code exchange, ID token verification); this
// file keeps what must be stored: the pending sign-ins, the link from a
// provider's subject to a Portcullis user, and the role grants a
// provider's claims gave.

// ErrNoAccount means an external identity is linked to no user and the
// provider's policy does not allow creating one. Maps to 403.
var ErrNoAccount = errors.New("no account for this external identity")

// ExternalLoginTTL is how long a started external sign-in may take to come
// back to the callback.
const ExternalLoginTTL = 10 * time.Minute

// ExternalLoginState is a pending external sign-in, stored server-side
// under the digest of a random id that only the browser's cookie holds.
type ExternalLoginState struct {
	Provider string `json:"provider"`
	// State and Nonce are the random values sent to the provider; the
	// callback must bring State back and the ID token must carry Nonce.
	State string `json:"state"`
	Nonce string `json:"nonce"`
	// Verifier is the PKCE code verifier (RFC 7636).
	Verifier string `json:"verifier"`
	// ReturnTo is the already-validated post-login target ("" for none).
	ReturnTo  string    `json:"return_to,omitempty"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ExternalLink ties a provider's subject to a Portcullis user. Roles are
// the role grants the provider's claims mapping gave the user and that the
// next sign-in may therefore take away again; grants given by hand are
// never in it.
type ExternalLink struct {
	Provider  string    `json:"provider"`
	Subject   string    `json:"subject"`
	UserID    string    `json:"user_id"`
	Roles     []string  `json:"roles,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Key is the link's identity as stored in UserRecord.ExternalIDs and in
// the store's key: "<provider>|<subject>".
func (l ExternalLink) Key() string { return ExternalKey(l.Provider, l.Subject) }

// ExternalKey joins a provider id and a subject. Provider ids never
// contain '|'.
func ExternalKey(provider, subject string) string { return provider + "|" + subject }

// ExternalStore is what external sign-in needs from the store, beside
// Store. Every method is atomic as Store's are; errors as Store documents.
type ExternalStore interface {
	// PutExternalLoginState stores st under digest until st.ExpiresAt.
	PutExternalLoginState(ctx context.Context, digest string, st ExternalLoginState) error
	// TakeExternalLoginState atomically reads and deletes the state: of
	// several concurrent calls exactly one gets it; later calls and
	// calls after it expired get ErrNotFound.
	TakeExternalLoginState(ctx context.Context, digest string) (ExternalLoginState, error)
	// ExternalLink returns the link of provider and subject with the
	// revision it was last written at, or ErrNotFound.
	ExternalLink(ctx context.Context, provider, subject string) (ExternalLink, Revision, error)
	// CreateExternalUser stores, in one atomic write, the user u, its login
	// ids, its grants and the link (whose key must be in u.ExternalIDs).
	// linkRev is the revision the link was read at (0: absent); a link
	// written since, a taken login id or user id fail with ErrConflict and
	// write nothing.
	CreateExternalUser(ctx context.Context, u UserRecord, grants []string, link ExternalLink, linkRev Revision) (Revision, error)
	// UpdateExternalRoles writes link and adds and removes the grants of
	// "users/<link.UserID>" in one atomic write, if the link is still at
	// linkRev; else ErrConflict and nothing is written.
	UpdateExternalRoles(ctx context.Context, link ExternalLink, linkRev Revision, add, remove []string) (Revision, error)
}

func (s *Service) externalStore() (ExternalStore, error) {
	es, ok := s.store.(ExternalStore)
	if !ok {
		return nil, fmt.Errorf("external sign-in: the store does not support it: %w", ErrInvalid)
	}
	return es, nil
}

// BeginExternalLogin stores a pending sign-in and returns the random id
// that the browser keeps (in a cookie) to finish it. ExpiresAt is set here.
func (s *Service) BeginExternalLogin(ctx context.Context, st ExternalLoginState) (string, error) {
	es, err := s.externalStore()
	if err != nil {
		return "", err
	}
	if err := validateProviderID(st.Provider); err != nil {
		return "", err
	}
	id := randomString(32)
	st.ExpiresAt = s.now().Add(ExternalLoginTTL).UTC()
	if err := es.PutExternalLoginState(ctx, externalStateDigest(id), st); err != nil {
		return "", fmt.Errorf("begin external sign-in: %w", err)
	}
	return id, nil
}

// FinishExternalLogin takes the pending sign-in of id, once: a second call
// with the same id, or one after it expired, gets ErrNotFound.
func (s *Service) FinishExternalLogin(ctx context.Context, id string) (ExternalLoginState, error) {
	es, err := s.externalStore()
	if err != nil {
		return ExternalLoginState{}, err
	}
	if id == "" || len(id) > 128 {
		return ExternalLoginState{}, fmt.Errorf("external sign-in: %w", ErrNotFound)
	}
	st, err := es.TakeExternalLoginState(ctx, externalStateDigest(id))
	if err != nil {
		return ExternalLoginState{}, fmt.Errorf("finish external sign-in: %w", err)
	}
	if !s.now().Before(st.ExpiresAt) {
		return ExternalLoginState{}, fmt.Errorf("finish external sign-in: expired: %w", ErrNotFound)
	}
	return st, nil
}

// externalStateDigest keys a pending sign-in. The domain prefix keeps it
// apart from every other digest Portcullis stores.
func externalStateDigest(id string) string { return digestOf("external-login\x00" + id).hex() }

// ExternalIdentity is who a provider says signed in, from a verified ID token.
type ExternalIdentity struct {
	Provider string
	// Subject is the provider's stable "sub" claim: the only key a user is
	// found by. The email is never used to find a user.
	Subject string
	// Email is used only when the provider says it is verified.
	Email         string
	EmailVerified bool
	// PreferredUsername is a hint for the username of a new user.
	PreferredUsername string
}

// ExternalSignIn asks SignInExternal to sign a person in.
type ExternalSignIn struct {
	Identity ExternalIdentity
	// MayCreate allows creating a user when the identity is linked to none.
	MayCreate bool
	// Roles are the role grants ("roles/…") the provider's claims map to
	// now. Roles a previous sign-in gave that are not in it are taken away.
	Roles []string
}

// SignInExternal finds the user linked to the identity (creating user and
// link in one transaction when allowed), brings the role grants given by
// the claims mapping up to date, and issues a login token exactly as the
// password sign-in does. ErrNoAccount when there is no user and none may
// be created; ErrUnauthenticated when the user is disabled.
func (s *Service) SignInExternal(ctx context.Context, in ExternalSignIn) (TokenResponse, error) {
	es, err := s.externalStore()
	if err != nil {
		return TokenResponse{}, err
	}
	id := in.Identity
	if err := validateProviderID(id.Provider); err != nil {
		return TokenResponse{}, err
	}
	if id.Subject == "" || len(id.Subject) > 255 || !utf8.ValidString(id.Subject) {
		return TokenResponse{}, invalid("sub", "the provider sent no usable subject")
	}
	roles := make([]string, 0, len(in.Roles))
	for _, r := range in.Roles {
		if !strings.HasPrefix(r, "roles/") || strings.ContainsAny(r, "#|") {
			return TokenResponse{}, invalid("roles", quote(r)+" is not a role (roles/<name>)")
		}
		roles = append(roles, r)
	}
	slices.Sort(roles)
	roles = slices.Compact(roles)

	var user UserRecord
	for found, attempt := false, 0; !found; attempt++ {
		if attempt > 3 {
			return TokenResponse{}, fmt.Errorf("external sign-in: gave up after %d lost races: %w", attempt, ErrConflict)
		}
		link, linkRev, err := es.ExternalLink(ctx, id.Provider, id.Subject)
		if err != nil && !isNotFound(err) {
			return TokenResponse{}, fmt.Errorf("external sign-in: %w", err)
		}
		if err == nil {
			u, uerr := s.store.User(ctx, link.UserID)
			if uerr == nil {
				rerr := s.updateExternalRoles(ctx, es, link, linkRev, roles)
				if errors.Is(rerr, ErrConflict) {
					continue // a concurrent sign-in moved the link: read it again
				}
				if rerr != nil {
					return TokenResponse{}, rerr
				}
				user, found = u, true
				continue
			}
			if !isNotFound(uerr) {
				return TokenResponse{}, fmt.Errorf("external sign-in: %w", uerr)
			}
			// The link points to a user deleted by hand: a new user may take it over.
		} else {
			linkRev = 0
		}
		if !in.MayCreate {
			return TokenResponse{}, ErrNoAccount
		}
		u, cerr := s.createExternalUser(ctx, es, id, roles, linkRev)
		if errors.Is(cerr, errLinkRace) {
			continue // another sign-in of the same person won: use its user
		}
		if cerr != nil {
			return TokenResponse{}, cerr
		}
		user, found = u, true
	}
	if user.Disabled {
		return TokenResponse{}, fmt.Errorf("%w: user is disabled", ErrUnauthenticated)
	}
	resp, err := s.issueTokens(ctx, UserSubject(user.ID), defaultLoginScopes, "", "", true, false)
	if err != nil {
		return TokenResponse{}, err
	}
	s.touchUser(ctx, user.ID)
	return resp, nil
}

var errLinkRace = fmt.Errorf("the external identity was linked meanwhile: %w", ErrConflict)

// updateExternalRoles gives the roles the mapping gives now and takes
// away those an earlier sign-in gave that it no longer gives. A role the
// user already held when the mapping first gave it was granted by hand:
// it is not recorded as the mapping's, so it is never taken away.
func (s *Service) updateExternalRoles(ctx context.Context, es ExternalStore, link ExternalLink, linkRev Revision, roles []string) error {
	subject := UserSubject(link.UserID)
	held, _, err := s.store.Grants(ctx, []string{subject})
	if err != nil {
		return fmt.Errorf("external sign-in: %w", err)
	}
	var add, remove, managed []string
	for _, r := range roles {
		has := slices.Contains(held[subject], r)
		if !has {
			add = append(add, r)
		}
		if !has || slices.Contains(link.Roles, r) {
			managed = append(managed, r)
		}
	}
	for _, r := range link.Roles {
		if !slices.Contains(roles, r) {
			remove = append(remove, r)
		}
	}
	if len(add) == 0 && len(remove) == 0 && slices.Equal(managed, link.Roles) {
		return nil
	}
	link.Roles = managed
	if _, err := es.UpdateExternalRoles(ctx, link, linkRev, add, remove); err != nil {
		return fmt.Errorf("external sign-in: update roles: %w", err)
	}
	s.gens.bump(slotGrant, subject)
	s.log.Info("external sign-in changed role grants", "user", link.UserID, "provider", link.Provider, "added", add, "removed", remove)
	return nil
}

// createExternalUser creates a user for the identity with contaxy's
// default grants plus the mapped roles, and its link, in one transaction.
// The username comes from the verified email's local part or the
// preferred username, with -1, -2, … on collision.
func (s *Service) createExternalUser(ctx context.Context, es ExternalStore, id ExternalIdentity, roles []string, linkRev Revision) (UserRecord, error) {
	email := ""
	if id.EmailVerified && validateEmail(strings.TrimSpace(id.Email)) == nil {
		email = strings.TrimSpace(id.Email)
	}
	base := "user"
	switch {
	case id.PreferredUsername != "" && !strings.Contains(id.PreferredUsername, "@"):
		base = usernameFromEmail(id.PreferredUsername + "@x")
	case email != "":
		base = usernameFromEmail(email)
	case id.PreferredUsername != "":
		base = usernameFromEmail(id.PreferredUsername)
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	rec := UserRecord{ID: randomID(10), Email: email, CreatedAt: now, ExternalIDs: []string{ExternalKey(id.Provider, id.Subject)}}
	defaults := DefaultUserGrants(rec.ID)
	var managed []string
	for _, r := range roles {
		if !slices.Contains(defaults, r) {
			managed = append(managed, r)
		}
	}
	link := ExternalLink{Provider: id.Provider, Subject: id.Subject, UserID: rec.ID, Roles: managed, CreatedAt: now}
	grants := append(defaults, managed...)
	for i := 0; i <= maxUserSuffix; i++ {
		rec.Username = base
		if i > 0 {
			rec.Username = fmt.Sprintf("%s-%d", base, i)
		}
		_, err := es.CreateExternalUser(ctx, rec, grants, link, linkRev)
		if err == nil {
			s.log.Info("external sign-in created a user", "user", rec.ID, "provider", id.Provider)
			return rec, nil
		}
		if !errors.Is(err, ErrConflict) {
			return UserRecord{}, fmt.Errorf("external sign-in: create user: %w", err)
		}
		if _, rev, lerr := es.ExternalLink(ctx, id.Provider, id.Subject); (lerr == nil && rev != linkRev) || (isNotFound(lerr) && linkRev != 0) {
			return UserRecord{}, errLinkRace
		}
		if email != "" {
			if _, lerr := s.store.UserByLogin(ctx, strings.ToLower(email)); lerr == nil {
				// Never link by email: an account with this email exists and
				// only its owner (or an admin) may connect it.
				return UserRecord{}, fmt.Errorf("external sign-in: a user with the email %s exists already and is not linked to this identity: %w", email, ErrConflict)
			}
		}
	}
	return UserRecord{}, fmt.Errorf("external sign-in: no free username derived from %q: %w", base, ErrConflict)
}

// validateProviderID accepts 1–64 lower-case letters, digits, '-' and '_'.
func validateProviderID(id string) error {
	if id == "" || len(id) > 64 {
		return invalid("provider", "must be 1 to 64 lower-case letters, digits, '-' or '_'")
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		if !('a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '-' || b == '_') {
			return invalid("provider", quote(id)+" must be lower-case letters, digits, '-' or '_'")
		}
	}
	return nil
}

// ValidateProviderID reports whether id may name an external provider.
func ValidateProviderID(id string) error { return validateProviderID(id) }

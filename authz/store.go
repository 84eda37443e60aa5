package authz

import (
	"context"
	"strings"
	"time"
)

// Revision is a store revision. Every committed write has a larger revision
// than every write committed before it; reads report the revision they saw.
type Revision = int64

// UserRecord is a user as the store keeps it. It holds the password hash, so
// it never leaves the authz package as is: callers get a User.
type UserRecord struct {
	ID            string     `json:"id"`
	Username      string     `json:"username,omitempty"`
	Email         string     `json:"email,omitempty"`
	Disabled      bool       `json:"disabled"`
	TechnicalUser bool       `json:"technical_user"`
	CreatedAt     time.Time  `json:"created_at"`
	LastActivity  *time.Time `json:"last_activity,omitempty"`
	// PasswordHash is a bcrypt hash; empty when the user has no password.
	PasswordHash string `json:"password_hash,omitempty"`
	// SessionEpoch is copied into every session JWT issued to the user.
	// Raising it (password change, disable) invalidates every session issued
	// before: verification compares the token's epoch with this one.
	SessionEpoch uint64 `json:"session_epoch"`
	// ExternalIDs are the keys ("<provider>|<subject>") of the external
	// identities linked to the user; deleting the user deletes their links.
	ExternalIDs []string `json:"external_ids,omitempty"`
}

// LoginIDs returns the user's login ids in the form the store indexes them
// by: lower-cased username and email, without empties. Every backend must
// keep each of them unique across users.
func (u *UserRecord) LoginIDs() []string {
	ids := make([]string, 0, 2)
	if u.Username != "" {
		ids = append(ids, strings.ToLower(u.Username))
	}
	if u.Email != "" && !strings.EqualFold(u.Email, u.Username) {
		ids = append(ids, strings.ToLower(u.Email))
	}
	return ids
}

// Token types and reserved purposes, as contaxy names them.
const (
	TokenTypeSession = "session-token"
	TokenTypeAPI     = "api-token"

	PurposeUserAPI       = "user-api-token"
	PurposeProjectAPI    = "project-api-token"
	PurposeServiceAccess = "service-access-token"
	PurposeLogin         = "login-token"
	PurposeRefresh       = "refresh-token"
)

// TokenRecord is a stored (opaque) token: API tokens, login tokens and
// refresh tokens. The secret itself is never stored, only its digest.
type TokenRecord struct {
	// ID is a stable, public, random identifier used to list and revoke the
	// token without knowing its secret.
	ID string `json:"id"`
	// Digest is the lower-case hex SHA-256 of the secret; tokens are looked up by it.
	Digest      string     `json:"digest"`
	Type        string     `json:"token_type"`
	Purpose     string     `json:"token_purpose"`
	Subject     string     `json:"subject"`
	Scopes      []string   `json:"scopes"`
	Description string     `json:"description,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	ClientID    string     `json:"client_id,omitempty"`
	// Family groups a refresh token with every token it was rotated into, so
	// that reuse of an old one revokes them all (RFC 9700 §4.14.2).
	Family string `json:"family,omitempty"`
	// Used marks a refresh token that was already exchanged. It is kept until
	// it expires so that a replay is detected.
	Used bool `json:"used,omitempty"`
	// Access is the access token issued together with this refresh token,
	// so that a replay of the family revokes the access tokens too.
	Access *IssuedAccess `json:"access,omitempty"`
}

// IssuedAccess names an access token without its secret: a session JWT by
// jti, or a stored login token by id.
type IssuedAccess struct {
	Type      string    `json:"token_type"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ClientRecord is a registered OAuth2 client.
type ClientRecord struct {
	ID string `json:"client_id"`
	// SecretDigest is the hex SHA-256 of the client secret; empty for public clients.
	SecretDigest string   `json:"secret_digest,omitempty"`
	Name         string   `json:"name,omitempty"`
	RedirectURIs []string `json:"redirect_uris,omitempty"`
	GrantTypes   []string `json:"grant_types"`
	Scopes       []string `json:"scopes,omitempty"`
	// Subject is the principal that client_credentials tokens act as
	// (default "clients/<id>"); its grants bound what the client may do.
	Subject string `json:"subject,omitempty"`
	// FirstParty clients skip the consent page.
	FirstParty bool      `json:"first_party,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
}

// AuthCode is a pending OAuth2 authorization code. It is stored under the
// digest of the code, lives at most 60 seconds and can be taken once.
type AuthCode struct {
	ClientID      string    `json:"client_id"`
	RedirectURI   string    `json:"redirect_uri"`
	Subject       string    `json:"subject"`
	Scopes        []string  `json:"scopes"`
	CodeChallenge string    `json:"code_challenge"` // S256 only
	Nonce         string    `json:"nonce,omitempty"`
	ExpiresAt     time.Time `json:"expires_at"`
}

// UsedAuthCodeRetention is how long a store remembers an authorization
// code after it was taken (UsedAuthCode). It must outlive the code itself
// (60 s) plus the few seconds a redemption takes between taking the code
// and recording what it issued, so that every replay the code could still
// be presented in is recognised; the margin beyond that also catches a
// leaked code replayed minutes later. It costs one small key per
// redemption.
const UsedAuthCodeRetention = 10 * time.Minute

// UsedAuthCode is what the store remembers of an authorization code once
// it was taken, so that a second redemption can revoke what the first one
// issued (RFC 6749 §4.1.2, RFC 9700 §4.5).
type UsedAuthCode struct {
	Subject  string `json:"subject"`
	ClientID string `json:"client_id"`
	// Family is the refresh-token family issued for the code; "" when no
	// refresh token was issued (or not yet recorded).
	Family string `json:"family,omitempty"`
	// Access is the access token issued for the code; nil until recorded.
	Access *IssuedAccess `json:"access,omitempty"`
	// Replayed is set once the code was presented again after it was taken.
	Replayed bool `json:"replayed,omitempty"`
}

// SigningKey is a session-JWT signing key shared by all replicas.
type SigningKey struct {
	ID        string `json:"kid"`
	Algorithm string `json:"alg"` // EdDSA or ES256
	// PrivateKey is the PKCS #8 DER encoding of the private key.
	PrivateKey []byte    `json:"private_key"`
	CreatedAt  time.Time `json:"created_at"`
	// RetiredAt is set once a newer key signs; the key keeps verifying until
	// every token it signed has expired, then it is deleted.
	RetiredAt *time.Time `json:"retired_at,omitempty"`
	// Revision is the store revision that created the key, filled in by
	// SigningKeys. It orders keys the same way on every replica, whatever
	// their clocks say: the newest key is the one created last.
	Revision Revision `json:"-"`
}

// SubjectSnapshot is everything a decision needs about a subject, read at one revision.
type SubjectSnapshot struct {
	// Grants are the raw grants the subject holds (permissions and role references).
	Grants []string
	// User is the user record when the subject is "users/<id>" and that user
	// exists; nil otherwise.
	User *UserRecord
	// SessionRevoked reports whether the session id asked for was revoked.
	SessionRevoked bool
	// Revision is the store revision the snapshot was read at.
	Revision Revision
}

// ChangeKind says what kind of object a Change is about.
type ChangeKind uint8

// The kinds of change a Store reports from Watch.
const (
	// ChangeProgress carries no object: the store is current up to Revision.
	ChangeProgress   ChangeKind = iota
	ChangeGrant                 // Key is the resource whose grants changed
	ChangeToken                 // Key is the token digest
	ChangeSession               // Key is the revoked session id (jti)
	ChangeUser                  // Key is the user id
	ChangeClient                // Key is the client id
	ChangeSigningKey            // Key is the key id
)

// Change is one committed modification reported by Store.Watch.
type Change struct {
	Kind     ChangeKind
	Key      string
	Revision Revision
	// CommittedAt is when the writer committed the change, by the
	// writer's clock; zero when the store does not know (writes from
	// elsewhere, lease expiries). It measures how long invalidation took.
	CommittedAt time.Time
	// Revocation says the change took access away: the object was
	// deleted, or (ChangeSession) the session was revoked.
	Revocation bool
}

// Store is the persistent state behind authz. Every method is safe for
// concurrent use. Every write that touches several keys is atomic: it is
// committed whole or not at all. Reads are linearizable: a read started after
// a write returned sees that write. Strings passed in are canonical (authz
// validates them first); backends store them as given.
//
// Errors: ErrNotFound, ErrConflict as documented per method; ErrUnavailable
// (wrapped) when the backend could not be reached or timed out; ctx errors
// when ctx ends.
type Store interface {
	// CurrentRevision returns the newest committed revision.
	CurrentRevision(ctx context.Context) (Revision, error)

	// AddGrant makes resource hold grant (a canonical permission or role
	// reference) and indexes the pair for ResourcesWithGrant. Idempotent.
	AddGrant(ctx context.Context, resource, grant string) (Revision, error)
	// RemoveGrants removes the listed grants from resource in one atomic
	// write. Grants the resource does not hold are ignored.
	RemoveGrants(ctx context.Context, resource string, grants []string) (Revision, error)
	// Grants returns the raw grants of each resource, read in one round trip
	// at one revision. Resources holding nothing are absent from the map.
	Grants(ctx context.Context, resources []string) (map[string][]string, Revision, error)
	// ResourcesWithGrant returns, sorted, every resource that holds exactly
	// grant and whose name starts with prefix ("" for all).
	ResourcesWithGrant(ctx context.Context, grant, prefix string) ([]string, error)

	// Subject reads, in one round trip, the grants of subject, its user
	// record (when subject is "users/<id>") and, when jti is not empty,
	// whether that session was revoked.
	Subject(ctx context.Context, subject, jti string) (SubjectSnapshot, error)

	// CreateToken stores t with its id and subject indexes; when t.Family is
	// set, it also creates the family. When t.ExpiresAt is set, every key
	// written expires with it. ErrConflict if the digest or id exists.
	CreateToken(ctx context.Context, t TokenRecord) (Revision, error)
	// Token returns the token with that digest, or ErrNotFound.
	Token(ctx context.Context, digest string) (TokenRecord, error)
	// TokenByID returns the token with that id, or ErrNotFound.
	TokenByID(ctx context.Context, id string) (TokenRecord, error)
	// Tokens returns every stored token of subject, in no particular order.
	Tokens(ctx context.Context, subject string) ([]TokenRecord, error)
	// DeleteTokens deletes the tokens and their indexes in one atomic write;
	// tokens already gone are ignored.
	DeleteTokens(ctx context.Context, tokens []TokenRecord) (Revision, error)
	// RotateToken atomically marks old (a refresh token) used and creates
	// next in the same family. ErrNotFound if old does not exist;
	// ErrConflict if old was already used or its family was revoked — exactly
	// one of several concurrent rotations of the same token succeeds.
	RotateToken(ctx context.Context, old, next TokenRecord) (Revision, error)
	// RevokeFamily deletes the family and every token of subject in it, in
	// one atomic write; a rotation racing with it fails with ErrConflict.
	RevokeFamily(ctx context.Context, subject, family string) (Revision, error)

	// RevokeSession remembers that session jti is revoked until expires.
	RevokeSession(ctx context.Context, jti string, expires time.Time) (Revision, error)
	// SessionRevoked reports whether session jti is revoked.
	SessionRevoked(ctx context.Context, jti string) (bool, error)

	// CreateUser stores u, its login ids and grants in one atomic write.
	// ErrConflict (wrapped with which login id) if the id or a login id exists.
	CreateUser(ctx context.Context, u UserRecord, grants []string) (Revision, error)
	// User returns the user with that id, or ErrNotFound.
	User(ctx context.Context, id string) (UserRecord, error)
	// UserByLogin returns the user whose username or email equals login,
	// compared case-insensitively, or ErrNotFound.
	UserByLogin(ctx context.Context, login string) (UserRecord, error)
	// Users returns every user, in no particular order.
	Users(ctx context.Context) ([]UserRecord, error)
	// UpdateUser reads the user, calls update on a copy, and writes the
	// result in one atomic compare-and-set write together with its login-id
	// changes (new ids claimed, old ones freed) and the deletion of every
	// token of the user for which dropToken returns true (dropToken may be
	// nil). It retries on a lost race, calling update again. An error from
	// update is returned as is and nothing is written. ErrNotFound if the user
	// does not exist; ErrConflict if a new login id belongs to another user.
	UpdateUser(ctx context.Context, id string, update func(*UserRecord) error, dropToken func(TokenRecord) bool) (UserRecord, Revision, error)
	// DeleteUser deletes, in one atomic write, the user, its login ids, the
	// grants held by "users/<id>" (with their index), and every token of
	// that subject with their families. ErrNotFound if the user does not exist.
	DeleteUser(ctx context.Context, id string) (Revision, error)

	// CreateClient stores c; ErrConflict if the id exists.
	CreateClient(ctx context.Context, c ClientRecord) (Revision, error)
	// Client returns the client with that id, or ErrNotFound.
	Client(ctx context.Context, id string) (ClientRecord, error)
	// Clients returns every client, in no particular order.
	Clients(ctx context.Context) ([]ClientRecord, error)
	// DeleteClient deletes the client; ErrNotFound if it does not exist.
	DeleteClient(ctx context.Context, id string) (Revision, error)

	// PutAuthCode stores an authorization code under its digest until c.ExpiresAt.
	PutAuthCode(ctx context.Context, digest string, c AuthCode) error
	// TakeAuthCode atomically reads and deletes the code and, in the same
	// atomic write, remembers it as used for UsedAuthCodeRetention (a
	// UsedAuthCode holding the code's subject and client id): of several
	// concurrent calls exactly one gets it, the others get ErrNotFound, as
	// does a call after the code expired (which remembers nothing).
	TakeAuthCode(ctx context.Context, digest string) (AuthCode, error)
	// RecordAuthCodeIssue records, on the used code, the refresh-token
	// family (may be "") and the access token (may be nil) its redemption
	// issued. It is a compare-and-set against the record TakeAuthCode
	// wrote: ErrConflict if anything wrote it since (ReplayAuthCode, or an
	// earlier RecordAuthCodeIssue), ErrNotFound if there is no record.
	RecordAuthCodeIssue(ctx context.Context, digest, family string, access *IssuedAccess) error
	// ReplayAuthCode marks the used code as replayed and returns it
	// (Replayed set); ErrNotFound if no code with that digest was taken
	// within UsedAuthCodeRetention. Against a concurrent
	// RecordAuthCodeIssue exactly one order holds: either the record
	// returned names what was issued, or RecordAuthCodeIssue fails with
	// ErrConflict.
	ReplayAuthCode(ctx context.Context, digest string) (UsedAuthCode, error)

	// TakeLoginAttempt counts one sign-in attempt against account (an
	// opaque key without '/' chosen by authz), shared by every replica:
	// when fewer than limit attempts of account were counted in the last
	// window it counts this one and returns ok=true with an id for
	// ReturnLoginAttempt; otherwise it returns ok=false and when the oldest
	// counted attempt expires. Of any number of concurrent calls, at most
	// limit are counted in any window.
	TakeLoginAttempt(ctx context.Context, account string, limit int, window time.Duration) (id string, ok bool, retryAt time.Time, err error)
	// ReturnLoginAttempt uncounts the attempt with that id (the sign-in
	// succeeded, so it was no failure). Unknown and expired ids are ignored.
	ReturnLoginAttempt(ctx context.Context, account, id string) error

	// SigningKeys returns every stored signing key, in no particular
	// order, each with the revision that created it.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// AddSigningKey stores k; ErrConflict if a key with that id exists.
	AddSigningKey(ctx context.Context, k SigningKey) (Revision, error)
	// UpdateSigningKey overwrites an existing key (to retire it); ErrNotFound if absent.
	UpdateSigningKey(ctx context.Context, k SigningKey) (Revision, error)
	// DeleteSigningKey deletes a key; absent keys are ignored.
	DeleteSigningKey(ctx context.Context, id string) (Revision, error)

	// Watch calls fn, in revision order and from one goroutine, for every
	// change to grants, tokens, sessions, users, clients and signing keys
	// committed after revision after, and for progress notifications (a
	// progress at R: every change up to R was passed on; once the watch
	// is current, one follows the changes of each revision, since one
	// revision may change several objects), until
	// ctx ends (it then returns ctx.Err()) or the watch fails: ErrCompacted
	// when revision after+1 is no longer available, ErrUnavailable (wrapped)
	// otherwise. Watch never restarts itself; the caller resumes from the
	// last revision it saw.
	Watch(ctx context.Context, after Revision, fn func(Change)) error
}

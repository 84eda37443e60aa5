package etcdstore

import (
	"strings"
	"time"
)

// The key layout, relative to the Store's prefix. docs/etcd-layout.md
// documents it for operators; change both together, and bump SchemaVersion
// for any change an older Portcullis would misread.
const (
	keySchema = "schema"

	// txn/<32 hex digits>: markerValue, on a marker lease. Every write
	// transaction puts its own (see commitWrite), with the commit time: a
	// watcher reads, from the event at the same revision, when the change
	// it sees was committed. A re-read after an ambiguous failure puts one
	// too, as a fence.
	pfxTxnMarkers = "txn/"

	// committed-at: committedAtValue, the commit stamp of earlier versions,
	// which put it in every write transaction. Watchers still read it, so
	// that writes of an older replica are measured during an upgrade.
	keyCommittedAt = "committed-at"

	// grants/<resource>|<grant>: the resource holds the grant. Resources and
	// grants never contain '|', so "grants/<resource>|" lists exactly the
	// grants of one resource.
	pfxGrants = "grants/"
	// holders/<grant>|<resource>: reverse index of grants/, for
	// ResourcesWithGrant. Written in the same transaction.
	pfxHolders = "holders/"

	pfxUsers  = "users/"  // users/<id>: authz.UserRecord
	pfxLogins = "logins/" // logins/<lower-cased login id>: loginValue

	pfxTokens        = "tokens/"         // tokens/<digest>: authz.TokenRecord
	pfxTokenIDs      = "token-ids/"      // token-ids/<id>: digestValue
	pfxSubjectTokens = "subject-tokens/" // subject-tokens/<subject>|<id>: digestValue
	pfxFamilies      = "token-families/" // token-families/<family>: familyValue

	pfxRevokedSessions = "revoked-sessions/" // revoked-sessions/<jti>: sessionValue, on a lease

	pfxClients     = "clients/"      // clients/<id>: authz.ClientRecord
	pfxAuthCodes   = "auth-codes/"   // auth-codes/<digest>: authz.AuthCode, on a lease
	pfxSigningKeys = "signing-keys/" // signing-keys/<kid>: authz.SigningKey

	// used-auth-codes/<digest>: authz.UsedAuthCode, created in the same
	// transaction that deletes auth-codes/<digest>, on a lease of
	// authz.UsedAuthCodeRetention, so a replay can revoke what the code
	// was redeemed for.
	pfxUsedAuthCodes = "used-auth-codes/"

	// login-attempts/<account>/<id>: loginAttempt, one per counted sign-in
	// attempt, on a lease of one window.
	pfxLoginAttempts = "login-attempts/"
)

// userSubjectPrefix is how a user appears as a subject and as a resource.
const userSubjectPrefix = "users/"

func grantKey(resource, grant string) string  { return pfxGrants + resource + "|" + grant }
func grantsOf(resource string) string         { return pfxGrants + resource + "|" }
func holderKey(grant, resource string) string { return pfxHolders + grant + "|" + resource }
func holdersOf(grant string) string           { return pfxHolders + grant + "|" }

func userKey(id string) string     { return pfxUsers + id }
func loginKey(login string) string { return pfxLogins + strings.ToLower(login) }

func tokenKey(digest string) string { return pfxTokens + digest }
func tokenIDKey(id string) string   { return pfxTokenIDs + id }
func subjectTokenKey(subject, id string) string {
	return pfxSubjectTokens + subject + "|" + id
}
func subjectTokensOf(subject string) string { return pfxSubjectTokens + subject + "|" }
func familyKey(family string) string        { return pfxFamilies + family }

func sessionKey(jti string) string          { return pfxRevokedSessions + jti }
func clientKey(id string) string            { return pfxClients + id }
func authCodeKey(digest string) string      { return pfxAuthCodes + digest }
func usedAuthCodeKey(digest string) string  { return pfxUsedAuthCodes + digest }
func signingKeyKey(kid string) string       { return pfxSigningKeys + kid }
func loginAttemptsOf(account string) string { return pfxLoginAttempts + account + "/" }
func userSubject(id string) string          { return userSubjectPrefix + id }
func markerKey(id string) string            { return pfxTxnMarkers + id }

// The small JSON values of index keys. Readers of grants/ and holders/
// ignore the value entirely: an operator may write those keys by hand with
// any value, even an empty one.
type (
	grantValue struct {
		CreatedAt time.Time `json:"created_at"`
	}
	loginValue struct {
		UserID string `json:"user_id"`
	}
	digestValue struct {
		Digest string `json:"digest"`
	}
	familyValue struct {
		Subject string `json:"subject"`
	}
	sessionValue struct {
		ExpiresAt time.Time `json:"expires_at"`
	}
	committedAtValue struct {
		At time.Time `json:"at"`
	}
)

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }

package authz

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors returned (wrapped) by every operation in this package and by
// every store backend. The HTTP layer maps them to status codes with errors.Is;
// callers must never compare error strings.
var (
	// ErrInvalid marks bad input: a malformed permission, an unknown access
	// level, an empty or over-long field, invalid UTF-8. Maps to 400/422.
	// Nothing is written when an operation fails with it.
	ErrInvalid = errors.New("invalid argument")
	// ErrUnauthenticated means the token is missing, malformed, expired,
	// revoked, or belongs to a disabled or deleted user. Maps to 401.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied means the token is valid but does not grant the
	// requested permission. Maps to 403.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrNotFound means the addressed user, token, client or grant does not exist. Maps to 404.
	ErrNotFound = errors.New("not found")
	// ErrConflict means the object already exists (a login id is taken, a
	// client id is in use) or a compare-and-set lost a race. Maps to 409.
	ErrConflict = errors.New("already exists")
	// ErrUnavailable means the store could not be reached or did not answer
	// in time. A write that fails with it alone was not applied (stores
	// re-read a write whose answer was lost before reporting it); one that
	// also matches ErrOutcomeUnknown may or may not have been. Maps to 503.
	ErrUnavailable = errors.New("store unavailable")
	// ErrOutcomeUnknown means a write's answer was lost and the store could
	// not be re-read to settle whether it was applied: the caller must read
	// before retrying a write that is not idempotent. It always comes
	// wrapped with ErrUnavailable. Maps to 503.
	ErrOutcomeUnknown = errors.New("write outcome unknown, it may or may not have been applied")
	// ErrThrottled means too many sign-in attempts failed for an account;
	// the error is a *ThrottledError saying when to retry. Maps to 429.
	ErrThrottled = errors.New("too many failed sign-in attempts")
	// ErrCompacted is returned by Store.Watch when the requested start
	// revision has been compacted away: events may have been missed and every
	// cache must be flushed.
	ErrCompacted = errors.New("watch revision compacted")
)

// InvalidError describes which input was rejected and why. It matches
// ErrInvalid with errors.Is.
type InvalidError struct {
	Field  string // the parameter that was rejected, e.g. "permission"
	Reason string // a sentence fragment a client can show as is
}

func (e *InvalidError) Error() string {
	if e.Field == "" {
		return "invalid argument: " + e.Reason
	}
	return "invalid " + e.Field + ": " + e.Reason
}

// Is makes errors.Is(err, ErrInvalid) true for every *InvalidError.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(field, reason string) error { return &InvalidError{Field: field, Reason: reason} }

// OAuthError is an RFC 6749 §5.2 error from the token-issuing logic. The HTTP
// layer renders it as {"error": Code, "error_description": Description}.
type OAuthError struct {
	Code        string // invalid_request, invalid_client, invalid_grant, unauthorized_client, unsupported_grant_type, invalid_scope
	Description string
}

func (e *OAuthError) Error() string { return e.Code + ": " + e.Description }

func oauthError(code, desc string) error { return &OAuthError{Code: code, Description: desc} }

// ThrottledError is returned by password sign-ins while an account's
// failure budget is spent. It matches ErrThrottled with errors.Is.
type ThrottledError struct {
	RetryAfter time.Duration // until the counting window ends
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("too many failed sign-in attempts for this account; try again in %v", e.RetryAfter.Round(time.Second))
}

// Is makes errors.Is(err, ErrThrottled) true.
func (e *ThrottledError) Is(target error) bool { return target == ErrThrottled }

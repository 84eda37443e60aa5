package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/authz"
)

// A store outage is a 503 either way, but only a write whose outcome is
// unknown tells the client to read before retrying: a plain outage means
// the write was not applied and a retry is safe.
func TestStoreOutageProblems(t *testing.T) {
	var s Server
	unknown := fmt.Errorf("create token: %w", fmt.Errorf("%w: %w", authz.ErrUnavailable, authz.ErrOutcomeUnknown))
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"not applied", fmt.Errorf("create token: %w: %w", authz.ErrUnavailable, context.DeadlineExceeded), "store unavailable; try again"},
		{"outcome unknown", unknown, "read it back before retrying"},
		{"caller's deadline", context.DeadlineExceeded, "store unavailable; try again"},
	} {
		status, p := s.classify(tc.err)
		if status != http.StatusServiceUnavailable || !strings.Contains(p.Message, tc.want) {
			t.Errorf("%s: %d %q, want 503 containing %q", tc.name, status, p.Message, tc.want)
		}
	}
	if !errors.Is(unknown, authz.ErrUnavailable) {
		t.Fatal("an unknown outcome must still match ErrUnavailable")
	}
}

// Each layer that wraps an error may name the operation again; the
// problem says it once and does not repeat its own message.
func TestPublicReasonSaysThingsOnce(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		err  error
		want string
	}{
		{"already exists", fmt.Errorf("create user: %w", fmt.Errorf("create user: login id %q: %w", "alice", authz.ErrConflict)), `create user: login id "alice"`},
		{"not found", fmt.Errorf("update user: %w", fmt.Errorf("update user %q: %w", "u1", authz.ErrNotFound)), `update user "u1"`},
		{"unauthenticated", authz.ErrUnauthenticated, ""},
		{"unauthenticated", fmt.Errorf("%w: unknown token", authz.ErrUnauthenticated), "unknown token"},
		{"permission denied", fmt.Errorf("%w: scope a#read is not granted", authz.ErrPermissionDenied), "scope a#read is not granted"},
		{"not found", fmt.Errorf("revoke token: token id %q: %w", "t1", authz.ErrNotFound), `revoke token: token id "t1"`},
	} {
		if got := publicReason(tc.msg, tc.err); got != tc.want {
			t.Errorf("publicReason(%q, %q) = %q, want %q", tc.msg, tc.err, got, tc.want)
		}
	}
}

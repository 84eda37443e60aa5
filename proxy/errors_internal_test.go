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

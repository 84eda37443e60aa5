package authz_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

// gatedStore holds the next Token or Subject read, once armed, after it
// has read the store and until the gate opens: a read that was in flight
// when a revocation committed.
type gatedStore struct {
	authz.Store
	armed   atomic.Bool
	entered chan struct{}
	gate    chan struct{}
}

func newGatedStore(st authz.Store) *gatedStore {
	return &gatedStore{Store: st, entered: make(chan struct{}, 1), gate: make(chan struct{})}
}

func (g *gatedStore) hold() {
	if g.armed.CompareAndSwap(true, false) {
		g.entered <- struct{}{}
		<-g.gate
	}
}

func (g *gatedStore) Token(ctx context.Context, digest string) (authz.TokenRecord, error) {
	r, err := g.Store.Token(ctx, digest)
	g.hold()
	return r, err
}

func (g *gatedStore) Subject(ctx context.Context, subject, jti string) (authz.SubjectSnapshot, error) {
	r, err := g.Store.Subject(ctx, subject, jti)
	g.hold()
	return r, err
}

// A verification that starts after a revocation returned must not be
// answered by a store read that was in flight before it (coalescing of
// concurrent misses must not reach back in time).
func TestVerifyAfterRevokeIsNotServedByAnEarlierRead(t *testing.T) {
	for _, kind := range []string{"api token", "session"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := newGatedStore(openStore(t, embeddedEndpoints(t), ""))
			svc := startService(t, st, testConfig())
			mustUser(t, svc, authz.UserInput{Username: "tess", Password: "password1"})
			tok := login(t, svc, "tess", "password1").AccessToken
			if kind == "api token" {
				var err error
				if tok, _, _, err = svc.IssueToken(bg, authz.TokenSpec{Subject: "agents/t", Scopes: []string{"*#admin"}}); err != nil {
					t.Fatal(err)
				}
			}
			svc.Flush() // the first verification must read the store
			st.armed.Store(true)
			first := make(chan error, 1)
			go func() { first <- allowed(svc, tok, "") }()
			select {
			case <-st.entered: // the first verification read the token, still valid
			case <-time.After(10 * time.Second):
				t.Fatal("the first verification did not read the store")
			}
			if _, err := svc.RevokeToken(bg, nil, tok); err != nil {
				t.Fatal(err)
			}
			second := make(chan error, 1)
			go func() { second <- allowed(svc, tok, "") }()
			select {
			case err := <-second:
				close(st.gate)
				<-first
				if !errors.Is(err, authz.ErrUnauthenticated) {
					t.Fatalf("verify after the revocation returned: %v", err)
				}
				return
			case <-time.After(200 * time.Millisecond): // joined the held read
			}
			close(st.gate)
			<-first
			if err := <-second; !errors.Is(err, authz.ErrUnauthenticated) {
				t.Fatalf("verify after the revocation returned: %v", err)
			}
		})
	}
}

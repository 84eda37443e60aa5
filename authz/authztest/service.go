package authztest

import (
	"context"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
)

// FastConfig is the default configuration with the cheapest allowed bcrypt
// cost, so tests that create users stay fast, and small caches, because a
// test binary runs many services.
func FastConfig() authz.Config { return authz.Config{BcryptCost: 10, CacheMaxCost: 4 << 20} }

// Start builds a Service on st, runs its store watch until the test ends
// and waits until the watch is current (cached decisions are in play).
func Start(t testing.TB, st authz.Store, cfg authz.Config) *authz.Service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := authz.New(ctx, st, cfg)
	if err != nil {
		cancel()
		t.Fatalf("new authz service: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := svc.Run(ctx); err != nil {
			t.Errorf("authz service run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		svc.Close()
	})
	select {
	case <-svc.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("authz service: store watch not current after 20s")
	}
	return svc
}

package authz_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/store/etcdstore"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// One embedded etcd serves the whole package; every test gets its own key
// prefix, so tests stay independent and can run in parallel.
func TestMain(m *testing.M) { etcdtest.Main(m) }

var prefixSeq atomic.Int64

func embeddedEndpoints(t testing.TB) []string { return etcdtest.SharedEmbedded(t) }

// openStore opens a store on prefix ("" for a fresh one) of the etcd at
// endpoints; two stores on one prefix behave as two replicas.
func openStore(t testing.TB, endpoints []string, prefix string) *etcdstore.Store {
	t.Helper()
	if prefix == "" {
		return etcdtest.NewStore(t, endpoints)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: endpoints, Prefix: prefix, RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func testConfig() authz.Config { return authztest.FastConfig() }

func startService(t testing.TB, st authz.Store, cfg authz.Config) *authz.Service {
	t.Helper()
	return authztest.Start(t, st, cfg)
}

// newService returns a running Service on a fresh prefix of the shared embedded etcd.
func newService(t testing.TB) *authz.Service {
	t.Helper()
	return startService(t, openStore(t, embeddedEndpoints(t), ""), testConfig())
}

// newPrefix returns a key prefix no other test uses.
func newPrefix(name string) string {
	return fmt.Sprintf("/%s-%d-%d/", name, time.Now().UnixNano(), prefixSeq.Add(1))
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("%s: not true after %v", what, d)
		}
		time.Sleep(time.Millisecond)
	}
}

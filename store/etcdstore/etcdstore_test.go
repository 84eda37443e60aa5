package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/store/embedetcd"
	"github.com/portcullis/portcullis/store/etcdstore"
	"github.com/portcullis/portcullis/store/etcdtest"
	"github.com/portcullis/portcullis/store/storetest"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

var _ storetest.Compactor = (*etcdstore.Store)(nil)

// TestConformance runs the store contract against both kinds of etcd
// Portcullis supports: the embedded server and a real etcd process (the
// distribution's etcd 3.4, older than the client library). They are
// separate servers, so the two runs go in parallel.
func TestConformance(t *testing.T) {
	t.Run("Embedded", func(t *testing.T) {
		t.Parallel()
		endpoints := etcdtest.SharedEmbedded(t)
		storetest.RunAll(t, func(t *testing.T) authz.Store { return etcdtest.NewStore(t, endpoints) })
	})
	t.Run("External", func(t *testing.T) {
		t.Parallel()
		endpoints := etcdtest.SharedExternal(t)
		storetest.RunAll(t, func(t *testing.T) authz.Store { return etcdtest.NewStore(t, endpoints) })
	})
}

// TestHandWrittenGrant follows docs/etcd-layout.md: a grant written by an
// operator with etcdctl is read and watched like one written by Portcullis.
func TestHandWrittenGrant(t *testing.T) {
	endpoints := etcdtest.SharedExternal(t)
	s := etcdtest.NewStore(t, endpoints)
	ctx := t.Context()
	changes := watchFromNow(t, s)

	p := s.Prefix()
	// As documented: both keys in one transaction, each section of the
	// txn input ended by an empty line. The value may be empty.
	etcdtest.EtcdctlInput(t, endpoints, "\n"+
		"put "+p+"grants/users/alice|projects/p1#admin \"\"\n"+
		"put "+p+"holders/projects/p1#admin|users/alice \"\"\n\n\n",
		"txn")
	// And a single put with a JSON value, as the layout doc shows too.
	etcdtest.Etcdctl(t, endpoints, "put", p+"grants/users/alice|roles/viewer", `{"created_at":"2025-01-01T00:00:00Z"}`)

	got, _, err := s.Grants(ctx, []string{"users/alice"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"projects/p1#admin", "roles/viewer"}; !slices.Equal(got["users/alice"], want) {
		t.Errorf("Grants = %v, want %v", got, want)
	}
	if rs, err := s.ResourcesWithGrant(ctx, "projects/p1#admin", ""); err != nil || !slices.Equal(rs, []string{"users/alice"}) {
		t.Errorf("ResourcesWithGrant = %v, %v; want [users/alice]", rs, err)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case c := <-changes:
			if c.Kind == authz.ChangeGrant && c.Key == "users/alice" {
				return
			}
			if c.Kind != authz.ChangeProgress {
				t.Errorf("unexpected change %+v", c)
			}
		case <-timeout:
			t.Fatal("Watch did not report the hand-written grant")
		}
	}
}

// TestCorruptValue: a value an operator broke by hand is an error naming
// the key, not a panic and not "not found".
func TestCorruptValue(t *testing.T) {
	endpoints := etcdtest.SharedEmbedded(t)
	s := etcdtest.NewStore(t, endpoints)
	ctx := t.Context()
	p := s.Prefix()
	kv := s.EtcdClient().KV
	for _, k := range []string{"users/broken", "clients/broken", "tokens/broken", "logins/broken"} {
		if _, err := kv.Put(ctx, p+k, "{not json"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.User(ctx, "broken")
	checkCorrupt(t, err, "users/broken")
	_, err = s.Users(ctx)
	checkCorrupt(t, err, "users/broken")
	_, err = s.Subject(ctx, "users/broken", "")
	checkCorrupt(t, err, "users/broken")
	_, err = s.Client(ctx, "broken")
	checkCorrupt(t, err, "clients/broken")
	_, err = s.Token(ctx, "broken")
	checkCorrupt(t, err, "tokens/broken")
	_, err = s.UserByLogin(ctx, "broken")
	checkCorrupt(t, err, "logins/broken")
}

func checkCorrupt(t *testing.T, err error, key string) {
	t.Helper()
	if !errors.Is(err, etcdstore.ErrCorrupt) || !strings.Contains(err.Error(), key) {
		t.Errorf("reading corrupt %s: %v, want ErrCorrupt naming the key", key, err)
	}
}

func TestOpen(t *testing.T) {
	endpoints := etcdtest.SharedEmbedded(t)
	ctx := t.Context()

	t.Run("invalid config", func(t *testing.T) {
		for _, cfg := range []etcdstore.Config{
			{},
			{Endpoints: endpoints, Prefix: "portcullis/"},
			{Endpoints: endpoints, Prefix: "/portcullis"},
			{Endpoints: endpoints, RequestTimeout: -1},
		} {
			if _, err := etcdstore.Open(ctx, cfg); err == nil {
				t.Errorf("Open(%+v) succeeded", cfg)
			}
		}
	})

	t.Run("schema", func(t *testing.T) {
		// A store on a fresh prefix, only to learn one; Open again below.
		cfg := etcdstore.Config{Endpoints: endpoints, Prefix: etcdtest.NewStore(t, endpoints).Prefix()}
		s1, err := etcdstore.Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer s1.Close()
		resp, err := s1.EtcdClient().Get(ctx, cfg.Prefix+"schema")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"version":1}` {
			t.Fatalf("schema key after Open: %v, %v", resp, err)
		}
		// A second Open accepts the schema it finds.
		s2, err := etcdstore.Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		s2.Close()
		// A newer layout is refused, clearly.
		if _, err := s1.EtcdClient().Put(ctx, cfg.Prefix+"schema", `{"version":2}`); err != nil {
			t.Fatal(err)
		}
		_, err = etcdstore.Open(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "newer than this Portcullis understands") {
			t.Errorf("Open of a newer schema: %v", err)
		}
	})

	t.Run("Close leaves a caller's client open", func(t *testing.T) {
		c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := etcdstore.Open(ctx, etcdstore.Config{Client: c})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := c.Get(ctx, "x"); err != nil {
			t.Errorf("client unusable after the Store was closed: %v", err)
		}
	})
}

// TestUnavailable: when etcd is gone, calls fail with ErrUnavailable within
// the request timeout, and Watch ends with it when the Store closes.
func TestUnavailable(t *testing.T) {
	ctx := t.Context()
	srv := etcdtest.Embedded(t)
	s, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: srv.Endpoints(), RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	srv.Close()
	start := time.Now()
	_, err = s.CurrentRevision(ctx)
	if !errors.Is(err, authz.ErrUnavailable) {
		t.Errorf("CurrentRevision with etcd stopped: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("CurrentRevision took %s with a 1s request timeout", d)
	}
	_, err = s.AddGrant(ctx, "projects/p", "g")
	if !errors.Is(err, authz.ErrUnavailable) {
		t.Errorf("AddGrant with etcd stopped: %v, want ErrUnavailable", err)
	}

	// A watch cannot even start, and keeps trying until the Store closes.
	watchDone := make(chan error, 1)
	go func() { watchDone <- s.Watch(ctx, 0, func(authz.Change) {}) }()
	time.Sleep(100 * time.Millisecond)
	s.Close()
	select {
	case err := <-watchDone:
		if !errors.Is(err, authz.ErrUnavailable) {
			t.Errorf("Watch after Close: %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Watch did not return after the Store was closed")
	}

	// Opening against nothing fails the same way.
	_, err = etcdstore.Open(ctx, etcdstore.Config{Endpoints: srv.Endpoints(), DialTimeout: 500 * time.Millisecond, RequestTimeout: 500 * time.Millisecond})
	if !errors.Is(err, authz.ErrUnavailable) {
		t.Errorf("Open with etcd stopped: %v, want ErrUnavailable", err)
	}
}

// TestTxnTooLarge: a change beyond MaxTxnOps fails whole, before reaching
// etcd, instead of being split.
func TestTxnTooLarge(t *testing.T) {
	endpoints := etcdtest.SharedEmbedded(t)
	ctx := t.Context()
	s, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: endpoints, Prefix: "/txn-too-large/", MaxTxnOps: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	grants := []string{"g1", "g2", "g3", "g4", "g5", "g6"}
	_, err = s.CreateUser(ctx, authz.UserRecord{ID: "big", Username: "big"}, grants)
	if !errors.Is(err, etcdstore.ErrTxnTooLarge) {
		t.Fatalf("CreateUser with %d grants and MaxTxnOps 10: %v, want ErrTxnTooLarge", len(grants), err)
	}
	if _, err := s.User(ctx, "big"); !errors.Is(err, authz.ErrNotFound) {
		t.Errorf("a rejected CreateUser wrote the user: %v", err)
	}

	// A server whose --max-txn-ops is below MaxTxnOps refuses the
	// transaction itself; that must read the same way.
	srv, err := embedetcd.Start(ctx, embedetcd.Config{DataDir: t.TempDir(), MaxTxnOps: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	small, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	many := make([]string, 200)
	for i := range many {
		many[i] = fmt.Sprintf("projects/p%d#read", i)
	}
	_, err = small.CreateUser(ctx, authz.UserRecord{ID: "big", Username: "big"}, many)
	if !errors.Is(err, etcdstore.ErrTxnTooLarge) || errors.Is(err, authz.ErrUnavailable) {
		t.Errorf("CreateUser beyond the server's --max-txn-ops: %v, want ErrTxnTooLarge", err)
	}
}

// TestDeleteUserLeavesNoKeys checks DeleteUser against the key layout: once
// the only user is deleted, nothing but the schema key and the
// transaction markers is left, so no index entry or family can outlive it.
func TestDeleteUserLeavesNoKeys(t *testing.T) {
	endpoints := etcdtest.SharedEmbedded(t)
	s := etcdtest.NewStore(t, endpoints)
	ctx := t.Context()
	if _, err := s.CreateUser(ctx, authz.UserRecord{ID: "u", Username: "U", Email: "u@example.com"}, []string{"roles/a", "projects/p#read"}); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	r1 := authz.TokenRecord{ID: "r1", Digest: "d1", Subject: "users/u", Family: "f", ExpiresAt: &exp}
	r2 := authz.TokenRecord{ID: "r2", Digest: "d2", Subject: "users/u", Family: "f", ExpiresAt: &exp}
	api := authz.TokenRecord{ID: "api", Digest: "d3", Subject: "users/u"}
	for _, tk := range []authz.TokenRecord{r1, api} {
		if _, err := s.CreateToken(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RotateToken(ctx, r1, r2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteUser(ctx, "u"); err != nil {
		t.Fatal(err)
	}
	resp, err := s.EtcdClient().Get(ctx, s.Prefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), s.Prefix())
		// The writes' transaction markers stay until their lease ends.
		if !strings.HasPrefix(k, "txn/") {
			left = append(left, k)
		}
	}
	if !slices.Equal(left, []string{"schema"}) {
		t.Errorf("keys left after deleting the only user: %q", left)
	}
}

// watchFromNow watches s from its current revision until the test ends and
// returns the changes it reports.
func watchFromNow(t *testing.T, s *etcdstore.Store) <-chan authz.Change {
	t.Helper()
	start, err := s.CurrentRevision(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	changes := make(chan authz.Change, 100)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	go func() { _ = s.Watch(ctx, start, func(c authz.Change) { changes <- c }) }()
	return changes
}

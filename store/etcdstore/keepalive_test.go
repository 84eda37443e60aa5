package etcdstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/portcullis/portcullis/store/etcdstore"
	"github.com/portcullis/portcullis/store/etcdtest"
)

// TestDeadConnectionIsRedialled cuts the network between the Store and etcd
// and restores it for new connections only, as when a NAT or stateful
// firewall forgets its connections during an outage: the old connection
// never carries another byte, and nothing closes or resets it. Without
// keepalive pings the client kept using it, every request timing out, until
// the kernel gave up on the socket about 15 minutes later; with them the
// connection is dropped and redialled within KeepAliveTime +
// KeepAliveTimeout.
func TestDeadConnectionIsRedialled(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for gRPC keepalive (≥ 15 s)")
	}
	link := etcdtest.NewLink(t, etcdtest.External(t)[0])
	st, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: []string{link.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	read := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := st.CurrentRevision(ctx)
		return err
	}
	if err := read(); err != nil {
		t.Fatal(err)
	}

	link.Partition()
	cut := time.Now()
	if err := read(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read across a partition: %v, want the caller's deadline", err)
	}
	link.HealNewOnly()
	bound := etcdstore.DefaultKeepAliveTime + etcdstore.DefaultKeepAliveTimeout + 10*time.Second
	for {
		err := read()
		if err == nil {
			break
		}
		if time.Since(cut) > bound {
			t.Fatalf("still failing %v after the partition, with new connections working: %v", bound, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("reads work again %v after the partition", time.Since(cut).Round(time.Millisecond))
}

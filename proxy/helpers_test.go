package proxy_test

import (
	"context"
	"testing"

	"github.com/portcullis/portcullis/authz"
	"github.com/portcullis/portcullis/authz/authztest"
	"github.com/portcullis/portcullis/store/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

var bg = context.Background()

// newService returns a running authz service on a fresh prefix of the
// package's shared embedded etcd.
func newService(t *testing.T) *authz.Service {
	t.Helper()
	return authztest.Start(t, etcdtest.NewStore(t, etcdtest.SharedEmbedded(t)), authztest.FastConfig())
}

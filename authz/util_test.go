package authz_test

import (
	"crypto/sha256"
	"encoding/base64"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func s256(v string) string {
	sum := sha256.Sum256([]byte(v))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func clientv3WithPrefix() clientv3.OpOption { return clientv3.WithPrefix() }

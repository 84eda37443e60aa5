package authz

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"unsafe"
)

// randomString returns n random bytes from crypto/rand, base64url-encoded
// without padding. Secrets use n >= 20 (160 bits).
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// randomID returns an identifier of n random bytes in lower-case base32, so
// it is safe inside resource names and etcd keys.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return lowerBase32.EncodeToString(b)
}

// digest is the SHA-256 of a secret. Secrets are stored and cached only by it.
type digest [32]byte

// digestOf hashes s without copying it.
func digestOf(s string) digest {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(s), len(s)))
}

func (d digest) hex() string { return hex.EncodeToString(d[:]) }

// key64 is a cache key derived from the digest; entries keep the full digest
// and compare it, because uint64 keys are not collision-checked.
func (d digest) key64() uint64 {
	return uint64(d[0]) | uint64(d[1])<<8 | uint64(d[2])<<16 | uint64(d[3])<<24 |
		uint64(d[4])<<32 | uint64(d[5])<<40 | uint64(d[6])<<48 | uint64(d[7])<<56
}

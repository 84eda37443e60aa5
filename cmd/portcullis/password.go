package main

import (
	"crypto/rand"
	"encoding/base64"
)

// authzRandomPassword returns a 144-bit random password, URL-safe.
func authzRandomPassword() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

package authz

import "testing"

// A native app's loopback redirect URI registered without a port accepts
// any port (RFC 8252 §7.3) and nothing else: no other host, path, query,
// scheme, userinfo or malformed port slips through, and a URI registered
// with a port matches only itself.
func TestLoopbackPortVariant(t *testing.T) {
	cases := []struct {
		registered, requested string
		want                  bool
	}{
		{"http://127.0.0.1/callback", "http://127.0.0.1:53121/callback", true},
		{"http://127.0.0.1/callback", "http://127.0.0.1:1/callback", true},
		{"http://127.0.0.1/callback", "http://127.0.0.1:65535/callback", true},
		{"http://[::1]/cb?x=1", "http://[::1]:8080/cb?x=1", true},
		{"http://127.0.0.1", "http://127.0.0.1:8080", true},
		{"http://127.0.0.1/", "http://127.0.0.1:8080/", true},

		{"http://127.0.0.1/callback", "http://127.0.0.1/callback", false}, // exact: matched elsewhere
		{"http://127.0.0.1:9/callback", "http://127.0.0.1:10/callback", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:0/callback", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:080/callback", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:65536/callback", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:/callback", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:1234567/callback", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:80/callback/", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:80/callback?x", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:80/other", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:80@evil.example/callback", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1.evil.example:80/callback", false},
		{"http://127.0.0.1/callback", "https://127.0.0.1:80/callback", false},
		{"http://127.0.0.1/callback", "http://[::1]:80/callback", false},
		{"http://127.0.0.1/callback", "http://localhost:80/callback", false},
		{"http://localhost/callback", "http://localhost:80/callback", false},
		{"http://127.0.0.1.nip.io/callback", "http://127.0.0.1.nip.io:80/callback", false},
		{"https://app.example.com/cb", "https://app.example.com:8443/cb", false},
		{"http://127.0.0.1/callback", "http://127.0.0.1:80#/callback", false},
	}
	for _, c := range cases {
		if got := loopbackPortVariant(c.registered, c.requested); got != c.want {
			t.Errorf("loopbackPortVariant(%q, %q) = %v, want %v", c.registered, c.requested, got, c.want)
		}
	}
}

package proxy_test

import (
	"testing"

	"github.com/portcullis/portcullis/proxy"
)

// A method-override header that names another method than the request's
// own is refused in every dialect: the level is judged on the request's
// method, and an upstream honouring the override (Express's
// method-override, Google APIs) would run a DELETE that only write was
// checked for. The binary-level cases are in cmd/portcullis
// (TestAdversarialHeaderTrust).
func TestMethodOverrideHeadersAreRefused(t *testing.T) {
	sc := newSidecar(t) // alice: projects/p1#write
	base := sc.server(proxy.Config{})
	bearer := "Authorization: Bearer " + sc.token
	traefik := []string{"X-Forwarded-Method: POST", "X-Forwarded-Proto: https", "X-Forwarded-Host: x.example.com", "X-Forwarded-Uri: /projects/p1/a", bearer}
	nginx := []string{"X-Original-Uri: /projects/p1/a", "X-Original-Method: POST", "X-Forwarded-Host: x.example.com", bearer}
	for _, c := range []struct {
		name    string
		headers []string
		status  int
	}{
		{"traefik, no override", traefik, 200},
		{"traefik, X-HTTP-Method-Override: DELETE", append(traefik[:5:5], "X-HTTP-Method-Override: DELETE"), 400},
		{"traefik, X-HTTP-Method: delete", append(traefik[:5:5], "X-HTTP-Method: delete"), 400},
		{"traefik, X-Method-Override: PUT", append(traefik[:5:5], "X-Method-Override: PUT"), 400},
		{"traefik, override naming the same method", append(traefik[:5:5], "X-HTTP-Method-Override: post"), 200},
		{"traefik, two overrides, one different", append(traefik[:5:5], "X-HTTP-Method-Override: POST", "X-HTTP-Method-Override: DELETE"), 400},
		{"nginx, X-HTTP-Method-Override: DELETE", append(nginx[:4:4], "X-HTTP-Method-Override: DELETE"), 400},
		{"nginx, no override", nginx, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := send(t, "GET", base+"/auth/forward", c.headers...)
			if r.StatusCode != c.status {
				t.Errorf("%d, want %d", r.StatusCode, c.status)
			}
		})
	}
	// An explicit permission parameter fixes the permission: the method,
	// and so any override, does not enter into it.
	r := send(t, "GET", base+"/auth/forward?permission=projects%2Fp1%23write", bearer, "X-HTTP-Method-Override: DELETE")
	if r.StatusCode != 200 {
		t.Errorf("permission parameter with an override header: %d, want 200", r.StatusCode)
	}
}

package proxy

import "testing"

func TestIsForbiddenUpstreamHeader(t *testing.T) {
	for name, want := range map[string]bool{
		"X-Auth-Subject":    true,
		"x.auth.subject":    true,
		"X_AUTH_USER_ID":    true,
		"X-Auth-":           true,
		"X-Forwarded-For":   true,
		"x_forwarded_host":  true,
		"X-Original-Url":    true,
		"Forwarded":         true,
		"FORWARDED":         true,
		"X-Real-Ip":         true,
		"x.real.ip":         true,
		"Ct_token":          true,
		"ct-token":          true,
		"X-Auth":            false,
		"X-Authorization":   false,
		"Forwarded-For":     false,
		"Forwardedx":        false,
		"X-Real-Ip-Extra":   false,
		"Ct-Tokens":         false,
		"Authorization":     false,
		"X-Forwarde":        false,
		"X\u212aAuth-Thing": false, // non-ASCII never folds to ASCII
		"":                  false,
	} {
		if got := isForbiddenUpstreamHeader(name); got != want {
			t.Errorf("isForbiddenUpstreamHeader(%q) = %v, want %v", name, got, want)
		}
	}
}

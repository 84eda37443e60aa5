package etcdstore

import "testing"

func TestFixedProgressRequests(t *testing.T) {
	for v, want := range map[string]bool{
		"3.4.23": false, "3.4.24": true, "3.5.7": false, "3.5.8": true,
		"3.6.0": true, "3.6.16": true, "3.3.27": false, "4.0.0": true, "": false, "garbage": false,
	} {
		if got := fixedProgressRequests(v); got != want {
			t.Errorf("fixedProgressRequests(%q) = %v, want %v", v, got, want)
		}
	}
}

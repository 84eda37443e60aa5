package etcdstore

import "time"

// SetFenceTimings shortens, for tests, how long a write whose outcome is
// open is re-read and how long transaction markers live. Call it before s
// is used.
func SetFenceTimings(s *Store, fenceTimeout, markerTTL time.Duration) {
	s.fenceTimeout = fenceTimeout
	s.markers = newMarkerLeases(markerTTL)
}

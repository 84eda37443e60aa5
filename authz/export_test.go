package authz

// HoldAllHashSlots takes every slot of the password-hashing semaphore and
// returns the function that gives them back: while they are held, any
// call that would compare or compute a password hash waits, which shows
// from outside whether a path pays for a hash at all.
func (s *Service) HoldAllHashSlots() (release func()) {
	for range cap(s.hashSem) {
		s.hashSem <- struct{}{}
	}
	return func() {
		for range cap(s.hashSem) {
			<-s.hashSem
		}
	}
}

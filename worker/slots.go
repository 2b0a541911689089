package worker

import "sync"

// slots is a counting semaphore whose limit can change at run time (the
// autoscaler resizes it). Shrinking never interrupts holders: it only stops
// new acquisitions until enough slots are released.
type slots struct {
	mu     sync.Mutex
	cond   *sync.Cond
	limit  int
	held   int
	closed bool
}

func newSlots(limit int) *slots {
	s := &slots{limit: limit}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// acquire blocks until a slot is free; it returns false once closed.
func (s *slots) acquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.held >= s.limit && !s.closed {
		s.cond.Wait()
	}
	if s.closed {
		return false
	}
	s.held++
	return true
}

func (s *slots) release() {
	s.mu.Lock()
	s.held--
	s.mu.Unlock()
	s.cond.Broadcast()
}

func (s *slots) setLimit(n int) {
	s.mu.Lock()
	s.limit = n
	s.mu.Unlock()
	s.cond.Broadcast()
}

func (s *slots) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cond.Broadcast()
}

func (s *slots) stats() (held, limit int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held, s.limit
}

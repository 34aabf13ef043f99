package engine

// timerHeap is a binary min-heap of deadlines. Entries are never removed
// early: a connection whose deadline moved (or that is gone) is recognised
// when its entry reaches the top, by comparing the entry with the
// connection's current deadline and generation. That makes arming a timer
// O(log n) and cancelling it free, which is what per-connection idle
// timeouts on a million connections need.
type timerHeap []timerEntry

type timerEntry struct {
	at       int64 // monotonic nanoseconds (loop clock)
	c        *conn
	gen      uint32
	throttle bool // the bandwidth wake-up, not the connection's deadline
}

func (h *timerHeap) push(e timerEntry) {
	*h = append(*h, e)
	s := *h
	i := len(s) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if s[parent].at <= s[i].at {
			break
		}
		s[parent], s[i] = s[i], s[parent]
		i = parent
	}
}

// pop removes and returns the earliest entry; the heap must not be empty.
func (h *timerHeap) pop() timerEntry {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s[last] = timerEntry{} // drop the reference for the garbage collector
	s = s[:last]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(s) && s[l].at < s[m].at {
			m = l
		}
		if r < len(s) && s[r].at < s[m].at {
			m = r
		}
		if m == i {
			break
		}
		s[m], s[i] = s[i], s[m]
		i = m
	}
	*h = s
	return top
}

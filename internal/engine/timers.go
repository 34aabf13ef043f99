//go:build linux

package engine

// timerHeap is a binary min-heap of the deadlines of a loop's connections.
// A connection has at most one entry of each kind, and knows where it is
// (conn.timer), so a deadline that moves is fixed in place and the
// entries of a closed connection are removed at once: the heap holds
// exactly the connections that are open and waiting, never one that has
// gone. (Leaving entries to expire by themselves would keep a closed
// connection, or at least its entry, for as long as its idle timeout.)
// Arming, moving and removing are O(log n).
type timerHeap []timerEntry

type timerKind uint8

const (
	timerDeadline timerKind = iota // connect, header, idle and half-close timeouts
	timerThrottle                  // the bandwidth wake-up
	timerKinds
)

type timerEntry struct {
	at   int64 // monotonic nanoseconds (loop clock)
	c    *conn
	kind timerKind
}

// set arms c's timer of kind at at, or moves it there if it is armed.
func (h *timerHeap) set(c *conn, kind timerKind, at int64) {
	if i := c.timer[kind]; i > 0 {
		(*h)[i-1].at = at
		h.fix(int(i - 1))
		return
	}
	*h = append(*h, timerEntry{at: at, c: c, kind: kind})
	i := len(*h) - 1
	c.timer[kind] = int32(i + 1)
	h.up(i)
}

// armed returns when c's timer of kind fires, if it is armed.
func (h timerHeap) armed(c *conn, kind timerKind) (int64, bool) {
	if i := c.timer[kind]; i > 0 {
		return h[i-1].at, true
	}
	return 0, false
}

// stop disarms c's timer of kind.
func (h *timerHeap) stop(c *conn, kind timerKind) {
	if i := c.timer[kind]; i > 0 {
		h.remove(int(i - 1))
	}
}

// pop removes and returns the earliest entry; the heap must not be empty.
func (h *timerHeap) pop() timerEntry {
	top := (*h)[0]
	h.remove(0)
	return top
}

func (h *timerHeap) remove(i int) {
	s := *h
	s[i].c.timer[s[i].kind] = 0
	last := len(s) - 1
	if i != last {
		s[i] = s[last]
		s[i].c.timer[s[i].kind] = int32(i + 1)
	}
	s[last] = timerEntry{} // drop the reference for the garbage collector
	*h = s[:last]
	if i != last {
		h.fix(i)
	}
}

func (h timerHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].c.timer[h[i].kind] = int32(i + 1)
	h[j].c.timer[h[j].kind] = int32(j + 1)
}

func (h timerHeap) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if h[parent].at <= h[i].at {
			break
		}
		h.swap(parent, i)
		i = parent
	}
}

// down moves entry i towards the leaves; it reports whether it moved.
func (h timerHeap) down(i int) bool {
	start := i
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(h) && h[l].at < h[m].at {
			m = l
		}
		if r < len(h) && h[r].at < h[m].at {
			m = r
		}
		if m == i {
			return i != start
		}
		h.swap(m, i)
		i = m
	}
}

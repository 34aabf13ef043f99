package evloop

import "time"

// Timers is a binary min-heap of an event loop's deadlines. Each timer
// lives in a Slot of what it times (a connection, a session), where the
// heap keeps the timer's place: a deadline that moves is fixed in place,
// and a stopped timer leaves at once, so the heap holds exactly the timers
// armed, never one of a connection that has gone. Set, Stop and PopDue
// are O(log n). The zero value is an empty heap.
type Timers[T any] struct{ h heap[T] }

// Slot is a timer's place in its heap, plus one; 0 is a timer not armed.
type Slot int32

type timer[T any] struct {
	at   int64 // the loop's clock
	slot *Slot
	v    T
}

// WaitMillis is how long a loop whose clock reads now may wait for a
// deadline at: whole milliseconds, rounded up, and 0 once it has passed.
func WaitMillis(at, now int64) int {
	d := at - now
	if d <= 0 {
		return 0
	}
	return int((d + int64(time.Millisecond) - 1) / int64(time.Millisecond))
}

// Len is how many timers are armed.
func (t *Timers[T]) Len() int { return len(t.h) }

// First returns the earliest timer and its deadline; ok is false when
// none is armed.
func (t *Timers[T]) First() (v T, at int64, ok bool) {
	if len(t.h) == 0 {
		return v, 0, false
	}
	return t.h[0].v, t.h[0].at, true
}

// Set arms the timer in slot to fire at at with v, or moves it there
// (with v) if it is armed.
func (t *Timers[T]) Set(slot *Slot, v T, at int64) {
	if i := int(*slot) - 1; i >= 0 {
		t.h[i].at, t.h[i].v = at, v
		t.h.fix(i)
		return
	}
	t.h = append(t.h, timer[T]{at: at, slot: slot, v: v})
	i := len(t.h) - 1
	*slot = Slot(i + 1)
	t.h.up(i)
}

// Armed returns when the timer in slot fires, if it is armed.
func (t *Timers[T]) Armed(slot *Slot) (int64, bool) {
	if i := int(*slot) - 1; i >= 0 {
		return t.h[i].at, true
	}
	return 0, false
}

// Stop disarms the timer in slot, if it is armed.
func (t *Timers[T]) Stop(slot *Slot) {
	if i := int(*slot) - 1; i >= 0 {
		t.remove(i)
	}
}

// PopDue disarms and returns the earliest timer, and the slot it was
// in, if its deadline is at or before now.
func (t *Timers[T]) PopDue(now int64) (v T, slot *Slot, ok bool) {
	if len(t.h) == 0 || t.h[0].at > now {
		return v, nil, false
	}
	v, slot = t.h[0].v, t.h[0].slot
	t.remove(0)
	return v, slot, true
}

func (t *Timers[T]) remove(i int) {
	h := t.h
	*h[i].slot = 0
	last := len(h) - 1
	if i != last {
		h[i] = h[last]
		*h[i].slot = Slot(i + 1)
	}
	h[last] = timer[T]{} // drop the references for the garbage collector
	t.h = h[:last]
	if i != last {
		t.h.fix(i)
	}
}

// heap is the slice itself: its methods take it by value, so that the
// compiler keeps it in registers while the slots are written.
type heap[T any] []timer[T]

func (h heap[T]) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h heap[T]) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	*h[i].slot = Slot(i + 1)
	*h[j].slot = Slot(j + 1)
}

func (h heap[T]) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if h[parent].at <= h[i].at {
			break
		}
		h.swap(parent, i)
		i = parent
	}
}

// down moves timer i towards the leaves; it reports whether it moved.
func (h heap[T]) down(i int) bool {
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

// Package ilist is an intrusive doubly linked list: the links live in the
// elements, so adding, removing and moving an element cost O(1) and
// allocate nothing. pj keeps a loop's connections by age, a UDP socket's
// sessions by last use and the per-client table's idle entries in one.
package ilist

// Links are an element's place in a List: a field of the element. An
// element is in one list at a time, and always the same one.
type Links[T any] struct {
	prev, next *T
}

// Linked is what a List holds: a pointer to an element that knows its
// Links.
type Linked[T any] interface {
	*T
	Links() *Links[T]
}

// List is a list of elements, from the front (the first pushed) to the
// back. Its zero value is an empty list.
type List[T any, P Linked[T]] struct {
	head, tail P
}

// Front is the first element, or nil.
func (l *List[T, P]) Front() P { return l.head }

// Empty reports whether the list holds no element.
func (l *List[T, P]) Empty() bool { return l.head == nil }

// Next is the element after e, or nil.
func Next[T any, P Linked[T]](e P) P { return P(e.Links().next) }

// Contains reports whether e is in the list.
func (l *List[T, P]) Contains(e P) bool { return e.Links().prev != nil || l.head == e }

// PushBack adds e, which must not be in the list, at the back.
func (l *List[T, P]) PushBack(e P) {
	k := e.Links()
	k.prev, k.next = (*T)(l.tail), nil
	if l.tail != nil {
		l.tail.Links().next = (*T)(e)
	} else {
		l.head = e
	}
	l.tail = e
}

// Remove takes e out of the list; it does nothing if e is in none.
func (l *List[T, P]) Remove(e P) {
	if !l.Contains(e) {
		return
	}
	k := e.Links()
	if k.prev != nil {
		P(k.prev).Links().next = k.next
	} else {
		l.head = P(k.next)
	}
	if k.next != nil {
		P(k.next).Links().prev = k.prev
	} else {
		l.tail = P(k.prev)
	}
	k.prev, k.next = nil, nil
}

// MoveToBack moves e, if it is in the list, to the back.
func (l *List[T, P]) MoveToBack(e P) {
	if l.tail == e || !l.Contains(e) {
		return
	}
	l.Remove(e)
	l.PushBack(e)
}

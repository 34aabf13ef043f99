package evloop

import (
	"sync"
	"sync/atomic"
)

// Active counts what a set of loops holds open (connections, sessions),
// and closes the channels Idle handed out when the count falls to zero.
type Active struct {
	atomic.Int64
	mu   sync.Mutex
	idle []chan struct{} // closed when the count reaches zero
}

// Done counts one fewer open.
func (a *Active) Done() {
	if a.Add(-1) != 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.Load() != 0 {
		return
	}
	for _, ch := range a.idle {
		close(ch)
	}
	a.idle = nil
}

// Idle returns a channel closed once nothing is open.
func (a *Active) Idle() <-chan struct{} {
	ch := make(chan struct{})
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.Load() == 0 {
		close(ch)
		return ch
	}
	a.idle = append(a.idle, ch)
	return ch
}

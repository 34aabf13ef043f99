package server

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// listener is one bound socket. Its proxy is read per connection, so a
// reload can swap what the listener serves without closing the socket.
type listener struct {
	ln    *net.TCPListener
	addr  string // bound address, as logged
	proxy atomic.Pointer[Proxy]

	closeOnce sync.Once
	done      chan struct{} // closed when the listener is closed

	// accept error rate limiting; touched only by the accept loop
	lastErrLog time.Time
	suppressed int
}

func (l *listener) close() {
	l.closeOnce.Do(func() {
		close(l.done)
		_ = l.ln.Close() // nothing useful to do if closing a listener fails
	})
}

const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
	acceptLogEvery = 5 * time.Second
)

// acceptLoop accepts until the listener is closed. Errors such as EMFILE
// (out of descriptors) or ENOBUFS are waited out with an exponential
// back-off, as net/http does, so the loop recovers as soon as the condition
// clears; connections meanwhile wait in the kernel's accept queue.
func (s *Server) acceptLoop(l *listener) {
	var delay time.Duration
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, minAcceptDelay), maxAcceptDelay)
			s.logAcceptError(l, err, delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return
			}
			continue
		}
		if delay > 0 {
			s.log.Info("accepting again", "address", l.addr)
			delay = 0
		}
		s.connections.Add(1)
		s.active.Add(1)
		go s.handle(l, l.proxy.Load(), c)
	}
}

// logAcceptError logs an accept failure at most once per acceptLogEvery, with
// the number of failures not logged since.
func (s *Server) logAcceptError(l *listener, err error, delay time.Duration) {
	now := time.Now()
	if now.Sub(l.lastErrLog) < acceptLogEvery {
		l.suppressed++
		return
	}
	s.log.Error("accept failed; retrying", "address", l.addr, "error", err.Error(),
		"retry_in", delay.String(), "failures_not_logged", l.suppressed,
		"hint", acceptHint(err))
	l.lastErrLog = now
	l.suppressed = 0
}

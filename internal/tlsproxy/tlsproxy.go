// Package tlsproxy is pj's data path for connections that need TLS in user
// space: terminated (pj completes the client's handshake), originated (pj
// opens TLS to the backend), or both. Plain relays stay in the engine's
// event loops, which never block; a connection that needs crypto is handed
// over here as a net.Conn (the engine turns its descriptor into one with
// os.NewFile and net.FileConn) and lives in one goroutine per direction.
//
// A handed-over connection goes through the same steps as one of the
// engine's, each bounded in time: the client's TLS handshake (within the
// connect timeout), the choice of a backend and the connect to it (with
// failover, passive health observations and the backend's own TLS
// handshake), the relay (half-close in each direction, idle timeout), and
// at the end the same observe.Conn record, so logs, metrics and the admin
// API do not tell the two paths apart.
package tlsproxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/warm"
)

// Route is where a handed-over connection goes, and how TLS applies to it.
// It is immutable and shared by every connection it applies to.
type Route struct {
	// Proxy is the proxy's name, for logs and metrics.
	Proxy string
	// Name is the route's name, logged as route=; empty for a proxy
	// configured without routes.
	Name     string
	Backends *balance.Set
	// Rise and Fall are the thresholds of passive health checks (failed
	// and successful connects), as for the engine.
	Rise, Fall int
	// ConnectTimeout bounds each phase before the relay: the client's
	// TLS handshake, and reaching a backend (connect, PROXY header and
	// TLS handshake, over all backends tried).
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection idle in both directions this
	// long; 0 means never.
	IdleTimeout time.Duration
	// HalfCloseTimeout ends a connection whose one direction has ended
	// when the other has been silent this long; 0 means never.
	HalfCloseTimeout time.Duration
	// ProxyProtocol is the PROXY protocol version sent to backends
	// before anything else (before TLS): 0 (none), 1 or 2.
	ProxyProtocol byte
	// Stats are the proxy's counters, shared with the engine.
	Stats *observe.ProxyStats

	// Terminate, if set, completes the client's TLS handshake with
	// the proxy's certificates; nil relays the client's bytes as they
	// come.
	Terminate *Terminator
	// Originate, if set, opens TLS to the backend; nil connects with
	// plain TCP.
	Originate *Dialer
	// Warm, if set, holds connections to the backends opened before
	// clients need them (with Originate, through the handshake too).
	Warm *warm.Pools
}

// Handoff is one accepted connection given to Server.Serve. Serve owns
// Conn from then on and closes it.
type Handoff struct {
	Conn net.Conn
	ID   uint64
	// Client is the client's address (from the PROXY header a trusted
	// peer sent, if any).
	Client netip.AddrPort
	// Local is the address the client connected to, for the PROXY
	// header sent to backends; zero means Conn's local address.
	Local    netip.AddrPort
	Listener string // the listener's address, as logged
	Accepted time.Time
	// Peeked are bytes already read from Conn (a route decider's look at
	// the ClientHello); they are read again first.
	Peeked []byte
	Route  *Route
	// Done, if set, is called once, last, after the connection's record
	// is logged and counted: the engine releases its reservations
	// (active counts, caps, the per-client count) there.
	Done func()
}

// Sentinel causes of connections pj ends itself; each has its status.
var (
	ErrIdleTimeout = errors.New("idle timeout")
	// ErrHalfCloseTimeout ends a connection whose one direction had
	// ended and whose other one was then silent for the half-close
	// timeout.
	ErrHalfCloseTimeout = errors.New("half-close timeout")
	ErrKilled           = errors.New("closed through the admin API")
	errPanic            = errors.New("panic")
)

// Server runs handed-over connections and keeps the table of those open,
// for the admin API, for Kill and for the cuts of a shutdown.
type Server struct {
	log *slog.Logger

	mu     sync.Mutex
	conns  map[uint64]*session
	wg     sync.WaitGroup
	panics atomic.Uint64
}

// NewServer returns a Server that logs through log.
func NewServer(log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{log: log, conns: map[uint64]*session{}}
}

// Serve runs h in a goroutine of its own and returns at once.
func (s *Server) Serve(h Handoff) {
	ss := newSession(s, h)
	s.mu.Lock()
	s.conns[h.ID] = ss
	s.mu.Unlock()
	s.wg.Go(func() { s.run(ss) })
}

func (s *Server) run(ss *session) {
	defer func() {
		if v := recover(); v != nil {
			s.panics.Add(1)
			s.log.Error("panic while handling a TLS connection; the connection was closed and pj goes on",
				"conn", ss.h.ID, "client", ss.h.Client.String(), "error", errorText(v), "stack", string(debug.Stack()))
			ss.abort(errPanic)
			ss.finish(observe.StatusError, errPanic)
		}
	}()
	ss.run()
}

// Active returns the number of handed-over connections open now.
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Panics returns how many connections were closed because handling them
// panicked.
func (s *Server) Panics() uint64 { return s.panics.Load() }

// Wait returns once every connection Serve was given has ended.
func (s *Server) Wait() { s.wg.Wait() }

// ConnInfo describes one open connection, for the admin API.
type ConnInfo struct {
	ID       uint64
	Proxy    string
	Route    string // of a proxy with routes
	Client   netip.AddrPort
	Listener string
	Backend  string // "" while no backend has answered
	Started  time.Time
	Up, Down int64 // bytes delivered so far
	TLS, SNI string
}

// Connections returns the connections open now, in no particular order.
func (s *Server) Connections() []ConnInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ConnInfo, 0, len(s.conns))
	for _, ss := range s.conns {
		out = append(out, ss.info())
	}
	return out
}

// Kill closes connection id (status "killed"); it reports whether the
// connection was open here.
func (s *Server) Kill(id uint64) bool {
	s.mu.Lock()
	ss := s.conns[id]
	s.mu.Unlock()
	if ss == nil {
		return false
	}
	ss.abort(ErrKilled)
	return true
}

// Cut closes the connections of listener ("" for every listener) with
// cause (status "shutdown"): the end of a grace period.
func (s *Server) Cut(listener string, cause error) {
	s.mu.Lock()
	var cut []*session
	for _, ss := range s.conns {
		if listener == "" || ss.h.Listener == listener {
			cut = append(cut, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range cut {
		ss.abort(&shutdownError{cause})
	}
}

// shutdownError marks the cause of a cut.
type shutdownError struct{ cause error }

func (e *shutdownError) Error() string {
	if e.cause == nil {
		return "shutdown"
	}
	return e.cause.Error()
}

func (e *shutdownError) Unwrap() error { return e.cause }

func (s *Server) forget(ss *session) {
	s.mu.Lock()
	delete(s.conns, ss.h.ID)
	s.mu.Unlock()
}

// statusOf is the status of a connection pj ended with cause.
func statusOf(cause error) observe.Status {
	var sd *shutdownError
	switch {
	case errors.Is(cause, ErrIdleTimeout), errors.Is(cause, ErrHalfCloseTimeout):
		return observe.StatusTimeout
	case errors.Is(cause, ErrKilled):
		return observe.StatusKilled
	case errors.As(cause, &sd):
		return observe.StatusShutdown
	case errors.Is(cause, errPanic):
		return observe.StatusError
	}
	return observe.StatusReset
}

// FromFD turns a connected TCP socket's descriptor into a net.Conn served
// by Go's poller: what the engine calls to hand a connection over. It
// takes fd over whatever happens: fd is closed before FromFD returns (the
// net.Conn has a duplicate of its own). fd may be blocking or not.
func FromFD(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	if f == nil {
		return nil, fmt.Errorf("hand over %s: descriptor %d is not valid", name, fd)
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("hand over %s: %w", name, err)
	}
	return c, nil
}

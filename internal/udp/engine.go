//go:build linux

package udp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
)

// Options configure an Engine.
type Options struct {
	Logger *slog.Logger
	// Loops is the number of event loops; 0 means one per processor Go
	// may use.
	Loops int
	// IDs numbers sessions; the TCP engine shares it, so that an id names
	// one connection or session in the admin API. Nil: the engine's own.
	IDs *atomic.Uint64
}

// Engine runs the UDP event loops and the listeners registered with it.
type Engine struct {
	log    *slog.Logger
	loops  []*loop
	ids    *atomic.Uint64
	active evloop.Active // sessions open
	panics atomic.Uint64
	start  time.Time
	nextLn atomic.Uint32

	maxSessions atomic.Int64 // the cap of the whole process; 0: none
}

var (
	// ErrShutdown ends sessions cut when the grace period is over
	// (status "shutdown").
	ErrShutdown = errors.New("grace period over")
	// ErrKilled ends a session closed through the admin API ("killed").
	ErrKilled = errors.New("closed by an operator")
	// ErrIdleTimeout ends a session without a datagram either way for
	// the idle timeout ("timeout").
	ErrIdleTimeout = errors.New("idle timeout")
	// errEvicted ends the least recently active session when a new one
	// needs its place at the cap ("limit").
	errEvicted = errors.New("evicted: the session cap was reached and this session was the least recently active")
	// errNoBackendLeft ends a session whose every backend refused.
	errNoBackendLeft = errors.New("every backend refused")
)

// New starts the event loops.
func New(opt Options) (*Engine, error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{log: log, ids: opt.IDs, start: time.Now()}
	if e.ids == nil {
		e.ids = new(atomic.Uint64)
	}
	n := opt.Loops
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	for i := range n {
		l, err := newLoop(e, i)
		if err != nil {
			e.Close()
			return nil, err
		}
		e.loops = append(e.loops, l)
	}
	for _, l := range e.loops {
		go l.run()
	}
	return e, nil
}

// Loops is the number of event loops: Bind as many sockets per listener.
func (e *Engine) Loops() int { return len(e.loops) }

// Listener is a UDP listen address served by the engine.
type Listener struct {
	id    uint32
	addr  string // as logged: "0.0.0.0:5353/udp"
	socks []*lsock
	proxy atomic.Pointer[proxy.Proxy]
	// draining: no new sessions; each socket closes once its sessions
	// have ended.
	draining atomic.Bool
	drops    drops
	// evictTurn picks the socket asked next to evict a quiet session
	// for a newcomer that found the cap (see evictElsewhere).
	evictTurn atomic.Uint32
}

// Addr is the bound address as logged, with its /udp.
func (ln *Listener) Addr() string { return ln.addr }

// Proxy returns what new sessions of this listener are relayed by.
func (ln *Listener) Proxy() *proxy.Proxy { return ln.proxy.Load() }

// SetProxy changes what new sessions are relayed by; established ones keep
// the proxy they started with.
func (ln *Listener) SetProxy(p *proxy.Proxy) { ln.proxy.Store(p) }

// Dropped returns how many datagrams the listener dropped, by reason.
func (ln *Listener) Dropped() map[string]uint64 { return ln.drops.snapshot() }

// Listen serves the sockets of s, which the engine now owns: socket i is
// read by loop i.
func (e *Engine) Listen(s *Sockets, p *proxy.Proxy) (*Listener, error) {
	if len(s.fds) == 0 {
		return nil, fmt.Errorf("serve %s/udp: no socket", s.local)
	}
	ln := &Listener{id: e.nextLn.Add(1), addr: s.local.String() + "/udp"}
	ln.proxy.Store(p)
	for _, fd := range s.fds {
		ln.socks = append(ln.socks, &lsock{ln: ln, fd: fd, family: s.family, wildcard: s.wildcard})
	}
	s.fds = nil
	var errs []error
	// One socket per loop as bound; sockets handed over by a process
	// with more loops share them (a loop serves any number).
	for i, ls := range ln.socks {
		l := e.loops[i%len(e.loops)]
		if err := l.poll.Call(l, func(l *loop) error { return l.addSocket(ls) }); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		e.CloseListener(ln, ErrShutdown)
		return nil, fmt.Errorf("serve %s: %w", ln.addr, err)
	}
	return ln, nil
}

// Drain stops ln from taking new sessions; its sessions go on, answered
// through its sockets, which close as the last session of each ends. A
// reload that removes the listener and a shutdown drain it.
func (e *Engine) Drain(ln *Listener) {
	ln.draining.Store(true)
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error { l.drained(ln); return nil })
	}
}

// CloseListener ends the sessions of ln with cause and closes its sockets.
func (e *Engine) CloseListener(ln *Listener, cause error) {
	ln.draining.Store(true)
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error { l.cut(ln, cause); l.drained(ln); return nil })
	}
}

// CutListener ends the sessions of ln still open, with cause.
func (e *Engine) CutListener(ln *Listener, cause error) { e.CloseListener(ln, cause) }

// Active returns the number of sessions open now.
func (e *Engine) Active() int64 { return e.active.Load() }

// Panics returns how many sessions were closed because handling them
// panicked.
func (e *Engine) Panics() uint64 { return e.panics.Load() }

// Idle returns a channel closed once no session is open.
func (e *Engine) Idle() <-chan struct{} { return e.active.Idle() }

// SetMaxConnections caps the sessions of the whole process (0: no cap).
func (e *Engine) SetMaxConnections(n int) { e.maxSessions.Store(int64(n)) }

// Cut ends every session with cause.
func (e *Engine) Cut(cause error) {
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error { l.cut(nil, cause); return nil })
	}
}

// Close cuts the sessions still open, closes every socket and stops the
// loops.
func (e *Engine) Close() {
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error {
			l.cut(nil, ErrShutdown)
			for _, ls := range l.socks {
				l.closeSocket(ls)
			}
			return nil
		})
		l.poll.Stop()
	}
}

// now is the loops' monotonic clock.
func (e *Engine) now() int64 { return int64(time.Since(e.start)) }

func (e *Engine) logSession(rec *observe.Conn) {
	observe.Log(context.Background(), e.log, rec)
}

// SessionInfo describes one open session, for the admin API.
type SessionInfo struct {
	ID                 uint64
	Proxy              string
	Client             netip.AddrPort
	Listener           string
	Backend            string // "" while the session has none
	Started            time.Time
	Up, Down           int64 // bytes relayed so far
	DgramsUp, DgramsDn int64
}

// Sessions returns the sessions open now, in no particular order.
func (e *Engine) Sessions() []SessionInfo {
	var out []SessionInfo
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error {
			for _, s := range l.table {
				si := SessionInfo{ID: s.id, Proxy: s.proxy.Name, Client: s.key.addrPort(), Listener: s.ls.ln.addr,
					Started: s.started, Up: s.up.bytes, Down: s.down.bytes, DgramsUp: s.up.dgrams, DgramsDn: s.down.dgrams}
				if s.fd >= 0 {
					si.Backend = s.backend.Address
				}
				out = append(out, si)
			}
			return nil
		})
	}
	return out
}

// Kill ends session id (status "killed"); it reports whether it was open.
func (e *Engine) Kill(id uint64) bool {
	found := false
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error {
			for _, s := range l.table {
				if s.id == id {
					l.close(s, StatusOf(ErrKilled), ErrKilled)
					found = true
					return nil
				}
			}
			return nil
		})
	}
	return found
}

// StatusOf maps the end of a session to its log status.
func StatusOf(err error) observe.Status {
	switch {
	case err == nil:
		return observe.StatusOK
	case errors.Is(err, ErrIdleTimeout):
		return observe.StatusTimeout
	case errors.Is(err, ErrShutdown):
		return observe.StatusShutdown
	case errors.Is(err, ErrKilled):
		return observe.StatusKilled
	case errors.Is(err, errEvicted):
		return observe.StatusLimit
	case errors.Is(err, errNoBackendLeft):
		return observe.StatusConnectFailed
	}
	return observe.StatusError
}

// drops counts the datagrams a listener did not relay, by reason.
type drops struct {
	counts [numDropReasons]atomic.Uint64
	dirty  atomic.Bool // counts changed since the last report
	mu     sync.Mutex
	logged time.Time
	since  [numDropReasons]uint64 // counts at the last log line
}

type dropReason uint8

// Why a datagram was not relayed; the names are the metric's reason label.
const (
	dropDenied      dropReason = iota // the allow/deny lists refuse its source
	dropRateLimited                   // its source opens sessions too fast
	dropLimit                         // a session cap is reached
	dropNoBackend                     // no backend is eligible for a new session
	dropDraining                      // the listener takes no new sessions
	dropSendFailed                    // the kernel would not send it on
	numDropReasons
)

// DropReasons names the reasons, in their order.
var DropReasons = [numDropReasons]string{"denied", "rate_limited", "limit", "no_backend", "draining", "send_failed"}

func (d *drops) snapshot() map[string]uint64 {
	m := make(map[string]uint64, numDropReasons)
	for i := range d.counts {
		m[DropReasons[i]] = d.counts[i].Load()
	}
	return m
}

// dropLogEvery bounds the warnings about dropped datagrams: a flood of
// spoofed sources must not become a flood of log lines.
const dropLogEvery = 5 * time.Second

// report logs, at most once every dropLogEvery, what a listener dropped
// since the last time.
func (d *drops) report(log *slog.Logger, ln *Listener, now time.Time) {
	d.mu.Lock()
	if now.Sub(d.logged) < dropLogEvery {
		d.mu.Unlock()
		return
	}
	d.logged = now
	d.dirty.Store(false)
	args := []any{"address", ln.addr}
	for i := range d.counts {
		c := d.counts[i].Load()
		if n := c - d.since[i]; n > 0 {
			args = append(args, DropReasons[i], n)
		}
		d.since[i] = c
	}
	d.mu.Unlock()
	if len(args) > 2 {
		log.Warn("udp: datagrams dropped since the last report (pj_udp_dropped_datagrams_total counts them all)", args...)
	}
}

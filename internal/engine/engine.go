//go:build linux

// Package engine is pj's event-driven data path for plain TCP on Linux.
//
// A few event loops (one per CPU) each own an epoll instance. Every
// listening socket is registered in all of them with EPOLLEXCLUSIVE, so the
// kernel wakes one loop per new connection. The loop that accepts a
// connection owns it for its whole life: it chooses a backend, connects
// without blocking (failing over to the next backend within the client's
// connection), then relays both directions, each ending on its own.
//
// A quiet connection costs its two sockets and a small struct: no
// goroutine, no buffer, no pipe. Small messages are moved with read/write
// through a loop-owned buffer (two system calls, no pipe); a direction that
// fills that buffer switches to splice(2) through a pipe taken from a
// loop-owned pool for as long as bytes are in flight.
package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/ilist"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/tlsproxy"
)

// Options configure an Engine.
type Options struct {
	Logger *slog.Logger
	// Loops is the number of event loops; 0 means one per CPU available
	// to Go (GOMAXPROCS).
	Loops int
	// IDs numbers connections; the UDP engine shares it, so that an id
	// names one connection or session in the admin API. Nil: the
	// engine's own.
	IDs *atomic.Uint64

	onOpen func()             // see Engine.onOpen
	onPeek func(buffered int) // see Engine.onPeek
	// fault, if set, runs at named points of a connection's handling;
	// tests make it panic there.
	fault func(point string)
	// perTurn, if set, replaces maxPerTurn (tests).
	perTurn int
	// newLoop, if set, runs before loop i is created; an error it returns
	// stands for that loop's failure (tests).
	newLoop func(i int) error
}

// Engine runs the event loops and the listeners registered with it.
type Engine struct {
	log    *slog.Logger
	loops  []*loop
	nextID *atomic.Uint64
	active evloop.Active // connections open
	panics atomic.Uint64
	start  time.Time // origin of the loops' monotonic clock
	// tls runs the connections handed over to the TLS path.
	tls *tlsproxy.Server

	maxConns atomic.Int64 // the cap of the whole process; 0: none
	capped   atomic.Int32 // listeners unwatched by a loop because of a cap
	capLog   observe.Sometimes

	// onOpen, if set, runs for every accepted connection before its
	// backend is dialled; tests use it to inject a fault.
	onOpen func()
	// onPeek, if set, runs each time a connection choosing its route has
	// read, with the bytes it holds; tests pace a client's writes by it.
	onPeek  func(buffered int)
	fault   func(point string)
	perTurn int // see maxPerTurn
}

// ErrShutdown is the cause of connections cut when the grace period ends;
// they are logged with status "shutdown".
var ErrShutdown = errors.New("grace period over")

// New starts the event loops.
func New(opt Options) (*Engine, error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{log: log, start: time.Now(), onOpen: opt.onOpen, onPeek: opt.onPeek, fault: opt.fault, nextID: opt.IDs,
		tls: tlsproxy.NewServer(log)}
	e.capLog.Every = acceptLogEvery
	e.perTurn = maxPerTurn
	if opt.perTurn > 0 {
		e.perTurn = opt.perTurn
	}
	if e.nextID == nil {
		e.nextID = new(atomic.Uint64)
	}
	n := opt.Loops
	if n <= 0 {
		n = numLoops()
	}
	for i := range n {
		var l *loop
		var err error
		if opt.newLoop != nil {
			err = opt.newLoop(i)
		}
		if err == nil {
			l, err = newLoop(e, i)
		}
		if err != nil {
			// Every loop in e.loops runs already, so Close can stop them.
			e.Close()
			return nil, fmt.Errorf("event loop %d: %w", i, err)
		}
		e.loops = append(e.loops, l)
		go l.run()
	}
	return e, nil
}

// Loops is the number of event loops.
func (e *Engine) Loops() int { return len(e.loops) }

// Listener is a listening socket served by the engine.
type Listener struct {
	fd    int
	addr  string
	proxy atomic.Pointer[proxy.Proxy]

	// Accept errors, and accepting again after them, are logged at most
	// once per interval per listener, across loops.
	errLog, againLog observe.Sometimes

	closed atomic.Bool // CloseListener has run
}

// Addr is the bound address, as logged.
func (ln *Listener) Addr() string { return ln.addr }

// Proxy returns what new connections of this listener are relayed by.
func (ln *Listener) Proxy() *proxy.Proxy { return ln.proxy.Load() }

// SetProxy changes what new connections are relayed by; established ones
// keep the proxy they started with.
func (ln *Listener) SetProxy(p *proxy.Proxy) { ln.proxy.Store(p) }

// Listen starts accepting on fd, a bound and listening non-blocking TCP
// socket that the engine now owns.
func (e *Engine) Listen(fd int, addr string, p *proxy.Proxy) (*Listener, error) {
	ln := &Listener{fd: fd, addr: addr}
	ln.errLog.Every, ln.againLog.Every = acceptLogEvery, acceptLogEvery
	ln.proxy.Store(p)
	var errs []error
	for _, l := range e.loops {
		if err := l.poll.Call(l, func(l *loop) error { return l.addListener(ln) }); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		e.CloseListener(ln)
		return nil, fmt.Errorf("serve %s: %w", addr, err)
	}
	return ln, nil
}

// CloseListener stops accepting on ln and closes its socket. Connections
// it accepted go on, and so do those whose handshake had completed: the
// clients waiting in the accept queue are accepted and served (over a
// connection cap if need be), not reset by the close. Closing a listener
// twice does nothing.
func (e *Engine) CloseListener(ln *Listener) {
	if !ln.closed.CompareAndSwap(false, true) {
		return
	}
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error { l.removeListener(ln); return nil })
	}
	e.drain(ln)
	_ = unix.Close(ln.fd) // no loop refers to it any more
}

// maxDrain bounds the connections drain takes: an accept queue holds at
// most net.core.somaxconn (4096 by default) of them.
const maxDrain = 1 << 16

// drain accepts what waits in the accept queue of a listener no loop
// watches any more, and hands each connection to the least loaded loop.
// A handshake that completes between the last accept and the close is
// reset by the kernel: that window is the time of one system call.
func (e *Engine) drain(ln *Listener) {
	var rsa unix.RawSockaddrAny
	p := ln.Proxy()
	for range maxDrain {
		fd, err := accept4(ln.fd, &rsa)
		switch {
		case err == nil:
		case acceptSkipped(err):
			continue
		case err == unix.EAGAIN:
			return
		default: // out of descriptors: those left are lost with the socket
			e.logAcceptError(ln, os.NewSyscallError("accept4", err), 0)
			return
		}
		// Counted like any connection, but over the caps: the
		// alternative is a reset.
		e.active.Add(1)
		p.Stats.Active.Add(1)
		target := e.loops[0]
		for _, o := range e.loops {
			if o.load.Load() < target.load.Load() {
				target = o
			}
		}
		target.load.Add(1)
		client := addrPort(&rsa)
		if !target.poll.Post(func(t *loop) { t.openConn(fd, ln, p, client) }) {
			target.load.Add(-1)
			closeFD(fd)
			e.unreserve(p)
		}
	}
}

// Active returns the number of connections open now.
func (e *Engine) Active() int64 { return e.active.Load() }

// Idle returns a channel closed once no connection is open.
func (e *Engine) Idle() <-chan struct{} { return e.active.Idle() }

// Panics returns how many connections were closed because handling them
// panicked.
func (e *Engine) Panics() uint64 { return e.panics.Load() }

// SetMaxConnections caps the connections of the whole process (0: no cap).
func (e *Engine) SetMaxConnections(n int) {
	e.maxConns.Store(int64(n))
	e.ResumeCapped()
}

// reserve counts a connection about to be accepted for p against the
// caps: the process's and the proxy's. It reports false, counting
// nothing, when a cap is reached.
func (e *Engine) reserve(p *proxy.Proxy) (ok, global bool) {
	if n := e.active.Add(1); n > e.maxConns.Load() && e.maxConns.Load() > 0 {
		e.active.Add(-1)
		return false, true
	}
	if n := p.Stats.Active.Add(1); p.MaxConnections > 0 && n > int64(p.MaxConnections) {
		p.Stats.Active.Add(-1)
		e.active.Done()
		return false, false
	}
	return true, false
}

// unreserve takes back a reservation that did not become a connection.
func (e *Engine) unreserve(p *proxy.Proxy) {
	p.Stats.Active.Add(-1)
	e.active.Done()
}

// release ends the counting of a connection, and lets capped listeners
// accept again.
func (e *Engine) release(p *proxy.Proxy) {
	p.Stats.Active.Add(-1)
	e.active.Done()
	if e.capped.Load() > 0 {
		e.ResumeCapped()
	}
}

// ResumeCapped makes every loop watch again the listeners it stopped
// watching for a cap; those still at their cap are stopped again at once.
// A reload that changes caps calls it.
func (e *Engine) ResumeCapped() {
	for _, l := range e.loops {
		if l.resuming.CompareAndSwap(false, true) {
			l.poll.Post((*loop).resumeCapped)
		}
	}
}

// logCapped says, at most once every few seconds, that a cap holds new
// connections back.
func (e *Engine) logCapped(ln *Listener, what string, limit int64) {
	ok, suppressed := e.capLog.Allow(time.Now())
	if !ok {
		return
	}
	e.log.Warn("connection cap reached: new connections wait in the accept queue until some close",
		"address", ln.addr, "cap", what, "limit", limit, "active", e.active.Load(), "suppressed", suppressed)
}

// Cut closes every open connection; cause is logged as its end.
func (e *Engine) Cut(cause error) {
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error { l.cut(nil, cause); return nil })
	}
	e.tls.Cut("", cause)
}

// CutListener closes the connections accepted by ln that are still open;
// cause is logged as their end. A reload uses it when the grace period of a
// removed proxy is over.
func (e *Engine) CutListener(ln *Listener, cause error) {
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error { l.cut(ln, cause); return nil })
	}
	e.tls.Cut(ln.addr, cause)
}

// Close stops the event loops. Connections still open are cut first.
func (e *Engine) Close() {
	e.Cut(ErrShutdown)
	for _, l := range e.loops {
		l.poll.Stop()
	}
	e.tls.Wait()
}

// faultAt runs the test hook at a named point of a connection's handling.
func (e *Engine) faultAt(point string) {
	if e.fault != nil {
		e.fault(point)
	}
}

// now returns the loops' monotonic clock.
func (e *Engine) now() int64 { return int64(time.Since(e.start)) }

// logConn writes the access-log line of a finished connection.
func (e *Engine) logConn(rec *observe.Conn) {
	observe.Log(context.Background(), e.log, rec)
}

// logAcceptError logs an accept failure at most once per interval per
// listener, with the count of failures not logged since. Out of
// descriptors, it says how many connections are open and what the limit
// is.
func (e *Engine) logAcceptError(ln *Listener, err error, retry time.Duration) {
	ok, suppressed := ln.errLog.Allow(time.Now())
	if !ok {
		return
	}
	attrs := []any{"address", ln.addr, "error", err.Error(), "retry_in", retry.String(), "suppressed", suppressed}
	if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
		var lim unix.Rlimit
		_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) // on failure the limit reads 0
		attrs = append(attrs, "connections", e.active.Load(), "descriptor_limit", lim.Cur)
	}
	attrs = append(attrs, "hint", acceptHint(err))
	e.log.Error("cannot take new connections for now; retrying", attrs...)
}

// logAcceptingAgain says that a listener accepts again after errors, at
// most once per interval: descriptors that run out and come back
// thousands of times a second make one line.
func (e *Engine) logAcceptingAgain(ln *Listener) {
	if ok, suppressed := ln.againLog.Allow(time.Now()); ok {
		e.log.Info("accepting again", "address", ln.addr, "suppressed", suppressed)
	}
}

const acceptLogEvery = 5 * time.Second

// acceptHint tells an operator what to do about an accept error.
func acceptHint(err error) string {
	switch {
	case errors.Is(err, unix.EMFILE):
		return "out of file descriptors for this process: raise the limit (ulimit -n, LimitNOFILE=) or lower the connection load"
	case errors.Is(err, unix.ENFILE):
		return "the system is out of file descriptors: raise fs.file-max or lower the load"
	case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
		return "the kernel is out of memory for sockets"
	}
	return "none"
}

// numLoops is one loop per processor Go may use. GOMAXPROCS follows the
// CPU quota of a container, and Go keeps it up to date only as long as no
// one sets it: the engine reads it and never sets it.
func numLoops() int {
	return max(1, runtime.GOMAXPROCS(0))
}

// ConnInfo describes one open connection, for the admin API.
type ConnInfo = observe.ConnInfo

// Connections returns the connections open now, oldest first.
func (e *Engine) Connections() []ConnInfo { return e.OldestConnections("", -1) }

// OldestConnections returns at most limit (every one if limit < 0) of the
// connections open now, of proxy (every proxy if ""), oldest first. Each
// loop keeps its connections in the order it opened them, so it walks only
// as far as the limit, between two of its events, and the listing holds
// at most limit connections per loop.
func (e *Engine) OldestConnections(proxy string, limit int) []ConnInfo {
	var out []ConnInfo
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error {
			n := 0
			for c := l.byAge.Front(); c != nil && (limit < 0 || n < limit); c = ilist.Next(c) {
				if proxy != "" && c.proxy.Name != proxy {
					continue
				}
				ci := ConnInfo{ID: c.id, Proxy: c.proxy.Name, Client: c.client, Listener: c.ln.addr,
					Started: c.accepted, Up: c.up.bytes.Load(), Down: c.down.bytes.Load(), SNI: c.sni}
				if c.route != nil && c.proxy.Routed() {
					ci.Route = c.route.Name
				}
				if c.state == stateRelay {
					ci.Backend = c.backend.Address
				}
				out = append(out, ci)
				n++
			}
			return nil
		})
	}
	// Connections handed to the TLS terminator are listed whole (they are
	// few next to the loops'), then the limit applies to both.
	for _, ci := range e.tlsConnections() {
		if proxy == "" || ci.Proxy == proxy {
			out = append(out, ci)
		}
	}
	slices.SortFunc(out, func(a, b ConnInfo) int { return cmp.Compare(a.ID, b.ID) })
	if limit >= 0 && len(out) > limit {
		out = out[:limit:limit]
	}
	return out
}

// Kill closes connection id (status "killed"); it reports whether the
// connection was open.
func (e *Engine) Kill(id uint64) bool {
	found := false
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error {
			for fd, c := range l.conns {
				if c != nil && c.cfd == int32(fd) && c.id == id && c.state != stateClosed {
					c.closedBy = observe.SidePJ
					l.abort(c, ErrKilled)
					found = true
				}
			}
			return nil
		})
	}
	return found || e.tls.Kill(id)
}

// Package warm keeps backend connections open before clients need them:
// per backend, up to a pool's size of connected sockets that no client has
// used, and with backend TLS already through the handshake. The engine
// (or the TLS path) takes one instead of dialling; the pool refills in the
// background, a few dials at a time, and never for a backend that is out
// of service.
package warm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
)

// Settings are what a route's pools are built with.
type Settings struct {
	Size           int           // warm connections per backend; at least 1
	MaxAge         time.Duration // how long one may wait for a client
	ConnectTimeout time.Duration // for each dial, and the handshake after it
	// Handshake, if set, completes TLS on each new connection before it
	// waits for a client; nil keeps warm connections plain TCP.
	Handshake Handshake
	// TLS are the backend_tls settings Handshake applies: a reload keeps
	// the warm connections only of a pool whose TLS stays the same.
	TLS config.BackendTLS
}

// same reports whether connections warmed with a can serve a pool of b.
func (a Settings) same(b Settings) bool {
	return a.Size == b.Size && a.MaxAge == b.MaxAge && a.ConnectTimeout == b.ConnectTimeout &&
		(a.Handshake == nil) == (b.Handshake == nil) && a.TLS == b.TLS
}

// Handshake completes the client side of TLS on raw, a new connection to
// b, by deadline, and returns the TLS connection.
type Handshake func(raw net.Conn, b *balance.Backend, deadline time.Time) (net.Conn, error)

// MaxDials bounds the dials in flight per backend: a refill after a burst
// of takes (or at start) opens connections a few at a time, not all at
// once.
const MaxDials = 2

// Pools are the warm connections of one route, one pool per backend. The
// loops call Take; a goroutine started by Start keeps them filled.
type Pools struct {
	set  *balance.Set
	s    Settings
	hits *atomic.Uint64 // takes that found a connection
	miss *atomic.Uint64 // and those that did not
	log  *slog.Logger
	prev *Pools // adopted from at Start

	mu      sync.Mutex
	pools   map[string]*pool // by backend address
	stopped bool

	kick   chan struct{}
	ctx    context.Context // cancelled by Stop: ends dials in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup
	now    func() time.Time
	dialer func(context.Context, netip.AddrPort, time.Duration) (int, error) // Dial, but in tests
}

// pool is one backend's warm connections, newest last. Under Pools.mu.
type pool struct {
	backend *balance.Backend
	idle    []idle
	dialing int
	fails   int       // dials failed in a row
	retryAt time.Time // no dial before this, after failures
}

// idle is one warm connection: a descriptor (plain TCP), or a TLS
// connection whose handshake is done, over the socket raw.
type idle struct {
	fd   int
	conn net.Conn // nil for a descriptor
	raw  syscall.RawConn
	made time.Time
}

// alive reports whether w can still be given to a client (see Alive). A
// TLS connection is judged by its socket: what the backend sent since the
// handshake (a session ticket, a greeting) waits there, unread, and its
// close_notify comes with a FIN, which the peek sees.
func (w idle) alive() bool {
	if w.conn == nil {
		return Alive(w.fd)
	}
	ok := false
	if err := w.raw.Control(func(fd uintptr) { ok = Alive(int(fd)) }); err != nil {
		return false
	}
	return ok
}

func (w idle) close() {
	if w.conn == nil {
		_ = unix.Close(w.fd)
		return
	}
	// A TLS connection sends its close_notify: at most one alert into a
	// socket pj never wrote to since the handshake, so it does not wait.
	_ = w.conn.Close()
}

// New makes the pools of a route whose backends are set; Take counts in
// hits and misses. prev, if not
// nil, is the route this one replaces: when its settings are the same,
// Start takes over its warm connections to the backends that stay.
func New(set *balance.Set, s Settings, hits, misses *atomic.Uint64, log *slog.Logger, prev *Pools) *Pools {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if prev != nil && !prev.s.same(s) {
		prev = nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Pools{
		set: set, s: s, hits: hits, miss: misses, log: log, prev: prev,
		pools: map[string]*pool{}, kick: make(chan struct{}, 1),
		ctx: ctx, cancel: cancel, now: time.Now, dialer: Dial,
	}
}

// Start adopts the warm connections of the route this one replaces, then
// fills the pools and keeps them filled until Stop.
func (p *Pools) Start() {
	if prev := p.prev; prev != nil {
		p.prev = nil
		keep := map[string]bool{}
		for _, b := range p.set.Pool().Backends() {
			keep[b.Address] = true
		}
		prev.mu.Lock()
		p.mu.Lock()
		for addr, bp := range prev.pools {
			if keep[addr] && len(bp.idle) > 0 {
				p.pools[addr] = &pool{idle: bp.idle}
				bp.idle = nil
			}
		}
		p.mu.Unlock()
		prev.mu.Unlock()
	}
	p.wg.Add(1)
	go p.keepFilled()
}

// Stop closes every warm connection, ends the dials in flight and waits
// for them. Take finds nothing afterwards.
func (p *Pools) Stop() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	p.stopped = true
	for _, bp := range p.pools {
		bp.closeIdle()
	}
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
}

// Size is how many warm connections each backend's pool keeps.
func (p *Pools) Size() int { return p.s.Size }

// Idle returns how many warm connections wait for a client at backend.
func (p *Pools) Idle(backend string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bp := p.pools[backend]; bp != nil {
		return len(bp.idle)
	}
	return 0
}

// TLS reports whether the pools' connections are through a TLS handshake:
// those are taken with TakeConn.
func (p *Pools) TLS() bool { return p.s.Handshake != nil }

// Take returns a warm plain-TCP connection to b, proven alive (see Alive),
// and counts a hit; or -1 and a miss when the pool has none. The caller
// owns the descriptor. A connection older than the pool's max_age, or
// found closed, is closed and the next is tried. A pool of TLS
// connections is taken from with TakeConn.
func (p *Pools) Take(b *balance.Backend) int {
	if p.TLS() {
		return -1
	}
	w, ok := p.take(b.Address)
	if !ok {
		return -1
	}
	return w.fd
}

// TakeConn is Take for a caller that relays through a net.Conn: the TLS
// connection a pool with Handshake keeps, or a plain one made of the
// descriptor. It returns nil (a miss) when the pool has none.
func (p *Pools) TakeConn(b *balance.Backend) net.Conn {
	w, ok := p.take(b.Address)
	if !ok {
		return nil
	}
	if w.conn != nil {
		return w.conn
	}
	f := os.NewFile(uintptr(w.fd), "warm")
	c, err := net.FileConn(f) // a second descriptor of the socket
	_ = f.Close()
	if err != nil {
		// Out of descriptors: the caller dials, and fails, as without
		// a pool.
		p.log.Warn("a warm connection could not be used", "backend", b.Address, "error", err)
		return nil
	}
	return c
}

// take removes the newest live connection from addr's pool and counts a
// hit, or counts a miss; either way the pool refills at once.
func (p *Pools) take(addr string) (idle, bool) {
	w, ok := p.pop(addr)
	if ok {
		p.hits.Add(1)
	} else {
		p.miss.Add(1)
	}
	// Refill now rather than at the next tick.
	select {
	case p.kick <- struct{}{}:
	default:
	}
	return w, ok
}

func (p *Pools) pop(addr string) (idle, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	bp := p.pools[addr]
	if bp == nil {
		return idle{}, false
	}
	oldest := p.now().Add(-p.s.MaxAge)
	// The newest first: its backend has waited least for a client.
	for len(bp.idle) > 0 {
		w := bp.idle[len(bp.idle)-1]
		bp.idle = bp.idle[:len(bp.idle)-1]
		if w.made.After(oldest) && w.alive() {
			return w, true
		}
		w.close()
	}
	return idle{}, false
}

// tick is how often the pools are looked over without a take: expired
// and closed connections are replaced, new backends get a pool.
func (p *Pools) tick() time.Duration {
	return min(max(p.s.MaxAge/4, 10*time.Millisecond), time.Second)
}

// keepFilled runs until Stop. A tick looks every warm connection over; a
// take or a finished dial (a kick) only starts the dials that are missing,
// so that a take costs the same with a pool of 1000 as with one of 1.
func (p *Pools) keepFilled() {
	defer p.wg.Done()
	t := time.NewTicker(p.tick())
	defer t.Stop()
	look := true
	for {
		p.refill(look)
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			look = true
		case <-p.kick:
			look = false
		}
	}
}

// refill matches the pools with the route's backends, drops what expired
// or closed if look is set, and starts the dials each backend needs,
// MaxDials at most.
func (p *Pools) refill(look bool) {
	backends := p.set.Pool().Backends()
	now := p.now()
	oldest := now.Add(-p.s.MaxAge)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	seen := make(map[string]bool, len(backends))
	for _, b := range backends {
		seen[b.Address] = true
		bp := p.pools[b.Address]
		if bp == nil {
			bp = &pool{}
			p.pools[b.Address] = bp
		}
		bp.backend = b
		if look {
			bp.drop(oldest)
		}
		if !b.Eligible() {
			// Down, drained or unresolved: it takes no client, so it
			// keeps no connection either.
			bp.closeIdle()
			continue
		}
		if now.Before(bp.retryAt) {
			continue
		}
		for n := p.s.Size - len(bp.idle) - bp.dialing; n > 0 && bp.dialing < MaxDials; n-- {
			bp.dialing++
			p.wg.Add(1)
			go p.dial(bp, b)
		}
	}
	for addr, bp := range p.pools {
		if !seen[addr] {
			bp.closeIdle()
			if bp.dialing == 0 {
				delete(p.pools, addr)
			}
		}
	}
}

// dial opens one warm connection to b and puts it in bp.
func (p *Pools) dial(bp *pool, b *balance.Backend) {
	defer p.wg.Done()
	w, err := p.open(b)
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	bp.dialing--
	if err != nil {
		if p.stopped {
			return
		}
		if bp.fails == 0 {
			p.log.Warn("warm connection failed; the pool retries with backoff", "backend", b.Address, "error", err)
		}
		bp.fails++
		bp.retryAt = now.Add(backoff(bp.fails))
		return
	}
	if bp.fails > 0 {
		p.log.Info("warm connections open again", "backend", b.Address)
	}
	bp.fails = 0
	bp.retryAt = time.Time{}
	if p.stopped || p.pools[b.Address] != bp || len(bp.idle) >= p.s.Size || !b.Eligible() {
		w.close()
		return
	}
	w.made = now
	bp.idle = append(bp.idle, w)
	select {
	case p.kick <- struct{}{}: // the next dial, if more are needed
	default:
	}
}

// open connects to b and, for a TLS pool, completes the handshake, all
// within the connect timeout.
func (p *Pools) open(b *balance.Backend) (idle, error) {
	deadline := time.Now().Add(p.s.ConnectTimeout)
	fd, err := p.dialer(p.ctx, b.Addr, p.s.ConnectTimeout)
	if err != nil || p.s.Handshake == nil {
		return idle{fd: fd}, err
	}
	f := os.NewFile(uintptr(fd), "warm")
	raw, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return idle{}, fmt.Errorf("connect to %s: %w", b.Address, err)
	}
	sc, err := raw.(*net.TCPConn).SyscallConn()
	if err != nil {
		_ = raw.Close()
		return idle{}, err
	}
	// Stop ends a handshake under way too.
	stop := context.AfterFunc(p.ctx, func() { _ = raw.Close() })
	tc, err := p.s.Handshake(raw, b, deadline)
	stop()
	if err != nil {
		_ = raw.Close()
		return idle{}, err
	}
	return idle{fd: -1, conn: tc, raw: sc}, nil
}

// backoff is the pause after n failed dials in a row: 100ms doubling, at
// most 5s.
func backoff(n int) time.Duration {
	return min(100*time.Millisecond<<min(n-1, 6), 5*time.Second)
}

// drop closes the connections made before oldest or found closed.
func (bp *pool) drop(oldest time.Time) {
	kept := bp.idle[:0]
	for _, w := range bp.idle {
		if w.made.After(oldest) && w.alive() {
			kept = append(kept, w)
		} else {
			w.close()
		}
	}
	clear(bp.idle[len(kept):])
	bp.idle = kept
}

func (bp *pool) closeIdle() {
	for _, w := range bp.idle {
		w.close()
	}
	bp.idle = nil
}

// Dial connects to addr within timeout and returns the connected socket's
// descriptor, non-blocking and close-on-exec, with TCP_NODELAY and
// keepalive on as the engine's own backend sockets have them.
func Dial(ctx context.Context, addr netip.AddrPort, timeout time.Duration) (int, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		})
		return errors.Join(err, serr)
	}}
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return -1, err
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) {
		// A second descriptor of the same socket, which outlives
		// conn's: the socket stays open, non-blocking, for the engine.
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("keep the connection to %s open: %w (raise pj's descriptor limit, e.g. LimitNOFILE)", addr, derr)
	}
	return fd, nil
}

// Package warm keeps backend connections open before clients need them:
// per backend, up to a pool's size of connected sockets that no client has
// used. The engine takes one instead of dialling; the pool refills in the
// background, a few dials at a time, and never for a backend that is out
// of service.
package warm

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/balance"
)

// Settings are what a route's pools are built with.
type Settings struct {
	Size           int           // warm connections per backend; at least 1
	MaxAge         time.Duration // how long one may wait for a client
	ConnectTimeout time.Duration // for each dial
}

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

type idle struct {
	fd   int
	made time.Time
}

// New makes the pools of a route whose backends are set; Take counts in
// hits and misses. prev, if not
// nil, is the route this one replaces: when its settings are the same,
// Start takes over its warm connections to the backends that stay.
func New(set *balance.Set, s Settings, hits, misses *atomic.Uint64, log *slog.Logger, prev *Pools) *Pools {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if prev != nil && prev.s != s {
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

// Take returns a warm connection to b, proven alive (see Alive), and
// counts a hit; or -1 and a miss when the pool has none. The caller owns
// the descriptor. A connection older than the pool's max_age, or found
// closed, is closed and the next is tried.
func (p *Pools) Take(b *balance.Backend) int {
	fd := p.take(b.Address)
	if fd < 0 {
		p.miss.Add(1)
	} else {
		p.hits.Add(1)
	}
	// Refill now rather than at the next tick.
	select {
	case p.kick <- struct{}{}:
	default:
	}
	return fd
}

func (p *Pools) take(addr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	bp := p.pools[addr]
	if bp == nil {
		return -1
	}
	oldest := p.now().Add(-p.s.MaxAge)
	// The newest first: its backend has waited least for a client.
	for len(bp.idle) > 0 {
		w := bp.idle[len(bp.idle)-1]
		bp.idle = bp.idle[:len(bp.idle)-1]
		if w.made.After(oldest) && Alive(w.fd) {
			return w.fd
		}
		_ = unix.Close(w.fd)
	}
	return -1
}

// tick is how often the pools are looked over without a take: expired
// and closed connections are replaced, new backends get a pool.
func (p *Pools) tick() time.Duration {
	return min(max(p.s.MaxAge/4, 10*time.Millisecond), time.Second)
}

// keepFilled runs until Stop.
func (p *Pools) keepFilled() {
	defer p.wg.Done()
	t := time.NewTicker(p.tick())
	defer t.Stop()
	for {
		p.refill()
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		case <-p.kick:
		}
	}
}

// refill matches the pools with the route's backends, drops what expired
// or closed, and starts the dials each backend needs, MaxDials at most.
func (p *Pools) refill() {
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
		kept := bp.idle[:0]
		for _, w := range bp.idle {
			if w.made.After(oldest) && Alive(w.fd) {
				kept = append(kept, w)
			} else {
				_ = unix.Close(w.fd)
			}
		}
		clear(bp.idle[len(kept):])
		bp.idle = kept
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
	fd, err := p.dialer(p.ctx, b.Addr, p.s.ConnectTimeout)
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
		_ = unix.Close(fd)
		return
	}
	bp.idle = append(bp.idle, idle{fd: fd, made: now})
	select {
	case p.kick <- struct{}{}: // the next dial, if more are needed
	default:
	}
}

// backoff is the pause after n failed dials in a row: 100ms doubling, at
// most 5s.
func backoff(n int) time.Duration {
	return min(100*time.Millisecond<<min(n-1, 6), 5*time.Second)
}

func (bp *pool) closeIdle() {
	for _, w := range bp.idle {
		_ = unix.Close(w.fd)
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
		return -1, errors.Join(errors.New("dup"), derr)
	}
	return fd, nil
}

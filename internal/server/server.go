// Package server runs pj's listeners: it binds them all or none, accepts
// connections, picks and dials a backend, hands both sockets to the relay,
// logs every finished connection and drains on shutdown.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
)

// TCP keepalive on both sides of every connection: the first probe after a
// minute of silence, then every 15 s, four unanswered probes and the peer is
// declared dead (about two minutes). Go's default (15 s before the first
// probe) would send tens of thousands of probes a second through a proxy
// holding a million idle connections; the kernel's (two hours) would let dead
// peers hold descriptors far too long.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: time.Minute, Interval: 15 * time.Second, Count: 4}

// Options are the process-wide settings of a Server.
type Options struct {
	Logger *slog.Logger
	// GracePeriod is how long established connections may run on after
	// the context given to Serve is cancelled.
	GracePeriod time.Duration

	// onConnect, if set, is called for each connection before the
	// backend is dialled; tests use it to inject a panic.
	onConnect func()
}

// Server is a set of bound listeners and the connections they accepted.
type Server struct {
	log         *slog.Logger
	grace       time.Duration
	onConnect   func()
	listeners   []*listener
	connections sync.WaitGroup
	active      atomic.Int64
	nextID      atomic.Uint64
	panics      atomic.Uint64

	// cut is cancelled, with errShutdown as its cause, when the grace
	// period has run out; every connection's relay and dial watch it.
	cut       context.Context
	cancelCut context.CancelCauseFunc
}

// errShutdown is the cause of connections cut when the grace period ends.
var errShutdown = errors.New("grace period over")

// Proxy is the immutable runtime form of one configured proxy.
type Proxy struct {
	Name           string
	Pool           *balance.Pool
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	dialer         net.Dialer
}

func newProxy(c config.Proxy) *Proxy {
	return &Proxy{
		Name:           c.Name,
		Pool:           balance.NewPool(c.Backends),
		ConnectTimeout: c.ConnectTimeout,
		IdleTimeout:    c.IdleTimeout,
		dialer:         net.Dialer{KeepAliveConfig: keepAlive},
	}
}

// Listen binds a listener for every proxy. It is all or nothing: if any
// address cannot be bound, the ones already bound are closed and the error
// names the address and the reason.
func Listen(proxies []config.Proxy, opt Options) (*Server, error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: log, grace: opt.GracePeriod, onConnect: opt.onConnect}
	s.cut, s.cancelCut = context.WithCancelCause(context.Background())

	lc := net.ListenConfig{KeepAlive: -1, Control: controlListener}
	for _, pc := range proxies {
		ln, err := lc.Listen(context.Background(), "tcp", pc.Listen)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("proxy %s: %w%s", pc.Name, err, listenHint(err))
		}
		l := &listener{ln: ln.(*net.TCPListener), addr: ln.Addr().String(), done: make(chan struct{})}
		if pc.Name == pc.Listen {
			// An unnamed proxy is known by its address, the bound one:
			// port 0 has become a real port, an empty host "[::]".
			pc.Name = l.addr
		}
		l.proxy.Store(newProxy(pc))
		s.listeners = append(s.listeners, l)
	}
	return s, nil
}

// controlListener turns TCP keepalive on for the listening socket. Linux
// copies these options to every socket accept(2) returns, which saves the
// four setsockopt calls per connection that setting them after accept costs.
func controlListener(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = setKeepAlive(int(fd), keepAlive)
	})
	if err != nil {
		return err
	}
	return serr
}

func listenHint(err error) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return " (another process, or another mapping, is listening there: stop it or choose another port)"
	case errors.Is(err, syscall.EACCES):
		return " (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability)"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return " (this machine has no such address: use one of its own, or 0.0.0.0 for all)"
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return " (the listen host name does not resolve: check its spelling or use an IP address)"
	}
	return ""
}

// Addrs returns the bound address of every listener, in configuration
// order; port 0 has become the port the kernel chose.
func (s *Server) Addrs() []net.Addr {
	addrs := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		addrs[i] = l.ln.Addr()
	}
	return addrs
}

// Active returns the number of connections being handled.
func (s *Server) Active() int64 { return s.active.Load() }

// Panics returns how many connection handlers have panicked and been
// recovered since start.
func (s *Server) Panics() uint64 { return s.panics.Load() }

// Serve accepts connections until ctx is cancelled. Then it stops accepting
// at once, lets established connections finish for the grace period, cuts
// those still open (status shutdown) and returns nil once every connection
// has been logged.
func (s *Server) Serve(ctx context.Context) error {
	var loops sync.WaitGroup
	for _, l := range s.listeners {
		p := l.proxy.Load()
		s.log.Info("listening", "proxy", p.Name, "address", l.addr,
			"backends", strings.Join(backendAddrs(p.Pool), ","), "balance", config.RoundRobin)
		loops.Go(func() { s.acceptLoop(l) })
	}

	<-ctx.Done()
	s.closeListeners()
	loops.Wait()

	drained := make(chan struct{})
	go func() {
		s.connections.Wait()
		close(drained)
	}()
	reason := "stopped"
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		reason = cause.Error()
	}
	if n := s.active.Load(); n > 0 {
		s.log.Info("shutting down: stopped accepting, draining connections",
			"reason", reason, "active", n, "grace_period", s.grace.String())
	} else {
		s.log.Info("shutting down: stopped accepting, no connections open", "reason", reason)
	}
	grace := time.NewTimer(s.grace)
	defer grace.Stop()
	select {
	case <-drained:
	case <-grace.C:
		s.log.Warn("grace period over: closing the remaining connections", "active", s.active.Load())
		s.cancelCut(errShutdown)
		<-drained
	}
	s.cancelCut(nil)
	s.log.Info("stopped")
	return nil
}

func backendAddrs(p *balance.Pool) []string {
	var addrs []string
	for _, b := range p.Backends() {
		addrs = append(addrs, b.Address)
	}
	return addrs
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.close()
	}
}

// Close releases every listener of a server that will not Serve.
func (s *Server) Close() {
	s.closeListeners()
	s.cancelCut(nil)
}

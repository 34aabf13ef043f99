// Package server runs pj's proxies: it resolves their backends, binds every
// listener or none, hands the sockets to the event engine, swaps proxies on
// reload without closing a listener that stays, and drains on shutdown.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/engine"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/udp"
	"github.com/pj-proxy/pj/internal/upgrade"
)

// KeepAlive is the TCP keepalive of every client connection (backend
// sockets have keepalive on with the kernel's timers): the first probe
// after a minute of silence, then every 15 s; four unanswered
// probes and the peer is declared dead (about two minutes). Go's default
// (15 s before the first probe) would send tens of thousands of probes a
// second through a proxy holding a million idle connections; the kernel's
// (two hours) would let dead peers hold descriptors far too long.
var KeepAlive = engine.KeepAlive{Idle: time.Minute, Interval: 15 * time.Second, Count: 4}

// resolveTimeout bounds the lookups of backend host names at start-up and
// at every reload.
const resolveTimeout = 5 * time.Second

// Options are the process-wide settings of a Server that a configuration
// file does not change.
type Options struct {
	Logger *slog.Logger
	// Loops is the number of event loops; 0 means one per CPU.
	Loops int
	// Inherited are listening sockets passed in by a service manager
	// (socket activation). A proxy whose listen address one of them has
	// is served from it instead of binding; the others bind as usual.
	// The Server owns the files.
	Inherited []*os.File
	// HandedOver are the listening sockets of the pj this one upgrades:
	// each serves the proxy whose listener has its key. The Server owns
	// them; those no proxy takes are closed.
	HandedOver []upgrade.Socket
}

// Server is a set of bound listeners and the engine serving them.
type Server struct {
	log *slog.Logger
	eng *engine.Engine
	// udpEng is started with the first UDP proxy; nil before.
	udpEng atomic.Pointer[udp.Engine]
	ids    atomic.Uint64 // numbers connections and sessions alike

	mu        sync.Mutex // guards everything below
	cfg       config.Config
	entries   []*entry // in configuration order
	inherited []*inherited
	handedUDP map[string][]int // handed-over UDP sockets not yet taken, by key
	closed    bool

	reloadsOK, reloadsFailed atomic.Uint64
}

// entry is one proxy and the listener serving it.
type entry struct {
	cfg  config.Proxy // as configured, Name filled in
	key  string       // identifies the listener across reloads
	ln   listener
	addr net.Addr
	// from is the inherited socket the listener serves, nil if pj bound it.
	from *inherited
}

// New resolves the proxies' backends and binds a listener for every proxy.
// It is all or nothing: if any address cannot be bound, the ones already
// bound are closed and the error names the address and the reason.
func New(cfg config.Config, opt Options) (*Server, error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: log, cfg: cfg}
	s.adoptInherited(opt.Inherited)
	s.adoptHandedOver(opt.HandedOver)
	eng, err := engine.New(engine.Options{Logger: log, Loops: opt.Loops, IDs: &s.ids})
	if err != nil {
		s.closeInherited()
		return nil, fmt.Errorf("start the event engine: %w", err)
	}
	s.eng = eng
	eng.SetMaxConnections(cfg.MaxConnections)
	entries, err := s.open(cfg.Proxies, nil)
	if err != nil {
		s.closeEngines()
		s.closeInherited()
		upgrade.CloseFDs(mapValues(s.handedUDP))
		return nil, err
	}
	s.entries = entries
	s.closeUnusedHandedOver()
	s.certificates(false)
	s.logUnusedInherited()
	return s, nil
}

// certificates reads the TLS files of every proxy again if reload is set
// (SIGHUP), and, with --watch, watches them. Under mu, or before Serve.
func (s *Server) certificates(reload bool) {
	for _, e := range s.entries {
		p := e.ln.Proxy()
		if reload {
			p.ReloadCertificates()
		}
		if s.cfg.Watch {
			p.WatchCertificates(certWatchDebounce, s.log)
		} else {
			p.StopWatchingCertificates() // a reload turned watch off
		}
	}
}

// certWatchDebounce lets a burst of file events (a certificate and its key
// replaced one after the other) settle into one reload.
const certWatchDebounce = 250 * time.Millisecond

// open binds and serves the listeners of proxies, building each proxy's
// runtime from prev (by name) where there is one. All or nothing.
func (s *Server) open(proxies []config.Proxy, prev map[string]*proxy.Proxy) ([]*entry, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: controlListener}
	var binds []bound
	closeBound := func() {
		for _, b := range binds {
			s.closeBound(b)
		}
	}
	for _, pc := range proxies {
		b, err := s.bind(&lc, pc)
		if err != nil {
			closeBound()
			return nil, fmt.Errorf("proxy %s: %w%s", pc.Name, err, listenHint(err))
		}
		binds = append(binds, b)
	}
	entries := make([]*entry, len(proxies))
	for i, pc := range proxies {
		if pc.Name == pc.Listen {
			// An unnamed proxy is known by its address, the bound one:
			// port 0 has become a real port, an empty host "[::]".
			pc.Name = binds[i].name()
		}
		entries[i] = &entry{cfg: pc, key: listenerKey(pc), addr: binds[i].addr(), from: binds[i].from}
	}
	runtimes, err := s.build(entries, prev)
	if err != nil {
		closeBound()
		return nil, err
	}
	for i, b := range binds {
		var err error
		entries[i].ln, err = s.serve(b, runtimes[i])
		if err != nil {
			closeBound()
			for _, e := range entries[:i] {
				s.closeListener(e.ln)
			}
			discard(runtimes)
			return nil, fmt.Errorf("proxy %s: %w", entries[i].cfg.Name, err)
		}
	}
	for _, p := range runtimes {
		p.Start()
	}
	return entries, nil
}

// build makes the runtime proxies of entries, resolving backend names.
// Nothing it builds runs until Start; on a failure, what it built is
// discarded.
func (s *Server) build(entries []*entry, prev map[string]*proxy.Proxy) ([]*proxy.Proxy, error) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	out := make([]*proxy.Proxy, len(entries))
	for i, e := range entries {
		p, err := proxy.Build(ctx, e.cfg, s.log, prev[e.cfg.Name])
		if err != nil {
			discard(out[:i])
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// discard releases proxies built but never started.
func discard(built []*proxy.Proxy) {
	for _, p := range built {
		p.Discard()
	}
}

// listenerKey identifies a listener across reloads: its address, or for
// an ephemeral port (which never matches another), its proxy's name too.
func listenerKey(p config.Proxy) string {
	addr, network := config.SplitNetwork(p.Listen)
	_, port, err := config.SplitHostPort(addr)
	if err == nil && port == 0 {
		return p.Listen + " " + p.Name
	}
	return strings.ToLower(addr) + "/" + network
}

// controlListener sets keepalive and TCP_NODELAY on the listening socket;
// Linux copies them to every socket accept(2) returns.
func controlListener(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = engine.SetListenerOptions(int(fd), KeepAlive) }); err != nil {
		return err
	}
	return serr
}

// detach takes the socket of a bound listener away from Go's poller: the
// engine gets a duplicate of its descriptor and the original is closed
// (which unregisters it from Go's epoll, not the socket from the kernel).
func detach(ln *net.TCPListener) (int, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return -1, err
	}
	var (
		fd   = -1
		derr error
	)
	if err := rc.Control(func(s uintptr) { fd, derr = dupCloexec(int(s)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	if err := ln.Close(); err != nil {
		return -1, err
	}
	return fd, nil
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
	s.mu.Lock()
	defer s.mu.Unlock()
	addrs := make([]net.Addr, len(s.entries))
	for i, e := range s.entries {
		addrs[i] = e.addr
	}
	return addrs
}

// Active returns the number of open connections.
func (s *Server) Active() int64 { return s.active() }

// Panics returns how many connections were closed because handling them
// panicked.
func (s *Server) Panics() uint64 {
	n := s.eng.Panics()
	if u := s.udpEng.Load(); u != nil {
		n += u.Panics()
	}
	return n
}

// Reloads returns how many reloads succeeded and how many failed.
func (s *Server) Reloads() (ok, failed uint64) {
	return s.reloadsOK.Load(), s.reloadsFailed.Load()
}

// Serve serves until ctx is cancelled. Then it stops accepting at once,
// lets established connections finish for the grace period, cuts those
// still open (status shutdown) and returns nil once every connection has
// been logged.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	for _, e := range s.entries {
		s.logListening(e)
	}
	s.mu.Unlock()

	<-ctx.Done()
	s.mu.Lock()
	s.shut(s.stopListening)
	grace := s.cfg.GracePeriod
	s.mu.Unlock()

	reason := "stopped"
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		reason = cause.Error()
	}
	if n := s.active(); n > 0 {
		s.log.Info("shutting down: stopped accepting, draining connections",
			"reason", reason, "active", n, "grace_period", grace.String())
	} else {
		s.log.Info("shutting down: stopped accepting, no connections open", "reason", reason)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	if !s.waitIdle(timer.C) {
		s.log.Warn("grace period over: closing the remaining connections", "active", s.active())
		s.cutAll()
		s.waitIdle(nil)
	}
	s.closeEngines()
	s.log.Info("stopped")
	return nil
}

func (s *Server) logListening(e *entry) {
	p := e.ln.Proxy()
	attrs := []any{"proxy", p.Name, "address", e.ln.Addr()}
	if p.Routed() {
		// "app=10.0.0.1:8080,10.0.0.2:8080 ssh=127.0.0.1:22"
		var routes []string
		for _, r := range p.Routes {
			routes = append(routes, r.Name+"="+strings.Join(backendAddrs(r), ","))
		}
		attrs = append(attrs, "routes", strings.Join(routes, " "), "match_timeout", p.MatchTimeout.String())
	} else {
		r := p.Routes[0]
		attrs = append(attrs, "backends", strings.Join(backendAddrs(r), ","), "balance", r.Balance,
			"health_checks", r.Backends.ChecksEnabled())
	}
	if e.from != nil {
		attrs = append(attrs, "socket", "inherited")
	}
	s.log.Info("listening", attrs...)
}

func backendAddrs(r *proxy.Route) []string {
	var addrs []string
	for _, b := range r.Pool().Backends() {
		addrs = append(addrs, b.Address)
	}
	return addrs
}

// Close releases the listeners and the engine of a server that will not
// Serve.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shut(s.closeListener)
	s.closeEngines()
}

// shut ends every listener with end (letting its connections drain, or
// cutting them), stops its backends' checks, and refuses reloads from now
// on. Under mu.
func (s *Server) shut(end func(listener)) {
	s.closed = true
	for _, e := range s.entries {
		end(e.ln)
		e.ln.Proxy().Stop()
	}
	s.entries = nil
	s.closeInherited()
}

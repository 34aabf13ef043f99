// Package server runs pj's proxies: it resolves their backends, binds every
// listener or none, hands the sockets to the event engine and drains on
// shutdown.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/engine"
	"github.com/pj-proxy/pj/internal/proxy"
)

// KeepAlive is the TCP keepalive of both sides of every connection: the
// first probe after a minute of silence, then every 15 s; four unanswered
// probes and the peer is declared dead (about two minutes). Go's default
// (15 s before the first probe) would send tens of thousands of probes a
// second through a proxy holding a million idle connections; the kernel's
// (two hours) would let dead peers hold descriptors far too long.
var KeepAlive = engine.KeepAlive{Idle: time.Minute, Interval: 15 * time.Second, Count: 4}

// resolveTimeout bounds the start-up lookups of backend host names.
const resolveTimeout = 5 * time.Second

// Options are the process-wide settings of a Server.
type Options struct {
	Logger *slog.Logger
	// GracePeriod is how long established connections may run on after
	// the context given to Serve is cancelled.
	GracePeriod time.Duration
	// Loops is the number of event loops; 0 means one per CPU.
	Loops int
}

// Server is a set of bound listeners and the engine serving them.
type Server struct {
	log       *slog.Logger
	grace     time.Duration
	eng       *engine.Engine
	listeners []*engine.Listener
	addrs     []net.Addr
}

// Listen resolves the proxies' backends and binds a listener for every
// proxy. It is all or nothing: if any address cannot be bound, the ones
// already bound are closed and the error names the address and the reason.
func Listen(proxies []config.Proxy, opt Options) (*Server, error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: log, grace: opt.GracePeriod}

	lc := net.ListenConfig{KeepAlive: -1, Control: controlListener}
	var bound []*net.TCPListener
	closeBound := func() {
		for _, ln := range bound {
			_ = ln.Close() // giving up: the close error would hide the real one
		}
	}
	for _, pc := range proxies {
		ln, err := lc.Listen(context.Background(), "tcp", pc.Listen)
		if err != nil {
			closeBound()
			return nil, fmt.Errorf("proxy %s: %w%s", pc.Name, err, listenHint(err))
		}
		bound = append(bound, ln.(*net.TCPListener))
	}

	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	runtimes := make([]*proxy.Proxy, len(proxies))
	for i, pc := range proxies {
		if pc.Name == pc.Listen {
			// An unnamed proxy is known by its address, the bound one:
			// port 0 has become a real port, an empty host "[::]".
			pc.Name = bound[i].Addr().String()
		}
		runtimes[i] = proxy.Build(ctx, pc, net.DefaultResolver)
		for _, b := range runtimes[i].Pool.Backends() {
			if b.Err != nil {
				log.Warn("backend does not resolve; connections to it will fail", "proxy", pc.Name, "backend", b.Name, "error", b.Err.Error())
			}
		}
	}

	eng, err := engine.New(engine.Options{Logger: log, Loops: opt.Loops, KeepAlive: KeepAlive})
	if err != nil {
		closeBound()
		return nil, fmt.Errorf("start the event engine: %w", err)
	}
	s.eng = eng
	for i, ln := range bound {
		s.addrs = append(s.addrs, ln.Addr())
		fd, err := detach(ln)
		if err == nil {
			var el *engine.Listener
			if el, err = eng.Listen(fd, ln.Addr().String(), runtimes[i]); err == nil {
				s.listeners = append(s.listeners, el)
				continue
			}
		}
		closeBound()
		s.Close()
		return nil, fmt.Errorf("proxy %s: %w", runtimes[i].Name, err)
	}
	return s, nil
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
func (s *Server) Addrs() []net.Addr { return s.addrs }

// Active returns the number of open connections.
func (s *Server) Active() int64 { return s.eng.Active() }

// Panics returns how many connections were closed because handling them
// panicked.
func (s *Server) Panics() uint64 { return s.eng.Panics() }

// Serve serves until ctx is cancelled. Then it stops accepting at once,
// lets established connections finish for the grace period, cuts those
// still open (status shutdown) and returns nil once every connection has
// been logged.
func (s *Server) Serve(ctx context.Context) error {
	for _, ln := range s.listeners {
		p := ln.Proxy()
		s.log.Info("listening", "proxy", p.Name, "address", ln.Addr(),
			"backends", strings.Join(backendAddrs(p), ","), "balance", p.Balance)
	}

	<-ctx.Done()
	for _, ln := range s.listeners {
		s.eng.CloseListener(ln)
	}
	s.listeners = nil
	reason := "stopped"
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		reason = cause.Error()
	}
	if n := s.eng.Active(); n > 0 {
		s.log.Info("shutting down: stopped accepting, draining connections",
			"reason", reason, "active", n, "grace_period", s.grace.String())
	} else {
		s.log.Info("shutting down: stopped accepting, no connections open", "reason", reason)
	}
	grace := time.NewTimer(s.grace)
	defer grace.Stop()
	select {
	case <-s.eng.Idle():
	case <-grace.C:
		s.log.Warn("grace period over: closing the remaining connections", "active", s.eng.Active())
		s.eng.Cut(engine.ErrShutdown)
		<-s.eng.Idle()
	}
	s.eng.Close()
	s.log.Info("stopped")
	return nil
}

func backendAddrs(p *proxy.Proxy) []string {
	var addrs []string
	for _, b := range p.Pool.Backends() {
		addrs = append(addrs, b.Address)
	}
	return addrs
}

// Close releases the listeners and the engine of a server that will not
// Serve.
func (s *Server) Close() {
	if s.eng == nil {
		return
	}
	for _, ln := range s.listeners {
		s.eng.CloseListener(ln)
	}
	s.listeners = nil
	s.eng.Close()
}

package server

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/engine"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/udp"
)

// The server runs TCP proxies on the engine and UDP proxies on the udp
// engine, which it starts with the first UDP proxy: a pj without one runs
// no UDP loop. The helpers here let the rest of the server treat both
// alike.

// listener is a listening socket of either transport.
type listener interface {
	Addr() string
	Proxy() *proxy.Proxy
	SetProxy(*proxy.Proxy)
}

// bound is a listen address bound for a proxy, before an engine serves it.
type bound struct {
	tcp  *net.TCPListener
	udp  *udp.Sockets
	from *inherited
}

func (b bound) addr() net.Addr {
	if b.udp != nil {
		return b.udp.UDPAddr()
	}
	return b.tcp.Addr()
}

// name is what an unnamed proxy is called: its bound address, with /udp
// for UDP (a TCP and a UDP proxy may share an address, as DNS does).
func (b bound) name() string {
	if b.udp != nil {
		return b.udp.Addr().String() + "/udp"
	}
	return b.tcp.Addr().String()
}

func (s *Server) closeBound(b bound) {
	if b.udp != nil {
		b.udp.Close()
		return
	}
	_ = b.tcp.Close() // giving up: the close error would hide the real one
	s.releaseInherited(b.from)
}

// bind binds the listen address of pc.
func (s *Server) bind(lc *net.ListenConfig, pc config.Proxy) (bound, error) {
	key := listenerKey(pc)
	addr, network := config.SplitNetwork(pc.Listen)
	if network != config.UDP {
		pc.Listen = addr // without its /tcp
		ln, in, err := s.listen(lc, pc, key)
		return bound{tcp: ln, from: in}, err
	}
	eng, err := s.udpEngine()
	if err != nil {
		return bound{}, err
	}
	if fds, ok := s.takeHandedUDP(key); ok {
		socks, err := udp.Adopt(fds)
		return bound{udp: socks}, err
	}
	socks, err := udp.Bind(context.Background(), addr, eng.Loops())
	return bound{udp: socks}, err
}

// serve hands a bound address to its engine.
func (s *Server) serve(b bound, p *proxy.Proxy) (listener, error) {
	if b.udp != nil {
		return s.udpEng.Load().Listen(b.udp, p)
	}
	fd, err := detach(b.tcp)
	if err != nil {
		return nil, err
	}
	return s.eng.Listen(fd, b.tcp.Addr().String(), p)
}

// udpEngine returns the UDP engine, started on first use with as many
// loops as the TCP engine has.
func (s *Server) udpEngine() (*udp.Engine, error) {
	if u := s.udpEng.Load(); u != nil {
		return u, nil
	}
	eng, err := udp.New(udp.Options{Logger: s.log, Loops: s.eng.Loops(), IDs: &s.ids})
	if err != nil {
		return nil, fmt.Errorf("start the UDP event engine: %w", err)
	}
	eng.SetMaxConnections(s.cfg.MaxConnections)
	s.udpEng.Store(eng)
	return eng, nil
}

// stopListening stops a listener from taking new connections. A UDP
// listener keeps its socket while its sessions last: their replies leave
// through it.
func (s *Server) stopListening(ln listener) {
	switch ln := ln.(type) {
	case *engine.Listener:
		s.eng.CloseListener(ln)
	case *udp.Listener:
		s.udpEng.Load().Drain(ln)
	}
}

// closeListener stops a listener at once, cutting its UDP sessions.
func (s *Server) closeListener(ln listener) {
	switch ln := ln.(type) {
	case *engine.Listener:
		s.eng.CloseListener(ln)
	case *udp.Listener:
		s.udpEng.Load().CloseListener(ln, udp.ErrShutdown)
	}
}

// cutListener ends what a retired listener still relays.
func (s *Server) cutListener(ln listener) {
	switch ln := ln.(type) {
	case *engine.Listener:
		s.eng.CutListener(ln, engine.ErrShutdown)
	case *udp.Listener:
		s.udpEng.Load().CutListener(ln, udp.ErrShutdown)
	}
}

// active counts the open connections and sessions.
func (s *Server) active() int64 {
	n := s.eng.Active()
	if u := s.udpEng.Load(); u != nil {
		n += u.Active()
	}
	return n
}

// waitIdle waits until no connection or session is open, or until t.
func (s *Server) waitIdle(t <-chan time.Time) bool {
	select {
	case <-s.eng.Idle():
	case <-t:
		return false
	}
	u := s.udpEng.Load()
	if u == nil {
		return true
	}
	select {
	case <-u.Idle():
		return true
	case <-t:
		return false
	}
}

// cutAll ends every connection and session.
func (s *Server) cutAll() {
	s.eng.Cut(engine.ErrShutdown)
	if u := s.udpEng.Load(); u != nil {
		u.Cut(udp.ErrShutdown)
	}
}

func (s *Server) closeEngines() {
	s.eng.Close()
	if u := s.udpEng.Load(); u != nil {
		u.Close()
	}
}

func (s *Server) setMaxConnections(n int) {
	s.eng.SetMaxConnections(n)
	if u := s.udpEng.Load(); u != nil {
		u.SetMaxConnections(n)
	}
}

// udpSessions lists the UDP sessions as connections.
func (s *Server) udpSessions() []engine.ConnInfo {
	eng := s.udpEng.Load()
	if eng == nil {
		return nil
	}
	var out []engine.ConnInfo
	for _, si := range eng.Sessions() {
		out = append(out, engine.ConnInfo{ID: si.ID, Proxy: si.Proxy, Client: si.Client, Listener: si.Listener,
			Backend: si.Backend, Started: si.Started, Up: si.Up, Down: si.Down})
	}
	return out
}

func (s *Server) killUDP(id uint64) bool {
	eng := s.udpEng.Load()
	return eng != nil && eng.Kill(id)
}

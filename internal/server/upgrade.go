package server

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/engine"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/udp"
	"github.com/pj-proxy/pj/internal/upgrade"
)

// An upgrade hands every listening socket to a new pj process: it serves
// them before this one stops accepting, so that no connection attempt is
// refused. Each socket is known by its listener's key as the
// configuration file gives it, so that the new process, reading the same
// file, finds the socket of each of its proxies (an ephemeral port
// included).

// HandOverSockets returns duplicates of every listening socket, each with
// the key the new process looks it up by. The caller owns them.
func (s *Server) HandOverSockets() ([]upgrade.Socket, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	var out []upgrade.Socket
	fail := func(err error) ([]upgrade.Socket, error) {
		for _, so := range out {
			for _, fd := range so.FDs {
				_ = unix.Close(fd)
			}
		}
		return nil, err
	}
	for i, e := range s.entries {
		so := upgrade.Socket{Key: listenerKey(s.cfg.Proxies[i])}
		switch ln := e.ln.(type) {
		case *engine.Listener:
			fd, err := ln.Dup()
			if err != nil {
				return fail(fmt.Errorf("proxy %s: %w", e.cfg.Name, err))
			}
			so.FDs = []int{fd}
		case *udp.Listener:
			fds, err := ln.Dup()
			if err != nil {
				return fail(fmt.Errorf("proxy %s: %w", e.cfg.Name, err))
			}
			so.FDs, so.UDP = fds, true
		default:
			return fail(fmt.Errorf("proxy %s: a listener of unknown kind %T", e.cfg.Name, e.ln))
		}
		out = append(out, so)
	}
	return out, nil
}

// StopAccepting stops every listener once a new process serves their
// sockets: TCP listeners are taken out of the event loops (clients
// already in the accept queue are served by one process or the other),
// UDP listeners stop reading (their sessions answer until they end). The
// connections open go on; Serve lets them finish within the grace period.
func (s *Server) StopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.shut(func(ln listener) {
		if u, ok := ln.(*udp.Listener); ok {
			s.udpEng.Load().HandOver(u)
			return
		}
		s.stopListening(ln)
	})
}

// adoptHandedOver keeps the sockets a running pj handed over, by key.
func (s *Server) adoptHandedOver(socks []upgrade.Socket) {
	for _, so := range socks {
		if so.UDP {
			if s.handedUDP == nil {
				s.handedUDP = map[string][]int{}
			}
			s.handedUDP[so.Key] = so.FDs
			continue
		}
		if len(so.FDs) != 1 {
			upgrade.CloseFDs(so.FDs)
			s.log.Warn("ignoring a handed-over listener without one socket", "key", so.Key, "sockets", len(so.FDs))
			continue
		}
		f := os.NewFile(uintptr(so.FDs[0]), "handed-over "+so.Key)
		addr, err := listeningTCPAddr(f)
		if err != nil {
			_ = f.Close()
			s.log.Warn("ignoring a handed-over socket", "key", so.Key, "error", err.Error())
			continue
		}
		s.inherited = append(s.inherited, &inherited{file: f, addr: addr, key: so.Key})
	}
}

// takeHandedUDP returns the handed-over sockets of the UDP listener key.
func (s *Server) takeHandedUDP(key string) ([]int, bool) {
	fds, ok := s.handedUDP[key]
	delete(s.handedUDP, key)
	return fds, ok
}

// closeUnusedHandedOver closes the handed-over sockets no proxy took (the
// file changed since the running pj read it): the running pj goes on
// accepting on them until it stops.
func (s *Server) closeUnusedHandedOver() {
	var unused []string
	kept := s.inherited[:0]
	for _, in := range s.inherited {
		if in.key != "" && !in.inUse {
			unused = append(unused, in.key)
			_ = in.file.Close()
			continue
		}
		kept = append(kept, in)
	}
	s.inherited = kept
	for key, fds := range s.handedUDP {
		unused = append(unused, key)
		upgrade.CloseFDs(fds)
	}
	s.handedUDP = nil
	if len(unused) > 0 {
		s.log.Warn("upgrade: handed-over listeners that no proxy of the configuration has; they close when the old process stops",
			"listeners", strings.Join(unused, ","))
	}
}

func mapValues(m map[string][]int) []int {
	var out []int
	for _, fds := range m {
		out = append(out, fds...)
	}
	return out
}

// DetachConnections takes the established connections that can move to
// a new process out of the engine, at most max: relaying plain TCP, their
// bytes in flight with them. The caller sends them, then closes their
// descriptors, or gives back those it could not send (Reattach).
func (s *Server) DetachConnections(max int) []engine.Detached { return s.eng.Detach(max) }

// Reattach takes back a detached connection that could not be sent.
func (s *Server) Reattach(d engine.Detached) error { return s.eng.Reattach(d) }

// AdoptConnection takes over a connection an upgrading pj moved here,
// relayed by the proxy of the same name, route and backend. It owns fds.
// It returns how long the connection was paused: from leaving the old
// process's loop to joining this one's.
func (s *Server) AdoptConnection(m engine.Moved, fds []int) (time.Duration, error) {
	s.mu.Lock()
	var (
		ln *engine.Listener
		p  *proxy.Proxy
	)
	for _, e := range s.entries {
		if l, ok := e.ln.(*engine.Listener); ok && e.cfg.Name == m.Proxy {
			ln, p = l, l.Proxy()
		}
	}
	s.mu.Unlock()
	if p == nil {
		upgrade.CloseFDs(fds)
		return 0, fmt.Errorf("%w: no TCP proxy named %s here", engine.ErrCannotAdopt, m.Proxy)
	}
	for _, r := range p.Routes {
		if r.Name != m.Route {
			continue
		}
		for _, b := range r.Pool().Backends() {
			if b.Address == m.Backend {
				err := s.eng.Adopt(m, fds, ln, p, r, b)
				return time.Since(m.Detached), err
			}
		}
	}
	upgrade.CloseFDs(fds)
	return 0, fmt.Errorf("%w: proxy %s has no route %s with backend %s", engine.ErrCannotAdopt, m.Proxy, m.Route, m.Backend)
}

// BackendState is a backend's state as an upgrade carries it to the new
// process.
type BackendState struct {
	Proxy   string `json:"proxy"`
	Route   string `json:"route"`
	Address string `json:"address"`
	Admin   string `json:"admin"` // up, drain or down: what the operator said
	Healthy bool   `json:"healthy"`
}

// BackendStates returns the state of every backend of every proxy.
func (s *Server) BackendStates() []BackendState {
	var out []BackendState
	for _, v := range s.Proxies() {
		for _, r := range v.Proxy.Routes {
			for _, b := range r.Pool().Backends() {
				out = append(out, BackendState{Proxy: v.Proxy.Name, Route: r.Name, Address: b.Address,
					Admin: b.Admin().String(), Healthy: b.Healthy()})
			}
		}
	}
	return out
}

// RestoreBackendStates gives the backends of the same proxy, route and
// address the states an upgrading pj had for them; it returns how many
// it found.
func (s *Server) RestoreBackendStates(states []BackendState) int {
	type key struct{ proxy, route, address string }
	byKey := make(map[key]BackendState, len(states))
	for _, st := range states {
		byKey[key{st.Proxy, st.Route, st.Address}] = st
	}
	n := 0
	for _, v := range s.Proxies() {
		for _, r := range v.Proxy.Routes {
			for _, b := range r.Pool().Backends() {
				st, ok := byKey[key{v.Proxy.Name, r.Name, b.Address}]
				if !ok {
					continue
				}
				admin, err := balance.ParseAdminState(st.Admin)
				if err != nil {
					continue
				}
				b.Restore(admin, st.Healthy)
				n++
			}
		}
	}
	return n
}

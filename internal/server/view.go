package server

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/udp"
)

// Proxies returns the running proxies, in configuration order.
func (s *Server) Proxies() []proxy.View {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]proxy.View, 0, len(s.entries))
	for _, e := range s.entries {
		v := proxy.View{Proxy: e.ln.Proxy(), Listen: e.ln.Addr()}
		if u, ok := e.ln.(*udp.Listener); ok {
			v.Dropped = u.Dropped()
		}
		out = append(out, v)
	}
	return out
}

// Connections returns at most limit (every one if limit < 0) of the
// connections and UDP sessions open now, of proxy (every proxy if ""),
// oldest first. The engine's work and the listing's memory are bounded by
// the limit.
func (s *Server) Connections(proxy string, limit int) []observe.ConnInfo {
	out := s.eng.OldestConnections(proxy, limit)
	sessions := s.udpSessions()
	if len(sessions) == 0 {
		return out
	}
	for _, si := range sessions {
		if proxy == "" || si.Proxy == proxy {
			out = append(out, si)
		}
	}
	slices.SortFunc(out, func(a, b observe.ConnInfo) int { return cmp.Compare(a.ID, b.ID) })
	if limit >= 0 && len(out) > limit {
		out = out[:limit:limit]
	}
	return out
}

// Kill closes one connection; it reports whether it was open.
func (s *Server) Kill(id uint64) bool { return s.eng.Kill(id) || s.killUDP(id) }

// ErrNotFound is returned for a proxy or backend that does not exist.
var ErrNotFound = proxy.ErrNotFound

// SetBackendState sets the administrative state of a backend of a proxy:
// in every route of the proxy that has it.
func (s *Server) SetBackendState(proxyName, backend string, state balance.AdminState) error {
	for _, v := range s.Proxies() {
		if v.Proxy.Name != proxyName {
			continue
		}
		found := false
		for _, b := range v.Proxy.Backends() {
			if sameBackend(b, backend) {
				b.SetAdmin(state)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("proxy %s has no backend %s: %w", proxyName, backend, ErrNotFound)
		}
		return nil
	}
	return fmt.Errorf("no proxy named %s: %w", proxyName, ErrNotFound)
}

// sameBackend matches a backend by its address as the API shows it, or by
// the name it was configured with.
func sameBackend(b *balance.Backend, addr string) bool {
	if b.Address == addr || b.Name == addr {
		return true
	}
	ap, err := netip.ParseAddrPort(addr)
	return err == nil && b.Addr.IsValid() && ap == b.Addr
}

// Ready says why pj is not ready to serve, or nil when every listener is
// bound and every route of every proxy has a backend that may take
// connections.
func (s *Server) Ready() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("shutting down")
	}
	for _, v := range s.Proxies() {
		for _, r := range v.Proxy.Routes {
			if !hasEligible(r) {
				if v.Proxy.Routed() {
					return fmt.Errorf("route %s of proxy %s has no backend that can take connections", r.Name, v.Proxy.Name)
				}
				return fmt.Errorf("proxy %s has no backend that can take connections", v.Proxy.Name)
			}
		}
	}
	return nil
}

// hasEligible reports whether a backend of r may take connections.
func hasEligible(r *proxy.Route) bool {
	for _, b := range r.Pool().Backends() {
		if b.Eligible() {
			return true
		}
	}
	return false
}

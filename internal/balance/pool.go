// Package balance holds a proxy's backends and decides, for each client
// connection, in which order they are tried.
package balance

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
)

// Resolver looks up host names; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Backend is one address a proxy relays to, with its live counters.
type Backend struct {
	// Address is the backend as logs and the API show it: IP:port once
	// resolved, else the configured HOST:PORT.
	Address string
	// Name is the configured HOST:PORT this backend came from.
	Name string
	// Addr is the resolved address; invalid when resolution failed.
	Addr netip.AddrPort
	// Err says why Addr is invalid.
	Err error

	Weight int
	Backup bool

	// State is what a backend accumulates while pj runs; a reload that
	// keeps the backend (same address) keeps its State.
	*State
}

// State is the live state of a backend.
type State struct {
	// Active counts the connections relayed to this backend right now.
	Active atomic.Int64
	// Total counts the connections ever relayed to this backend.
	Total atomic.Uint64
	// Connect is the time connections took to reach this backend.
	Connect observe.Histogram

	admin atomic.Int32 // an AdminState set through the admin API
}

func newState() *State {
	return &State{Connect: observe.NewHistogram(observe.ConnectBuckets)}
}

// AdminState is what an operator has said about a backend.
type AdminState int32

// Administrative states (CONTRACT.md section 6).
const (
	AdminUp    AdminState = iota // in service
	AdminDrain                   // no new connections; established ones go on
	AdminDown                    // no new connections, no health checks
)

func (a AdminState) String() string {
	switch a {
	case AdminDrain:
		return "drain"
	case AdminDown:
		return "down"
	}
	return "up"
}

// ParseAdminState reads "up", "drain" or "down".
func ParseAdminState(s string) (AdminState, error) {
	switch s {
	case "up":
		return AdminUp, nil
	case "drain":
		return AdminDrain, nil
	case "down":
		return AdminDown, nil
	}
	return AdminUp, fmt.Errorf("state %q: expected up, drain or down", s)
}

// Admin returns the administrative state.
func (s *State) Admin() AdminState { return AdminState(s.admin.Load()) }

// SetAdmin sets the administrative state.
func (s *State) SetAdmin(a AdminState) { s.admin.Store(int32(a)) }

// Eligible reports whether the backend may take new connections.
func (s *State) Eligible() bool { return s.Admin() == AdminUp }

// StateName is the state the API and the status page show: "up", "down"
// or "drain".
func (s *State) StateName() string { return s.Admin().String() }

// Pool is the set of backends of one proxy and its selection policy.
// It is safe for concurrent use.
type Pool struct {
	primaries []*Backend
	backups   []*Backend
	next      atomic.Uint64 // round-robin cursor
}

// NewPool builds a pool from the configured backends. A backend given by
// name becomes one backend per address the name resolves to (a name with
// two A records balances over both); a name that does not resolve stays as
// one backend whose every connection attempt fails with the lookup error.
// Lookups are bounded by ctx. A backend whose address was in prev (the pool
// this one replaces, or nil) keeps its State.
func NewPool(ctx context.Context, backends []config.Backend, r Resolver, prev *Pool) *Pool {
	p := &Pool{}
	seen := map[string]bool{}
	states := map[string]*State{}
	if prev != nil {
		for _, b := range prev.Backends() {
			states[b.Address] = b.State
		}
	}
	add := func(b *Backend) {
		if seen[b.Address] {
			return
		}
		seen[b.Address] = true
		if b.State = states[b.Address]; b.State == nil {
			b.State = newState()
		}
		if b.Backup {
			p.backups = append(p.backups, b)
		} else {
			p.primaries = append(p.primaries, b)
		}
	}
	for _, cb := range backends {
		for _, b := range resolve(ctx, cb, r) {
			add(b)
		}
	}
	return p
}

func resolve(ctx context.Context, cb config.Backend, r Resolver) []*Backend {
	mk := func(addr netip.AddrPort, err error) *Backend {
		b := &Backend{Address: cb.Address, Name: cb.Address, Addr: addr, Err: err, Weight: cb.Weight, Backup: cb.Backup}
		if addr.IsValid() {
			b.Address = addr.String()
		}
		return b
	}
	host, port, err := config.SplitHostPort(cb.Address)
	if err != nil {
		return []*Backend{mk(netip.AddrPort{}, err)}
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []*Backend{mk(netip.AddrPortFrom(ip.Unmap(), port), nil)}
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = fmt.Errorf("lookup %s: no addresses", host)
	}
	if err != nil {
		return []*Backend{mk(netip.AddrPort{}, fmt.Errorf("resolve backend %s: %w", cb.Address, err))}
	}
	out := make([]*Backend, 0, len(ips))
	for _, ip := range ips {
		out = append(out, mk(netip.AddrPortFrom(ip.Unmap(), port), nil))
	}
	return out
}

// Backends returns every backend, primaries first.
func (p *Pool) Backends() []*Backend {
	all := make([]*Backend, 0, len(p.primaries)+len(p.backups))
	return append(append(all, p.primaries...), p.backups...)
}

// Len is the number of backends.
func (p *Pool) Len() int { return len(p.primaries) + len(p.backups) }

// Order is the sequence of backends one connection tries, best first, as
// produced by Pool.Start: the round-robin pick, then the other primaries
// (failover within the client's connection), then the backups. It is a
// small value that needs no allocation.
type Order struct {
	pool  *Pool
	start uint32
	i     uint32
}

// Start begins the order of one connection from client.
func (p *Pool) Start(_ netip.Addr) Order {
	o := Order{pool: p}
	if n := uint64(len(p.primaries)); n > 0 {
		o.start = uint32((p.next.Add(1) - 1) % n)
	}
	return o
}

// Next returns the next eligible backend to try, or nil when all have been
// tried.
func (o *Order) Next() *Backend {
	p := o.pool
	n := uint32(len(p.primaries))
	for o.i < n+uint32(len(p.backups)) {
		i := o.i
		o.i++
		var b *Backend
		if i < n {
			b = p.primaries[(o.start+i)%n]
		} else {
			b = p.backups[i-n]
		}
		if b.Eligible() {
			return b
		}
	}
	return nil
}

// Remaining is how many backends Next has not returned yet.
func (o *Order) Remaining() int {
	return o.pool.Len() - int(o.i)
}

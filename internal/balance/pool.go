// Package balance holds a proxy's backends and decides, for each client
// connection, in which order they are tried.
package balance

import (
	"net/netip"
	"sync/atomic"

	"github.com/pj-proxy/pj/internal/config"
)

// Backend is one address a proxy relays to, with its live counters.
type Backend struct {
	Address string
	Weight  int
	Backup  bool

	// Active counts the connections relayed to this backend right now.
	Active atomic.Int64
	// Total counts the connections ever relayed to this backend.
	Total atomic.Uint64
}

// Pool is the set of backends of one proxy and its selection policy.
// It is safe for concurrent use.
type Pool struct {
	primaries []*Backend
	backups   []*Backend
	next      atomic.Uint64 // round-robin cursor
}

// NewPool builds a pool from the configured backends.
func NewPool(backends []config.Backend) *Pool {
	p := &Pool{}
	for _, b := range backends {
		be := &Backend{Address: b.Address, Weight: b.Weight, Backup: b.Backup}
		if b.Backup {
			p.backups = append(p.backups, be)
		} else {
			p.primaries = append(p.primaries, be)
		}
	}
	return p
}

// Backends returns every backend, primaries first.
func (p *Pool) Backends() []*Backend {
	all := make([]*Backend, 0, len(p.primaries)+len(p.backups))
	return append(append(all, p.primaries...), p.backups...)
}

// Candidates appends to dst the backends to try for one connection, best
// first: the round-robin pick, then the other primaries in order (for
// failover within the client's connection), then the backups.
func (p *Pool) Candidates(dst []*Backend, _ netip.Addr) []*Backend {
	if n := uint64(len(p.primaries)); n > 0 {
		start := (p.next.Add(1) - 1) % n
		for i := range n {
			dst = append(dst, p.primaries[(start+i)%n])
		}
	}
	return append(dst, p.backups...)
}

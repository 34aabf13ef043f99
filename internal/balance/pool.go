// Package balance holds a proxy's backends and decides, for each client
// connection, in which order they are tried.
package balance

import (
	"net/netip"
	"sync/atomic"
)

// Pool is the set of backends of one proxy at one moment, and the policy
// that chooses among them. It is immutable: a reload or a DNS change
// builds a new one (backends that stay keep their State).
type Pool struct {
	primaries []*Backend
	backups   []*Backend
	policy    Policy
	rr        atomic.Uint64 // where the last resort starts
}

// NewPool makes a pool of resolved backends balanced by algorithm; an
// unknown algorithm is an error (ErrUnknownBalance).
func NewPool(backends []*Backend, algorithm string) (*Pool, error) {
	p := &Pool{}
	for _, b := range backends {
		if b.Backup {
			p.backups = append(p.backups, b)
		} else {
			p.primaries = append(p.primaries, b)
		}
	}
	policy, err := newPolicy(algorithm, p.primaries)
	if err != nil {
		return nil, err
	}
	p.policy = policy
	return p, nil
}

// Backends returns every backend, primaries first.
func (p *Pool) Backends() []*Backend {
	all := make([]*Backend, 0, len(p.primaries)+len(p.backups))
	return append(append(all, p.primaries...), p.backups...)
}

// Len is the number of backends.
func (p *Pool) Len() int { return len(p.primaries) + len(p.backups) }

// Order is the sequence of backends one connection tries, best first:
//
//  1. the policy's pick among the eligible primaries, then the other
//     eligible primaries (failover within the client's connection);
//  2. the eligible backups;
//  3. when nothing was eligible at all, as a last resort because health
//     checks can be wrong: the primaries, then the backups, that are in
//     service but failed their checks. A drained or downed backend is
//     never tried.
//
// It is a small value that needs no allocation.
type Order struct {
	pool  *Pool
	start uint32
	i     uint32
	phase uint8
	tried uint32
}

const (
	phasePrimaries = iota
	phaseBackups
	phaseLastResort
	phaseLastBackups
	phaseDone
)

// Start begins the order of one connection from client.
func (p *Pool) Start(client netip.Addr) Order {
	o := Order{pool: p}
	if pick := p.policy.Pick(p.primaries, client); pick >= 0 {
		o.start = uint32(pick)
	} else {
		o.phase = phaseBackups
	}
	return o
}

// Next returns the next backend to try, or nil when all have been tried.
func (o *Order) Next() *Backend {
	p := o.pool
	for o.phase != phaseDone {
		switch o.phase {
		case phasePrimaries:
			if b := o.scan(p.primaries, o.start, (*Backend).Eligible); b != nil {
				return b
			}
		case phaseBackups:
			if b := o.scan(p.backups, 0, (*Backend).Eligible); b != nil {
				return b
			}
			if o.tried > 0 {
				o.phase = phaseDone
				return nil
			}
			o.start = uint32(p.rr.Add(1))
		case phaseLastResort:
			if b := o.scan(p.primaries, o.start, inService); b != nil {
				return b
			}
			o.phase = phaseLastBackups
			o.i = 0
			continue
		case phaseLastBackups:
			if b := o.scan(p.backups, 0, inService); b != nil {
				return b
			}
		}
		o.phase++
		o.i = 0
	}
	return nil
}

// scan returns the next backend of list, from start round the ring,
// that ok accepts.
func (o *Order) scan(list []*Backend, start uint32, ok func(*Backend) bool) *Backend {
	n := uint32(len(list))
	for o.i < n {
		b := list[(start+o.i)%n]
		o.i++
		if ok(b) {
			o.tried++
			return b
		}
	}
	return nil
}

func inService(b *Backend) bool { return b.Admin() == AdminUp }

// Remaining estimates how many backends Next may still return, to share
// the connect time between them.
func (o *Order) Remaining() int {
	return max(o.pool.Len()-int(o.tried), 0)
}

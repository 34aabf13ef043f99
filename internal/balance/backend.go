package balance

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/pj-proxy/pj/internal/observe"
)

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

// Eligible reports whether the backend may take new connections: it
// resolved, and its state allows it.
func (b *Backend) Eligible() bool { return b.Err == nil && b.State.Eligible() }

// StateName is the state the API shows; a backend whose name does not
// resolve is "down".
func (b *Backend) StateName() string {
	if b.Err != nil {
		return "down"
	}
	return b.State.StateName()
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

	unhealthy atomic.Bool  // health checks say down
	fails     atomic.Int32 // consecutive failed observations
	probing   atomic.Bool  // a probe is in flight (at most one)
	mu        sync.Mutex   // serialises health transitions
	oks       int          // consecutive successes while down; under mu
}

func newState() *State {
	return &State{Connect: observe.NewHistogram(observe.ConnectBuckets)}
}

// AdminState is what an operator has said about a backend.
type AdminState int32

// Administrative states, as the admin API sets them.
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

// Eligible reports whether the backend may take new connections: in
// service and healthy.
func (s *State) Eligible() bool { return s.Admin() == AdminUp && s.Healthy() }

// Healthy reports what health checks (active or passive) last concluded.
// A backend starts healthy, as in HAProxy and nginx, until a check says
// otherwise.
func (s *State) Healthy() bool { return !s.unhealthy.Load() }

// StateName is the state the API and the status page show: "down" when
// an operator took the backend down or checks failed, "drain" when an
// operator drains it, else "up".
func (s *State) StateName() string {
	switch a := s.Admin(); {
	case a == AdminDown || !s.Healthy():
		return "down"
	case a == AdminDrain:
		return "drain"
	}
	return "up"
}

// Result is one health observation: a probe, or a connection attempt.
type Result struct {
	OK  bool
	Err error // why it failed
	// Passive marks a real connection rather than a probe: one passive
	// success brings a backend back (a real client got through), and
	// passive failures count towards fall like failed probes.
	Passive bool
}

// Transition is a change of health caused by an observation.
type Transition struct {
	Up     bool   // the new health
	Reason string // "connect: connection refused (3 of 3 checks failed)"
}

// Observe records a health observation with the proxy's rise and fall
// and reports a change of health, if this observation caused one.
func (s *State) Observe(r Result, rise, fall int) (Transition, bool) {
	if r.OK && s.Healthy() && s.fails.Load() == 0 {
		return Transition{}, false // the common case: nothing to count
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.OK {
		s.fails.Store(0)
		if s.Healthy() {
			return Transition{}, false
		}
		s.oks++
		if s.oks < rise && !r.Passive {
			return Transition{}, false
		}
		s.oks = 0
		s.unhealthy.Store(false)
		why := fmt.Sprintf("%d of %d checks passed", rise, rise)
		if r.Passive {
			why = "a connection got through"
		}
		return Transition{Up: true, Reason: why}, true
	}
	s.oks = 0
	n := s.fails.Add(1)
	if !s.Healthy() || int(n) < fall {
		return Transition{}, false
	}
	s.unhealthy.Store(true)
	reason := fmt.Sprintf("%d of %d checks failed", fall, fall)
	if r.Passive {
		reason = fmt.Sprintf("%d connection attempts in a row failed", fall)
	}
	if r.Err != nil {
		reason = r.Err.Error() + " (" + reason + ")"
	}
	return Transition{Up: false, Reason: reason}, true
}

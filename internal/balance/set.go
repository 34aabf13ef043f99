package balance

import (
	"context"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/config"
)

// Set is the live backends of one proxy: its current Pool, the DNS
// refresh that rebuilds it when names resolve differently, and the active
// health checks of its backends. The pool is swapped atomically; a
// connection that picked a backend keeps it.
type Set struct {
	name     string
	cfg      []config.Backend
	settings config.Settings
	r        Resolver
	log      *slog.Logger

	pool atomic.Pointer[Pool]

	mu       sync.Mutex
	states   map[string]*State // every backend state by address, kept across pools
	last     [][]*Backend      // the last good resolution of each configured backend
	checkers map[*State]context.CancelFunc
	ctx      context.Context // of the running Set; nil before Start
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// NewSet resolves backends (bounded by ctx) into the first pool of proxy
// name. States of prev (the set this one replaces, or nil) are kept for
// the addresses that stay. A name that does not resolve yet becomes a
// backend whose connections fail with the lookup error until it does.
// An unknown balance algorithm is an error.
func NewSet(ctx context.Context, name string, backends []config.Backend, settings config.Settings, log *slog.Logger, prev *Set) (*Set, error) {
	if err := CheckBalance(settings.Balance); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Set{
		name: name, cfg: backends, settings: settings, log: log,
		r:      NewResolver(settings.Resolver),
		states: map[string]*State{},
		last:   make([][]*Backend, len(backends)),
	}
	if prev != nil {
		prev.mu.Lock()
		for addr, st := range prev.states {
			s.states[addr] = st
		}
		prev.mu.Unlock()
	}
	known := prev.lastResolved()
	for i, cb := range backends {
		bs, err := resolveOne(ctx, cb, s.r, s.states)
		switch {
		case err == nil:
		case len(known[cb.Address]) > 0:
			// A reload during a DNS outage: as a failed refresh does,
			// keep the addresses the name last had.
			log.Warn("backend lookup failed; keeping its last known addresses", "proxy", name, "backend", cb.Address, "error", err.Error())
			bs = reweigh(known[cb.Address], cb)
		default:
			log.Warn("backend does not resolve; connections to it fail until it does", "proxy", name, "backend", cb.Address, "error", err.Error())
			bs = []*Backend{{Address: cb.Address, Name: cb.Address, Err: err, Weight: cb.Weight, Backup: cb.Backup, State: newState()}}
		}
		s.last[i] = bs
	}
	pool, err := NewPool(s.flatten(), settings.Balance)
	if err != nil {
		return nil, err
	}
	s.pool.Store(pool)
	return s, nil
}

// lastResolved maps each configured backend of s (nil: none) to the
// addresses it last resolved to, if it ever did.
func (s *Set) lastResolved() map[string][]*Backend {
	out := map[string][]*Backend{}
	if s == nil {
		return out
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, cb := range s.cfg {
		if bs := s.last[i]; len(bs) > 0 && bs[0].Err == nil {
			out[cb.Address] = bs
		}
	}
	return out
}

// reweigh returns the backends bs, resolved from a name, with the weight
// and backup setting of cb, the name's new configuration. Backends from
// SRV records keep theirs, which the records set; the next successful
// lookup applies cb.
func reweigh(bs []*Backend, cb config.Backend) []*Backend {
	if config.IsSRV(cb.Address) {
		return bs
	}
	out := make([]*Backend, len(bs))
	for i, b := range bs {
		c := *b
		c.Weight, c.Backup = cb.Weight, cb.Backup
		out[i] = &c
	}
	return out
}

// Pool returns the current pool.
func (s *Set) Pool() *Pool { return s.pool.Load() }

// flatten lists the backends of the last resolutions, without duplicates.
func (s *Set) flatten() []*Backend {
	var out []*Backend
	seen := map[string]bool{}
	for _, bs := range s.last {
		for _, b := range bs {
			if !seen[b.Address] {
				seen[b.Address] = true
				out = append(out, b)
			}
		}
	}
	return out
}

// ChecksEnabled reports whether active health checks run for the current
// pool (see config.HealthCheck.Runs).
func (s *Set) ChecksEnabled() bool { return s.settings.HealthCheck.Runs(s.Pool().Len()) }

// Start runs the set's health checks and DNS refresh until Stop.
func (s *Set) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.checkers = map[*State]context.CancelFunc{}
	s.syncCheckers()
	if s.settings.DNSRefresh > 0 && s.hasNames() {
		s.wg.Go(func() { s.refreshLoop(s.ctx) })
	}
}

// Stop ends the set's goroutines and waits for them.
func (s *Set) Stop() {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.wg.Wait()
}

func (s *Set) hasNames() bool {
	for _, cb := range s.cfg {
		if config.IsSRV(cb.Address) {
			return true
		}
		host, _, err := config.SplitHostPort(cb.Address)
		if _, perr := netip.ParseAddr(host); err == nil && perr != nil {
			return true
		}
	}
	return false
}

// syncCheckers runs one check loop per backend of the current pool, when
// checks are on, and stops those of backends no longer in it. Under mu.
func (s *Set) syncCheckers() {
	want := map[*State]*Backend{}
	if s.ChecksEnabled() {
		for _, b := range s.Pool().Backends() {
			want[b.State] = b
		}
	}
	for st, stop := range s.checkers {
		if _, ok := want[st]; !ok {
			stop()
			delete(s.checkers, st)
		}
	}
	for st, b := range want {
		if _, ok := s.checkers[st]; ok {
			continue
		}
		ctx, stop := context.WithCancel(s.ctx)
		s.checkers[st] = stop
		s.wg.Go(func() { s.checkLoop(ctx, b) })
	}
}

// refreshLoop resolves the set's names again every dns_refresh. A lookup
// that fails keeps the addresses it had: a DNS outage never empties a
// pool.
func (s *Set) refreshLoop(ctx context.Context) {
	every := s.settings.DNSRefresh
	first := every/2 + time.Duration(rand.Int64N(int64(every)/2+1))
	repeat(ctx, first, func() time.Duration { return every }, func() { s.Refresh(ctx) })
}

// Refresh resolves the set's names now and swaps in a new pool if the
// addresses changed. It is what the refresh loop runs; tests call it.
func (s *Set) Refresh(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s.mu.Lock()
	states := maps.Clone(s.states)
	s.mu.Unlock()

	// Lookups run without the lock: a slow DNS server must not hold up
	// Stop or the health checks.
	results := make([][]*Backend, len(s.cfg))
	for i, cb := range s.cfg {
		bs, err := resolveOne(lctx, cb, s.r, states)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("backend lookup failed; keeping its last known addresses", "proxy", s.name, "backend", cb.Address,
					"error", err.Error())
			}
			continue
		}
		results[i] = bs
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for i, bs := range results {
		if bs != nil {
			s.last[i] = bs
		}
	}
	next := s.flatten()
	// Keep the states of the backends there are, so that addresses that
	// come and go (pods) do not pile up.
	s.states = map[string]*State{}
	for _, b := range next {
		s.states[b.Address] = b.State
	}
	old := s.Pool().Backends()
	if sameBackends(old, next) {
		return
	}
	pool, err := NewPool(next, s.settings.Balance)
	if err != nil { // NewSet checked the algorithm: not reached
		s.log.Error("backends changed after a DNS lookup but cannot be balanced; keeping the old ones", "proxy", s.name, "error", err.Error())
		return
	}
	s.pool.Store(pool)
	s.log.Info("backends changed after a DNS lookup", "proxy", s.name, "added", strings.Join(diff(next, old), ","), "removed", strings.Join(diff(old, next), ","))
	if s.cancel != nil && s.ctx.Err() == nil {
		s.syncCheckers()
	}
}

func sameBackends(a, b []*Backend) bool {
	return slices.EqualFunc(a, b, func(x, y *Backend) bool {
		return x.Address == y.Address && x.Weight == y.Weight && x.Backup == y.Backup && (x.Err == nil) == (y.Err == nil)
	})
}

// diff lists the addresses of a that b lacks.
func diff(a, b []*Backend) []string {
	in := map[string]bool{}
	for _, x := range b {
		in[x.Address] = true
	}
	var out []string
	for _, x := range a {
		if !in[x.Address] {
			out = append(out, x.Address)
		}
	}
	return out
}

// LogTransition logs a backend's change of health, once per change:
// "backend 10.0.0.2:80 of web is down: connect: connection refused (3 of 3
// checks failed)".
func LogTransition(log *slog.Logger, proxy string, b *Backend, tr Transition) {
	if tr.Up {
		log.Info("backend "+b.Address+" of "+proxy+" is up: "+tr.Reason, "proxy", proxy, "backend", b.Address)
		return
	}
	log.Warn("backend "+b.Address+" of "+proxy+" is down: "+tr.Reason, "proxy", proxy, "backend", b.Address)
}

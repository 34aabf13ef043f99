package server

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/proxy"
)

// ErrClosed is returned by Reload once the server is shutting down.
var ErrClosed = errors.New("pj is shutting down")

// ReloadFailed counts a reload whose configuration could not be loaded;
// the running configuration keeps serving.
func (s *Server) ReloadFailed() { s.reloadsFailed.Add(1) }

// Reload makes cfg the running configuration, without refusing a single
// connection attempt and without cutting an established connection:
//
//   - a listener whose address stays keeps its socket; its new proxy
//     applies to the connections accepted from now on;
//   - new addresses are bound (all of them, or the reload fails and
//     nothing changes) before anything is retired;
//   - a removed listener stops accepting at once; its connections run on
//     until they end or the grace period has passed;
//   - backends that stay keep their state (counters, health);
//   - a proxy whose settings did not change is not touched at all.
//
// It returns a one-line description of what changed ("no changes" for an
// unchanged configuration, which is a no-op).
func (s *Server) Reload(cfg config.Config) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", ErrClosed
	}
	if reflect.DeepEqual(cfg, s.cfg) {
		// Certificate files are read again all the same: SIGHUP is how
		// a renewed certificate is put in use.
		s.certificates(true)
		s.reloadsOK.Add(1)
		return "no changes", nil
	}

	p := s.plan(cfg)
	// The kept listeners' proxies are built first: nothing of them runs
	// yet, so a failure of theirs or of a new listener changes nothing.
	var opened []*entry
	built, err := s.build(p.kept, p.prev)
	if err == nil {
		if opened, err = s.open(p.toBind, p.prev); err == nil {
			for j, e := range opened {
				p.next[p.bindSlot[j]] = e
			}
		}
	}
	if err != nil {
		discard(built) // nil if building failed: build discards what it built
		s.reloadsFailed.Add(1)
		return "", fmt.Errorf("reload: %w; nothing changed, the running configuration goes on", err)
	}
	for i, np := range built {
		old := p.kept[i].ln.Proxy()
		p.kept[i].ln.SetProxy(np)
		// Started before the old one stops, so that its pools take over
		// the old one's warm connections rather than see them closed.
		np.Start()
		old.Stop()
	}
	for _, e := range p.retired {
		s.retire(e, cfg.GracePeriod)
	}

	// New caps apply at once: listeners held back by a cap try again.
	s.setMaxConnections(cfg.MaxConnections)

	what := describe(s.cfg, cfg)
	s.cfg = cfg
	s.entries = p.next
	for _, e := range opened {
		s.logListening(e)
	}
	s.certificates(true)
	s.reloadsOK.Add(1)
	return what, nil
}

// reloadPlan is what a reload does with each listener: keep it as it is,
// keep it with a new proxy, bind a new one, or retire it.
type reloadPlan struct {
	next     []*entry                // in configuration order; nil where one is to be bound
	kept     []*entry                // kept listeners whose proxy changes
	toBind   []config.Proxy          // proxies on new addresses
	bindSlot []int                   // where each of toBind goes in next
	retired  map[string]*entry       // listeners cfg no longer has, by key
	prev     map[string]*proxy.Proxy // the running proxies, by name, to build from
}

// plan matches cfg's proxies with the running listeners, by address. Under
// mu.
func (s *Server) plan(cfg config.Config) *reloadPlan {
	p := &reloadPlan{
		next:    make([]*entry, len(cfg.Proxies)),
		retired: make(map[string]*entry, len(s.entries)),
		prev:    make(map[string]*proxy.Proxy, len(s.entries)),
	}
	for _, e := range s.entries {
		p.retired[e.key] = e
		p.prev[e.cfg.Name] = e.ln.Proxy()
	}
	for i, pc := range cfg.Proxies {
		key := listenerKey(pc)
		e, ok := p.retired[key]
		if !ok {
			p.toBind = append(p.toBind, pc)
			p.bindSlot = append(p.bindSlot, i)
			continue
		}
		delete(p.retired, key)
		if pc.Name == pc.Listen {
			pc.Name = e.addr.String()
		}
		if _, named := p.prev[pc.Name]; !named {
			// Renamed: its backends still are the listener's.
			p.prev[pc.Name] = e.ln.Proxy()
		}
		p.next[i] = &entry{cfg: pc, key: key, ln: e.ln, addr: e.addr, from: e.from}
		// Unchanged, its runtime goes on as it is (no lookup, no new
		// pool, health checks not restarted), whatever else the reload
		// changes.
		if !reflect.DeepEqual(pc, e.cfg) {
			p.kept = append(p.kept, p.next[i])
		}
	}
	return p
}

// retire stops a listener that the new configuration no longer has. Its
// connections may run for the grace period, then they are cut.
func (s *Server) retire(e *entry, grace time.Duration) {
	s.stopListening(e.ln)
	s.releaseInherited(e.from)
	e.ln.Proxy().Stop()
	if n := s.active(); n > 0 {
		s.log.Info("stopped listening; its open connections may finish", "proxy", e.cfg.Name,
			"address", e.ln.Addr(), "grace_period", grace.String())
	}
	time.AfterFunc(grace, func() { s.cutListener(e.ln) })
}

// describe says in one line what changed between two configurations:
// "+1 proxy (cache), -1 proxy (legacy), web: backends changed".
func describe(from, to config.Config) string {
	oldByName := map[string]config.Proxy{}
	for _, p := range from.Proxies {
		oldByName[p.Name] = p
	}
	var added, parts []string
	seen := map[string]bool{}
	for _, p := range to.Proxies {
		seen[p.Name] = true
		o, ok := oldByName[p.Name]
		if !ok {
			added = append(added, p.Name)
			continue
		}
		if c := o.Changed(p); len(c) > 0 {
			parts = append(parts, p.Name+": "+strings.Join(c, ", ")+" changed")
		}
	}
	var removed []string
	for _, p := range from.Proxies {
		if !seen[p.Name] {
			removed = append(removed, p.Name)
		}
	}
	var out []string
	if len(added) > 0 {
		out = append(out, fmt.Sprintf("+%d %s (%s)", len(added), plural(len(added)), strings.Join(added, ", ")))
	}
	if len(removed) > 0 {
		out = append(out, fmt.Sprintf("-%d %s (%s)", len(removed), plural(len(removed)), strings.Join(removed, ", ")))
	}
	out = append(out, parts...)
	for _, key := range from.Changed(to) {
		out = append(out, key+" changed")
	}
	if len(out) == 0 {
		// Only what no proxy inherits, or only a proxy's place in the
		// list, differs.
		return "no effective changes"
	}
	return strings.Join(out, ", ")
}

func plural(n int) string {
	if n == 1 {
		return "proxy"
	}
	return "proxies"
}

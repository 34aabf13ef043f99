package server

import (
	"github.com/pj-proxy/pj/internal/config"
)

// Change is one thing a reload would do: add, remove or change a proxy, or
// change a setting of the whole process.
type Change struct {
	// Action is "add", "remove" or "change".
	Action string
	// Proxy is the proxy's name; empty for a setting of the whole
	// process (Keys then names it).
	Proxy string
	// Listen is the proxy's listen address: the new one for an added or
	// changed proxy, the running one for a removed proxy.
	Listen string
	// Keys name what changes: "listen", "backends", "routes" and the keys
	// of the settings.
	Keys []string
	// Cut is how many of the live connections the change would cut: those
	// of a listener that stops (a removed proxy, or one whose address
	// changes). They may go on for the grace period; those still open
	// then are closed. A change of settings applies to new connections
	// and cuts none.
	Cut int64
}

// Plan says what Reload(cfg) would do, without doing any of it: the
// proxies added, removed and changed, in that order, then the settings of
// the whole process, and for each how many live connections it would cut.
// An unchanged configuration gives no changes. It returns ErrClosed once
// the server is shutting down.
func (s *Server) Plan(cfg config.Config) ([]Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	p := s.plan(cfg)
	// The live connections of every listener the reload would stop, by
	// the name its proxy has in the running configuration.
	cut := map[string]int64{}
	running := map[string]config.Proxy{}
	for i, e := range s.entries {
		name := s.cfg.Proxies[i].Name
		running[name] = s.cfg.Proxies[i]
		if _, stops := p.retired[e.key]; stops {
			cut[name] += e.ln.Proxy().Stats.Active.Load()
		}
	}

	var added, removed, changed []Change
	seen := map[string]bool{}
	for _, pc := range cfg.Proxies {
		seen[pc.Name] = true
		old, ok := running[pc.Name]
		if !ok {
			added = append(added, Change{Action: "add", Proxy: pc.Name, Listen: pc.Listen})
			continue
		}
		if keys := old.Changed(pc); len(keys) > 0 {
			changed = append(changed, Change{Action: "change", Proxy: pc.Name, Listen: pc.Listen, Keys: keys, Cut: cut[pc.Name]})
		}
	}
	for i, e := range s.entries {
		name := s.cfg.Proxies[i].Name
		if !seen[name] {
			removed = append(removed, Change{Action: "remove", Proxy: name, Listen: e.addr.String(), Cut: cut[name]})
		}
	}
	out := append(append(added, removed...), changed...)
	for _, key := range s.cfg.Changed(cfg) {
		out = append(out, Change{Action: "change", Keys: []string{key}})
	}
	return out, nil
}

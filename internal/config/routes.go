package config

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/pj-proxy/pj/internal/route"
)

// A proxy may list routes instead of backends: one listener, several
// destinations, the first route whose match holds taking each connection
// (internal/route decides). A route has its own backends and may set
// every per-proxy setting but the listener's own: admission and
// match_timeout.

// DefaultMatchTimeout is how long pj waits for the first bytes a route
// needs, unless match_timeout says otherwise: the delay HAProxy's
// documentation gives tcp-request inspect-delay for the same job.
const DefaultMatchTimeout = 5 * time.Second

// Route is one destination of a proxy with routes.
type Route struct {
	// Name identifies the route in logs, metrics and the API; it defaults
	// to the proxy's name and the route's position from 1: "edge#2".
	Name     string
	Match    Match
	Backends []Backend
	// Settings are the proxy's, overlaid with those the route sets. The
	// listener's keys (admission, match_timeout) are the proxy's.
	Settings
	// Source is where the route is written: "pj.yaml:14".
	Source string
}

// Match is what a route asks of a connection; every field given must
// hold, and a route without any takes every connection.
type Match struct {
	SNI      []string       // server names of the TLS ClientHello; "*.example.com" too
	ALPN     []string       // protocols the ClientHello offers (any of them)
	Protocol string         // "tls", "ssh", "http" or "postgres"; "" for any
	Source   []netip.Prefix // client address ranges
}

// Route turns the match into internal/route's form. The configuration
// has been validated: the protocol is a known one.
func (m Match) Route() route.Match {
	p, _ := route.ParseProtocol(m.Protocol)
	return route.Match{SNI: m.SNI, ALPN: m.ALPN, Protocol: p, Source: m.Source}
}

// Matches are the routes' matches in order, for route.NewTable.
func (p *Proxy) Matches() []route.Match {
	out := make([]route.Match, len(p.Routes))
	for i := range p.Routes {
		out[i] = p.Routes[i].Match.Route()
	}
	return out
}

// any reports whether the match asks anything at all.
func (m Match) any() bool {
	return len(m.SNI) > 0 || len(m.ALPN) > 0 || m.Protocol != "" || len(m.Source) > 0
}

// isListenerKey reports whether the setting name is, or is inside, one
// that a route cannot set (declared forListener).
func isListenerKey(name string) bool {
	top, _, _ := strings.Cut(name, ".")
	return slices.ContainsFunc(settingKeys, func(k setting[Settings]) bool {
		return k.info().name == top && k.info().listener
	})
}

// routeSettingKeys are the settings a route may set.
var routeSettingKeys = func() []setting[Settings] {
	var out []setting[Settings]
	for _, k := range settingKeys {
		if !isListenerKey(k.info().name) {
			out = append(out, k)
		}
	}
	return out
}()

// proxyListenerKeys are the settings of the listener, shown once for a
// proxy with routes.
var proxyListenerKeys = func() []setting[Settings] {
	var out []setting[Settings]
	for _, k := range settingKeys {
		if isListenerKey(k.info().name) {
			out = append(out, k)
		}
	}
	return out
}()

// routeKeys are a route's own keys, beside the settings it may override.
var routeKeys = []setting[Route]{
	def("name", func(r *Route) *string { return &r.Name }, givenName("name the route after its proxy and position, as in edge#2")),
	object("match", func(r *Route) *Match { return &r.Match }),
	def("match.sni", func(r *Route) *[]string { return &r.Match.SNI },
		names(`a list of server names such as ["app.example.com", "*.example.com"]`, func(s string) string {
			if err := route.CheckSNI(s); err != nil {
				return err.Error()
			}
			return ""
		})),
	def("match.alpn", func(r *Route) *[]string { return &r.Match.ALPN },
		names(`a list of ALPN protocol names such as ["h2", "http/1.1"]`, func(s string) string {
			if s == "" || len(s) > 255 {
				return fmt.Sprintf("%q is not an ALPN protocol name (1 to 255 bytes)", s)
			}
			return ""
		})),
	def("match.protocol", func(r *Route) *string { return &r.Match.Protocol },
		choice[string]{what: "protocol", values: route.ProtocolNames(), orNone: true}.value()),
	def("match.source", func(r *Route) *[]netip.Prefix { return &r.Match.Source }, prefixes()),
	def("backends", func(r *Route) *[]Backend { return &r.Backends }, value[[]Backend]{read: (*decoder).backends}),
}

// names is a list of strings, each accepted by check (which says why
// not, or "").
func names(want string, check func(string) string) value[[]string] {
	return value[[]string]{
		read: func(d *decoder, n *node, path string) ([]string, bool) {
			return readList(d, n, path, want, func(s string) (string, error) {
				if why := check(s); why != "" {
					return "", errors.New(why)
				}
				return s, nil
			})
		},
		clone: slices.Clone[[]string],
		check: func(list []string) string {
			for _, s := range list {
				if why := check(s); why != "" {
					return why
				}
			}
			return ""
		},
	}
}

// fileRoute is a route as the file wrote it, before inheritance.
type fileRoute struct {
	line     int
	own      patch[Route]    // name, match, backends
	settings patch[Settings] // the settings it sets itself
}

// routes decodes a proxy's list of routes.
func (d *decoder) routes(n *node, path string) []fileRoute {
	if n.kind != kindList {
		d.typeError(n, path, "a list of routes")
		return nil
	}
	if len(n.items) == 0 {
		d.problemf(n.line, path, "no routes (list at least one, or give the proxy backends instead)")
		return nil
	}
	out := make([]fileRoute, 0, len(n.items))
	for i, item := range n.items {
		ipath := indexPath(path, i)
		fr := fileRoute{line: item.line}
		hs := keyHandlers(d, routeSettingKeys, "", &fr.settings)
		maps.Copy(hs, keyHandlers(d, routeKeys, "", &fr.own))
		ok := d.object(item, ipath, hs, func(key string) string {
			switch {
			case key == "listen":
				return "a route shares its proxy's listener"
			case key == "routes":
				return "routes do not nest"
			case isListenerKey(key):
				return key + " belongs to the listener: set it in the proxy, for all its routes"
			}
			return ""
		})
		if !ok {
			continue
		}
		if item.get("backends") == nil {
			d.problemf(item.line, ipath, "backends is missing (the list of HOST:PORT this route relays to)")
		}
		out = append(out, fr)
	}
	return out
}

// resolveRoutes builds the proxy's routes: each starts from the proxy's
// settings (fresh, so that no two share a list) and overlays its own.
func (dec *decoded) resolveRoutes(file string, fp *fileProxy, overrides []Override) []Route {
	if len(fp.routes) == 0 {
		return nil
	}
	out := make([]Route, len(fp.routes))
	for i, fr := range fp.routes {
		r := &out[i]
		fr.own.applyTo(r)
		r.Source = fmt.Sprintf("%s:%d", file, fr.line)
		r.Settings = dec.settings(&fp.settings, overrides)
		fr.settings.applyTo(&r.Settings)
	}
	return out
}

// routeProblems checks a proxy's routes, each problem placed where its
// route is written; an unnamed route gets its default name.
func (p *Proxy) routeProblems() []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if len(p.Backends) > 0 {
		add("%s: lists both backends and routes; a proxy with routes lists backends in each route", p.where())
	}
	if p.IsUDP() {
		add("%s: routes need a TCP listener: a UDP proxy has no first bytes to choose by", p.where())
	}
	seen := make(map[string]*Route, len(p.Routes))
	var takesAll *Route
	for i := range p.Routes {
		r := &p.Routes[i]
		if r.Name == "" {
			r.Name = fmt.Sprintf("%s#%d", p.Name, i+1)
		}
		where := r.where(p)
		if first, dup := seen[r.Name]; dup {
			add("%s: name %q is already used by %s", where, r.Name, first.ref())
		} else {
			seen[r.Name] = r
		}
		if takesAll != nil {
			add("%s: never taken: %s before it has no match and takes every connection", where, takesAll.ref())
		} else if !r.Match.any() {
			takesAll = r
		}
		if len(r.Backends) == 0 {
			add("%s: no backends", where)
		}
		own := keyProblems(routeKeys, r, nil)
		problems = append(problems, located(where, own)...)
		if len(own) == 0 {
			// Each key is fine alone; the match as a whole may not be
			// (sni with a protocol that has no ClientHello).
			m := r.Match.Route()
			if err := m.Check(); err != nil {
				add("%s: match: %v", where, err)
			}
		}
		problems = append(problems, located(where, keyProblems(routeSettingKeys, &r.Settings, &p.Settings))...)
		problems = append(problems, located(where, r.Settings.poolProblems())...)
		problems = append(problems, located(where, backendProblems(r.Backends))...)
	}
	return problems
}

// where starts a problem of the route: `pj.yaml:14: proxy "edge", route
// "app"`.
func (r *Route) where(p *Proxy) string {
	if r.Source == "" {
		return fmt.Sprintf("proxy %q, route %q", p.Name, r.Name)
	}
	return fmt.Sprintf("%s: proxy %q, route %q", r.Source, p.Name, r.Name)
}

// ref names the route inside another's problem: `route "app" (pj.yaml:14)`.
func (r *Route) ref() string {
	if r.Source == "" {
		return fmt.Sprintf("route %q", r.Name)
	}
	return fmt.Sprintf("route %q (%s)", r.Name, r.Source)
}

// Describe is pj check's phrase for what the route takes: "sni
// app.example.com, *.app.example.com; protocol postgres", or "everything
// else" for a route without match.
func (m Match) Describe() string {
	var parts []string
	if m.Protocol != "" {
		parts = append(parts, "protocol "+m.Protocol)
	}
	if len(m.SNI) > 0 {
		parts = append(parts, "sni "+strings.Join(m.SNI, ", "))
	}
	if len(m.ALPN) > 0 {
		parts = append(parts, "alpn "+strings.Join(m.ALPN, ", "))
	}
	if len(m.Source) > 0 {
		parts = append(parts, "source "+prefixText(m.Source))
	}
	if len(parts) == 0 {
		return "every connection"
	}
	return strings.Join(parts, "; ")
}

// Summary describes, for pj check, the route's balance algorithm, its
// health checks and the settings that are not the built-in ones.
func (r Route) Summary() []string {
	def := Default().Defaults
	s := r.Settings
	if !s.HealthCheck.Runs(len(r.Backends)) {
		s.HealthCheck.Interval = 0
	}
	return summary(routeSettingKeys, &s, &def)
}

// routesChanged reports whether two lists of routes differ.
func routesChanged(a, b []Route) bool { return !reflect.DeepEqual(a, b) }

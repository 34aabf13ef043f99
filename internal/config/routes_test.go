package config_test

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/route"
)

// load decodes and validates text as a YAML file.
func load(t *testing.T, text string, overrides ...config.Override) (config.Config, []string) {
	t.Helper()
	c, err := config.Decode("pj.yaml", []byte(text), env(nil), overrides...)
	if err != nil {
		return c, problemsOf(t, err)
	}
	return c, problems(t, &c)
}

const edgeYAML = `defaults:
  connect_timeout: 2s
proxies:
  - name: edge
    listen: "0.0.0.0:443"
    idle_timeout: 1m
    allow: ["10.0.0.0/8"]
    routes:
      - name: app
        match: { sni: ["app.example.com", "*.app.example.com"] }
        backends: ["10.0.0.1:8080", "10.0.0.2:8080"]
        connect_timeout: 7s
      - match: { protocol: postgres, sni: ["db.example.com"] }
        backends: ["10.0.0.5:5432"]
      - match: { protocol: ssh }
        backends: ["127.0.0.1:22"]
      - backends: ["10.0.0.8:443"]
  - listen: "0.0.0.0:8443"
    match_timeout: 250ms
    routes:
      - match: { source: ["10.1.0.0/16"] }
        backends: ["10.0.0.9:443"]
      - backends: ["10.0.0.8:443"]
`

func TestRoutesDecode(t *testing.T) {
	c, problems := load(t, edgeYAML)
	if problems != nil {
		t.Fatal(problems)
	}
	edge, other := c.Proxies[0], c.Proxies[1]
	var names []string
	for _, p := range c.Proxies {
		for _, r := range p.Routes {
			names = append(names, r.Name)
		}
	}
	// Unnamed routes are named after their proxy and position from 1.
	if want := []string{"app", "edge#2", "edge#3", "edge#4", "0.0.0.0:8443#1", "0.0.0.0:8443#2"}; !slices.Equal(names, want) {
		t.Errorf("route names %q, want %q", names, want)
	}
	if edge.MatchTimeout != config.DefaultMatchTimeout || other.MatchTimeout != 250*time.Millisecond {
		t.Errorf("match timeouts %s and %s, want the default and 250ms", edge.MatchTimeout, other.MatchTimeout)
	}
	app, db := edge.Routes[0], edge.Routes[1]
	// A route inherits its proxy's settings (the proxy's from the
	// defaults) and overrides its own.
	if app.ConnectTimeout != 7*time.Second || db.ConnectTimeout != 2*time.Second || app.IdleTimeout != time.Minute {
		t.Errorf("route settings: app connect %s idle %s, db connect %s; want 7s 1m 2s",
			app.ConnectTimeout, app.IdleTimeout, db.ConnectTimeout)
	}
	if app.Source != "pj.yaml:9" || db.Source != "pj.yaml:13" {
		t.Errorf("route sources %q %q, want their lines", app.Source, db.Source)
	}
	want := config.Match{Protocol: "postgres", SNI: []string{"db.example.com"}}
	if !reflect.DeepEqual(db.Match, want) {
		t.Errorf("db match %+v, want %+v", db.Match, want)
	}
	// The matches as internal/route takes them, in order.
	got := edge.Matches()
	if len(got) != 4 || got[1].Protocol != route.ProtocolPostgres || got[2].Protocol != route.ProtocolSSH ||
		!slices.Equal(got[0].SNI, []string{"app.example.com", "*.app.example.com"}) {
		t.Errorf("Matches = %+v", got)
	}
	if _, err := route.NewTable(got); err != nil {
		t.Errorf("route.NewTable: %v", err)
	}
	// Routes share no list with each other or with their proxy.
	app.Allow[0] = netip.Prefix{}
	if edge.Allow[0] != netip.MustParsePrefix("10.0.0.0/8") || db.Allow[0] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Error("a route shares its settings' lists")
	}
}

// A flag beats the file's defaults and a proxy's inherited value, but not
// what a proxy or a route sets itself.
func TestRoutesOverrides(t *testing.T) {
	three := config.Override{Key: "connect_timeout", Apply: func(s *config.Settings) { s.ConnectTimeout = 3 * time.Second }}
	c, problems := load(t, edgeYAML, three)
	if problems != nil {
		t.Fatal(problems)
	}
	if app, db := c.Proxies[0].Routes[0], c.Proxies[0].Routes[1]; app.ConnectTimeout != 7*time.Second || db.ConnectTimeout != 3*time.Second {
		t.Errorf("app %s, db %s; want its own 7s and the flag's 3s", app.ConnectTimeout, db.ConnectTimeout)
	}
}

func TestRoutesTOML(t *testing.T) {
	text := `[[proxies]]
name = "edge"
listen = "0.0.0.0:443"
match_timeout = "1s"

  [[proxies.routes]]
  match = { sni = ["app.example.com"], alpn = ["h2", "http/1.1"] }
  backends = ["10.0.0.1:8080"]

  [[proxies.routes]]
  name = "rest"
  backends = [{ address = "10.0.0.8:443", weight = 2 }]
  balance = "least-conn"
`
	c, err := config.Decode("pj.toml", []byte(text), env(nil))
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	p := c.Proxies[0]
	if len(p.Routes) != 2 || p.Routes[0].Name != "edge#1" || p.Routes[1].Name != "rest" ||
		!slices.Equal(p.Routes[0].Match.ALPN, []string{"h2", "http/1.1"}) || p.Routes[1].Balance != config.LeastConn ||
		p.Routes[1].Backends[0].Weight != 2 || p.MatchTimeout != time.Second {
		t.Errorf("decoded %+v", p)
	}
}

func TestRoutesDecodeProblems(t *testing.T) {
	proxy := func(routes string) string {
		return "proxies:\n  - name: edge\n    listen: 0.0.0.0:443\n    routes:\n" + routes
	}
	tests := []struct {
		name, text, want string
	}{
		{"routes not a list", "proxies:\n  - listen: 0.0.0.0:443\n    routes: {}\n",
			"pj.yaml:3: proxies[0].routes: expected a list of routes, got an object"},
		{"no routes", "proxies:\n  - listen: 0.0.0.0:443\n    routes: []\n",
			"pj.yaml:3: proxies[0].routes: no routes (list at least one, or give the proxy backends instead)"},
		{"backends and routes", "proxies:\n  - listen: 0.0.0.0:443\n    backends: [a:1]\n    routes: [{backends: [b:1]}]\n",
			"pj.yaml:2: proxies[0]: lists both backends and routes; a proxy with routes lists backends in each route"},
		{"route without backends", proxy("      - match: { protocol: ssh }\n"),
			"pj.yaml:5: proxies[0].routes[0]: backends is missing (the list of HOST:PORT this route relays to)"},
		{"sni with a trailing dot", proxy("      - match: { sni: [a.example.] }\n        backends: [b:1]\n"),
			`pj.yaml:5: proxies[0].routes[0].match.sni[0]: "a.example." ends in a dot; clients send names without it`},
		{"sni wildcard in the middle", proxy("      - match: { sni: [\"a.*.example\"] }\n        backends: [b:1]\n"),
			`proxies[0].routes[0].match.sni[0]: "a.*.example" has '*'`},
		{"sni not a list", proxy("      - match: { sni: a.example }\n        backends: [b:1]\n"),
			`proxies[0].routes[0].match.sni: expected a list of server names such as ["app.example.com", "*.example.com"], got a string`},
		{"empty alpn", proxy("      - match: { alpn: [\"\"] }\n        backends: [b:1]\n"),
			`proxies[0].routes[0].match.alpn[0]: "" is not an ALPN protocol name (1 to 255 bytes)`},
		{"unknown protocol", proxy("      - match: { protocol: postgresql }\n        backends: [b:1]\n"),
			`proxies[0].routes[0].match.protocol: "postgresql" is not a protocol (did you mean postgres?)`},
		{"bad source", proxy("      - match: { source: [10.1.0.0/33] }\n        backends: [b:1]\n"),
			`proxies[0].routes[0].match.source[0]:`},
		{"unknown match key", proxy("      - match: { host: a.example }\n        backends: [b:1]\n"),
			`proxies[0].routes[0].match.host: unknown key`},
		{"empty name", proxy("      - name: \"\"\n        backends: [b:1]\n"),
			`proxies[0].routes[0].name: must not be empty (leave it out to name the route after its proxy and position, as in edge#2)`},
		{"listen in a route", proxy("      - listen: 0.0.0.0:1\n        backends: [b:1]\n"),
			`proxies[0].routes[0].listen: unknown key (a route shares its proxy's listener)`},
		{"nested routes", proxy("      - routes: []\n        backends: [b:1]\n"),
			`proxies[0].routes[0].routes: unknown key (routes do not nest)`},
	}
	for _, key := range []string{"allow: []", "deny: []", "rate_limit: {}", "max_connections: 1", "max_connections_per_client: 1",
		"accept_proxy_protocol: {}", "match_timeout: 1s"} {
		name, _, _ := strings.Cut(key, ":")
		tests = append(tests, struct{ name, text, want string }{
			name + " in a route", proxy("      - " + key + "\n        backends: [b:1]\n"),
			"proxies[0].routes[0]." + name + ": unknown key (" + name + " belongs to the listener: set it in the proxy, for all its routes)",
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := load(t, tt.text)
			if len(got) != 1 || !strings.Contains(got[0], tt.want) {
				t.Errorf("problems %q, want one with %q", got, tt.want)
			}
		})
	}
}

func TestRoutesValidate(t *testing.T) {
	tests := []struct {
		name, routes string
		want         []string
	}{
		{"names taken twice", "      - name: a\n        backends: [b:1]\n        match: { protocol: ssh }\n      - name: a\n        backends: [b:2]\n",
			[]string{`pj.yaml:8: proxy "edge", route "a": name "a" is already used by route "a" (pj.yaml:5)`}},
		{"a default name taken", "      - name: edge#2\n        match: { protocol: ssh }\n        backends: [b:1]\n      - backends: [b:2]\n",
			[]string{`pj.yaml:8: proxy "edge", route "edge#2": name "edge#2" is already used by route "edge#2" (pj.yaml:5)`}},
		{"route after one that takes all", "      - backends: [b:1]\n      - match: { protocol: ssh }\n        backends: [b:2]\n",
			[]string{`pj.yaml:6: proxy "edge", route "edge#2": never taken: route "edge#1" (pj.yaml:5) before it has no match and takes every connection`}},
		{"no backends", "      - backends: []\n",
			[]string{`pj.yaml:5: proxy "edge", route "edge#1": no backends`}},
		{"sni on ssh", "      - match: { protocol: ssh, sni: [a.example] }\n        backends: [b:1]\n",
			[]string{`pj.yaml:5: proxy "edge", route "edge#1": match: protocol ssh has no ClientHello: sni and alpn need tls or postgres`}},
		{"a backend twice", "      - backends: [b:1, b:1]\n",
			[]string{`pj.yaml:5: proxy "edge", route "edge#1": backend b:1 is listed twice`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := "proxies:\n  - name: edge\n    listen: 0.0.0.0:443\n    routes:\n" + tt.routes
			_, got := load(t, text)
			if !slices.Equal(got, tt.want) {
				t.Errorf("problems\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
	// Settings from the command line are checked by Validate: a route's
	// own bad value is reported for the route; one it inherits, once, for
	// the proxy.
	c := config.Default()
	backend := []config.Backend{{Address: "10.0.0.1:80", Weight: 1}}
	bad := c.Defaults
	bad.ConnectTimeout = 0
	c.Proxies = []config.Proxy{
		{Name: "edge", Listen: "0.0.0.0:443", Settings: c.Defaults, Routes: []config.Route{
			{Name: "a", Match: config.Match{Protocol: "ssh"}, Backends: backend, Settings: bad},
			{Name: "b", Backends: backend, Settings: c.Defaults},
		}},
		{Name: "inherits", Listen: "0.0.0.0:444", Settings: bad, Routes: []config.Route{{Backends: backend, Settings: bad}}},
	}
	want := []string{
		`proxy "edge", route "a": connect timeout 0s: must be positive`,
		`proxy "inherits": connect timeout 0s: must be positive`,
	}
	if got := problems(t, &c); !slices.Equal(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
	// A match timeout must be positive.
	_, got := load(t, "defaults: { match_timeout: 0s }\n")
	if len(got) != 1 || !strings.Contains(got[0], "match_timeout: 0s must be positive") {
		t.Errorf("problems %q, want one for match_timeout", got)
	}
	// A UDP listener has no first bytes to choose by.
	c = config.Default()
	c.Proxies = []config.Proxy{{Name: "dns", Listen: "127.0.0.1:53/udp", Settings: c.Defaults,
		Routes: []config.Route{{Backends: backend, Settings: c.Defaults}}}}
	if got := problems(t, &c); !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, "routes need a TCP listener") }) {
		t.Errorf("problems %q, want one about UDP", got)
	}
}

func TestRoutesChanged(t *testing.T) {
	a, problems := load(t, edgeYAML)
	if problems != nil {
		t.Fatal(problems)
	}
	b, _ := load(t, strings.Replace(edgeYAML, "protocol: ssh", "protocol: http", 1))
	if got := a.Proxies[0].Changed(b.Proxies[0]); !slices.Equal(got, []string{"routes"}) {
		t.Errorf("Changed = %q, want routes", got)
	}
	if got := a.Proxies[0].Changed(a.Proxies[0]); len(got) != 0 {
		t.Errorf("Changed with itself = %q", got)
	}
}

func TestMatchDescribe(t *testing.T) {
	for _, tt := range []struct {
		m    config.Match
		want string
	}{
		{config.Match{}, "every connection"},
		{config.Match{Protocol: "postgres", SNI: []string{"db.example.com", "*.db.example.com"}}, "protocol postgres; sni db.example.com, *.db.example.com"},
		{config.Match{ALPN: []string{"h2"}, Source: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}, "alpn h2; source 10.1.0.0/16"},
	} {
		if got := tt.m.Describe(); got != tt.want {
			t.Errorf("Describe(%+v) = %q, want %q", tt.m, got, tt.want)
		}
	}
}

// keyCase is a file that sets a key: the problems it must have, or for
// a valid file the value its first proxy ends up with.
type keyCase[T comparable] struct {
	name, text string
	want       []string // the ends of its problems; nil for a valid file
	value      T
}

// testKey loads each case, and checks its problems or, for a valid file,
// the value of its first proxy that of reads.
func testKey[T comparable](t *testing.T, of func(config.Proxy) T, tests []keyCase[T]) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, got := load(t, tt.text)
			if tt.want == nil {
				if len(got) > 0 {
					t.Fatalf("problems %q, want none", got)
				}
				if v := of(c.Proxies[0]); v != tt.value {
					t.Errorf("value %+v, want %+v", v, tt.value)
				}
				return
			}
			for _, w := range tt.want {
				if !slices.ContainsFunc(got, func(p string) bool { return strings.HasSuffix(p, w) }) {
					t.Errorf("problems\n  %s\nwant one ending\n  %s", strings.Join(got, "\n  "), w)
				}
			}
		})
	}
}

package config_test

import (
	"errors"
	"io/fs"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

// env is a fixed environment for ${VAR} expansion.
func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

// decodeProblems decodes text as the file name and returns its problems,
// checking the error's shape on the way; nil when it decodes.
func decodeProblems(t *testing.T, name, text string, vars map[string]string) []string {
	t.Helper()
	_, err := config.Decode(name, []byte(text), env(vars))
	return problemsOf(t, err)
}

func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %T %v is not a *ValidationError", err, err)
	}
	if !errors.Is(err, config.ErrInvalid) {
		t.Errorf("error %v does not wrap ErrInvalid", err)
	}
	return ve.Problems
}

// Every key of the schema, in YAML and in TOML, written differently where
// the formats allow (objects inline and as tables, backends as strings and
// objects), with inheritance at work: both must decode to want.
const fullYAML = `# every key of the schema
log: { format: json, level: DEBUG }
admin: { listen: "127.0.0.1:9090", token: "${TOKEN}", pprof: true }
grace_period: 45s
max_connections: 1_000
defaults:
  balance: least-conn
  connect_timeout: ${TIMEOUT}
  idle_timeout: 1m
  half_close_timeout: 2m
  health_check: { interval: 3s, timeout: 500ms, rise: 4, fall: 5, send: "PING\r\n", expect: "+PONG", send_proxy: true }
  dns_refresh: 30s
  resolver: "10.0.0.53:53"
  max_connections: 100
  max_connections_per_client: 10
  allow: ["10.0.0.0/8", "192.0.2.7", "::ffff:172.16.0.0/108"]
  deny: ["10.6.6.0/24"]
  rate_limit: { per_client: 2.5, burst: 5 }
  bandwidth: { per_connection: 10MiB }
  proxy_protocol: v2
  accept_proxy_protocol: { trusted: ["10.1.0.0/16"] }
  match_timeout: 3s
proxies:
  - name: web
    listen: "0.0.0.0:8080"
    backends:
      - 10.0.0.1:80
      - { address: "10.0.0.2:80", weight: 3 }
      - { address: "[2001:db8::9]:080", backup: true }
    idle_timeout: 0s
    health_check: { interval: 5s }
    rate_limit: { burst: 8 }
  - listen: ":5432"
    backends: ["db.internal:5432"]
    balance: round-robin
    max_connections: 0
    allow: []
    bandwidth: { per_connection: 1GB }
    accept_proxy_protocol: {}
    health_check: { send: "", send_hex: "50 49 4e 47 0d 0a", expect: "", expect_hex: "2B:50:4F:4E:47" }
    udp: { responses: 2 }
    send: "$$HOME"
  - name: edge
    listen: ":443"
    match_timeout: 1s
    idle_timeout: 5m
    routes:
      - name: app
        match: { sni: ["app.example.com", "*.app.example.com"], alpn: [h2], protocol: tls, source: ["10.2.0.0/16"] }
        backends: ["10.0.0.1:8443"]
        balance: random-two
        health_check: { rise: 1 }
      - backends: ["10.0.0.8:443"]
`

const fullTOML = `# every key of the schema
grace_period = "45s"
max_connections = 1_000

[log]
format = "json"
level = "DEBUG"

[admin]
listen = "127.0.0.1:9090"
token = "${TOKEN}"
pprof = true

[defaults]
balance = "least-conn"
connect_timeout = "${TIMEOUT}"
idle_timeout = "1m"
half_close_timeout = "2m"
health_check = { interval = "3s", timeout = "500ms", rise = 4, fall = 5, send = "PING\r\n", expect = "+PONG", send_proxy = true }
dns_refresh = "30s"
resolver = "10.0.0.53:53"
max_connections = 100
max_connections_per_client = 10
allow = ["10.0.0.0/8", "192.0.2.7", "::ffff:172.16.0.0/108"]
deny = ["10.6.6.0/24"]
bandwidth.per_connection = "10MiB"
proxy_protocol = "v2"
match_timeout = "3s"

[defaults.rate_limit]
per_client = 2.5
burst = 5

[defaults.accept_proxy_protocol]
trusted = ["10.1.0.0/16"]

[[proxies]]
name = "web"
listen = "0.0.0.0:8080"
backends = [
  "10.0.0.1:80",
  { address = "10.0.0.2:80", weight = 3 },
  { address = "[2001:db8::9]:080", backup = true },
]
idle_timeout = "0s"
health_check.interval = "5s"
rate_limit = { burst = 8 }

[[proxies]]
listen = ":5432"
balance = "round-robin"
max_connections = 0
allow = []
bandwidth = { per_connection = "1GB" }
accept_proxy_protocol = {}
health_check = { send = "", send_hex = "50 49 4e 47 0d 0a", expect = "", expect_hex = "2B:50:4F:4E:47" }
udp.responses = 2
send = "$$HOME"

  [[proxies.backends]]
  address = "db.internal:5432"

[[proxies]]
name = "edge"
listen = ":443"
match_timeout = "1s"
idle_timeout = "5m"

  [[proxies.routes]]
  name = "app"
  match = { sni = ["app.example.com", "*.app.example.com"], alpn = ["h2"], protocol = "tls", source = ["10.2.0.0/16"] }
  backends = ["10.0.0.1:8443"]
  balance = "random-two"
  health_check = { rise = 1 }

  [[proxies.routes]]
  backends = ["10.0.0.8:443"]
`

func TestYAMLAndTOMLDecodeToTheSameConfig(t *testing.T) {
	// send is not a proxy key: both files have it in the second proxy so
	// that the comparison is of two decodings that went all the way.
	fixYAML := strings.Replace(fullYAML, `    send: "$$HOME"`+"\n", "", 1)
	fixTOML := strings.Replace(fullTOML, `send = "$$HOME"`+"\n", "", 1)
	vars := map[string]string{"TOKEN": "s3cret$", "TIMEOUT": "2s"}

	pfx := netip.MustParsePrefix
	defaults := config.Settings{
		Balance:          config.LeastConn,
		ConnectTimeout:   2 * time.Second,
		IdleTimeout:      time.Minute,
		HalfCloseTimeout: 2 * time.Minute,
		HealthCheck: config.HealthCheck{Interval: 3 * time.Second, Timeout: 500 * time.Millisecond, Rise: 4, Fall: 5,
			Send: "PING\r\n", Expect: "+PONG", SendProxy: true, Explicit: true},
		DNSRefresh:              30 * time.Second,
		Resolver:                "10.0.0.53:53",
		MaxConnections:          100,
		MaxConnectionsPerClient: 10,
		Allow:                   []netip.Prefix{pfx("10.0.0.0/8"), pfx("192.0.2.7/32"), pfx("172.16.0.0/12")},
		Deny:                    []netip.Prefix{pfx("10.6.6.0/24")},
		RateLimit:               config.RateLimit{PerClient: 2.5, Burst: 5},
		Bandwidth:               config.Bandwidth{PerConnection: 10 << 20},
		ProxyProtocol:           "v2",
		AcceptProxyProtocol:     &config.AcceptProxyProtocol{Trusted: []netip.Prefix{pfx("10.1.0.0/16")}},
		MatchTimeout:            3 * time.Second,
		Pool:                    config.Pool{MaxAge: 30 * time.Second},
	}
	web := defaults
	web.IdleTimeout = 0                                        // an explicit 0s beats the defaults' 1m
	web.HealthCheck.Interval = 5 * time.Second                 // key by key: the rest is the defaults'
	web.RateLimit = config.RateLimit{PerClient: 2.5, Burst: 8} // per_client inherited, burst its own
	web.AcceptProxyProtocol = defaults.AcceptProxyProtocol
	db := defaults
	db.Balance = config.RoundRobin
	db.MaxConnections = 0       // explicit 0 beats 100
	db.Allow = []netip.Prefix{} // an empty list replaces the defaults'
	db.Bandwidth = config.Bandwidth{PerConnection: 1_000_000_000}
	db.HealthCheck.Send, db.HealthCheck.Expect = "", ""
	db.HealthCheck.SendHex, db.HealthCheck.ExpectHex = "50494e470d0a", "2b504f4e47" // plain lower-case hex
	db.UDP.Responses = 2
	edge := defaults
	edge.MatchTimeout = time.Second
	edge.IdleTimeout = 5 * time.Minute
	app := edge // a route inherits its proxy's settings, key by key
	app.Balance = config.RandomTwo
	app.HealthCheck.Rise = 1
	want := config.Config{
		Log:            config.Log{Format: "json", Level: "debug"},
		Admin:          config.Admin{Listen: "127.0.0.1:9090", Token: "s3cret$", Pprof: true},
		GracePeriod:    45 * time.Second,
		MaxConnections: 1000,
		Defaults:       defaults,
		Proxies: []config.Proxy{
			{Name: "web", Listen: "0.0.0.0:8080", Settings: web, Backends: []config.Backend{
				{Address: "10.0.0.1:80", Weight: 1},
				{Address: "10.0.0.2:80", Weight: 3},
				{Address: "[2001:db8::9]:80", Weight: 1, Backup: true},
			}},
			{Listen: ":5432", Settings: db, Backends: []config.Backend{{Address: "db.internal:5432", Weight: 1}}},
			{Name: "edge", Listen: ":443", Settings: edge, Routes: []config.Route{
				{Name: "app", Settings: app, Backends: []config.Backend{{Address: "10.0.0.1:8443", Weight: 1}},
					Match: config.Match{SNI: []string{"app.example.com", "*.app.example.com"}, ALPN: []string{"h2"},
						Protocol: "tls", Source: []netip.Prefix{pfx("10.2.0.0/16")}}},
				{Settings: edge, Backends: []config.Backend{{Address: "10.0.0.8:443", Weight: 1}}},
			}},
		},
	}

	for _, tt := range []struct {
		name, text string
		sources    []string // of the proxies, then of the routes
	}{
		{"pj.yaml", fixYAML, []string{"pj.yaml:24", "pj.yaml:33", "pj.yaml:42", "pj.yaml:47", "pj.yaml:52"}},
		{"pj.yml", fixYAML, []string{"pj.yml:24", "pj.yml:33", "pj.yml:42", "pj.yml:47", "pj.yml:52"}},
		{"pj.toml", fixTOML, []string{"pj.toml:37", "pj.toml:49", "pj.toml:62", "pj.toml:68", "pj.toml:75"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.Decode(tt.name, []byte(tt.text), env(vars))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got.File != tt.name {
				t.Errorf("File = %q, want %q", got.File, tt.name)
			}
			got.File = ""
			var sources []string
			for i := range got.Proxies {
				sources = append(sources, got.Proxies[i].Source)
				got.Proxies[i].Source = ""
			}
			for i := range got.Proxies {
				for j := range got.Proxies[i].Routes {
					sources = append(sources, got.Proxies[i].Routes[j].Source)
					got.Proxies[i].Routes[j].Source = ""
				}
			}
			if !reflect.DeepEqual(sources, tt.sources) {
				t.Errorf("Sources = %q, want %q (the lines of their entries)", sources, tt.sources)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Decode(%s) =\n%+v\nwant\n%+v", tt.name, got, want)
			}
			// Inherited settings are copies: changing one proxy's list or
			// pointer must not change another's.
			got.Proxies[0].Deny[0] = netip.Prefix{}
			got.Proxies[0].AcceptProxyProtocol.Trusted = nil
			if got.Proxies[1].Deny[0] != pfx("10.6.6.0/24") || got.Defaults.Deny[0] != pfx("10.6.6.0/24") ||
				len(got.Proxies[1].AcceptProxyProtocol.Trusted) != 1 {
				t.Errorf("proxies share the slices or pointers of their settings")
			}
		})
	}

	// The extra key is reported by both, at the same key path.
	for name, text := range map[string]string{"pj.yaml": fullYAML, "pj.toml": fullTOML} {
		got := decodeProblems(t, name, text, vars)
		if len(got) != 1 || !strings.HasSuffix(got[0], ": proxies[1].send: unknown key (valid here: "+
			"accept_proxy_protocol, allow, backend_tls, backends, balance, bandwidth, connect_timeout, deny, dns_refresh, half_close_timeout, health_check, idle_timeout, "+
			"listen, match_timeout, max_connections, max_connections_per_client, name, pool, proxy_protocol, rate_limit, resolver, routes, tls, udp)") {
			t.Errorf("%s: problems = %q, want one for proxies[1].send listing the valid keys", name, got)
		}
	}
}

func TestDecodeEmptyFileIsTheDefaults(t *testing.T) {
	for _, name := range []string{"pj.yaml", "pj.toml"} {
		for _, text := range []string{"", "# nothing but a comment\n"} {
			got, err := config.Decode(name, []byte(text), env(nil))
			if err != nil {
				t.Fatalf("%s %q: %v", name, text, err)
			}
			want := config.Default()
			want.File = name
			want.Proxies = []config.Proxy{}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s %q = %+v, want the defaults", name, text, got)
			}
		}
	}
}

// TestDecodeProblems covers every class of error of a file, in both
// formats, with its line and key path: the whole list must be exactly
// what is wanted, in the order of the lines.
func TestDecodeProblems(t *testing.T) {
	tests := []struct {
		name, yaml, toml string
		// want are the problems of both files, each after its file name
		// ("3: defaults.x: unknown key"); where the two differ,
		// yamlWant and tomlWant are each file's, whole.
		want               []string
		yamlWant, tomlWant []string
		vars               map[string]string
	}{
		{
			name: "unknown top-level key",
			yaml: "log: {}\ndefualts: {}\n",
			want: []string{"2: defualts: unknown key (did you mean defaults?)"},
			toml: "[log]\n[defualts]\n",
		},
		{
			name: "unknown key far from any",
			yaml: "colour: blue\n",
			want: []string{"1: colour: unknown key (valid here: admin, defaults, grace_period, log, max_connections, proxies, watch)"},
			toml: "colour = \"blue\"\n",
		},
		{
			name: "proxy for proxies",
			yaml: "proxy: []\n",
			want: []string{"1: proxy: unknown key (did you mean proxies?)"},
			toml: "proxy = []\n",
		},
		{
			name: "a setting at the top level",
			yaml: "connect_timeout: 5s\n",
			want: []string{"1: connect_timeout: unknown key (connect_timeout goes under defaults (for every proxy) or in a proxy)"},
			toml: "connect_timeout = \"5s\"\n",
		},
		{
			name: "unknown key in defaults",
			yaml: "defaults:\n  balance: round-robin\n  conect_timeout: 5s\n",
			want: []string{"3: defaults.conect_timeout: unknown key (did you mean connect_timeout?)"},
			toml: "[defaults]\nbalance = \"round-robin\"\nconect_timeout = \"5s\"\n",
		},
		{
			name: "a proxy key in defaults",
			yaml: "defaults:\n  listen: 0.0.0.0:80\n",
			want: []string{"2: defaults.listen: unknown key (listen is set in each proxy, not in defaults)"},
			toml: "[defaults]\nlisten = \"0.0.0.0:80\"\n",
		},
		{
			name: "unknown key in a proxy",
			yaml: `proxies:
  - listen: 0.0.0.0:80
    backends: [a:1]
  - listen: 0.0.0.0:81
    backends: [a:1]
    conect_timeout: 5s
`,
			yamlWant: []string{"pj.yaml:6: proxies[1].conect_timeout: unknown key (did you mean connect_timeout?)"},
			toml: `[[proxies]]
listen = "0.0.0.0:80"
backends = ["a:1"]
[[proxies]]
listen = "0.0.0.0:81"
backends = ["a:1"]
Connect-Timeout = "5s"
`,
			tomlWant: []string{"pj.toml:7: proxies[1].Connect-Timeout: unknown key (did you mean connect_timeout?)"},
		},
		{
			name:     "unknown key in a nested object",
			yaml:     "defaults:\n  health_check:\n    intervall: 2s\n",
			yamlWant: []string{"pj.yaml:3: defaults.health_check.intervall: unknown key (did you mean interval?)"},
			toml:     "[defaults.health_check]\nintervall = \"2s\"\n",
			tomlWant: []string{"pj.toml:2: defaults.health_check.intervall: unknown key (did you mean interval?)"},
		},
		{
			name: "unknown key in a backend object",
			yaml: `proxies:
  - listen: 0.0.0.0:80
    backends:
      - a:1
      - adress: b:1
        wieght: 2
`,
			yamlWant: []string{
				"pj.yaml:5: proxies[0].backends[1].adress: unknown key (did you mean address?)",
				"pj.yaml:5: proxies[0].backends[1]: address is missing (the backend's HOST:PORT)",
				"pj.yaml:6: proxies[0].backends[1].wieght: unknown key (did you mean weight?)",
			},
			toml: `[[proxies]]
listen = "0.0.0.0:80"
backends = [
  "a:1",
  { adress = "b:1", wieght = 2 },
]
`,
			tomlWant: []string{
				"pj.toml:5: proxies[0].backends[1].adress: unknown key (did you mean address?)",
				"pj.toml:5: proxies[0].backends[1].wieght: unknown key (did you mean weight?)",
				"pj.toml:5: proxies[0].backends[1]: address is missing (the backend's HOST:PORT)",
			},
		},
		{
			name: "wrong types",
			yaml: `defaults:
  connect_timeout: 5
  allow: 10.0.0.0/8
  health_check: [2s]
  max_connections: "100"
  rate_limit: { per_client: fast }
proxies:
  - listen: 0.0.0.0:80
    backends: a:1
    name: 8080
  - listen: [0.0.0.0:81]
    backends: [a:1, 7, { address: b:1, weight: 2.5, backup: "yes" }]
`,
			yamlWant: []string{
				`pj.yaml:2: defaults.connect_timeout: expected a duration string such as "5s", got a number`,
				`pj.yaml:3: defaults.allow: expected a list of address ranges such as ["10.0.0.0/8"], got a string`,
				`pj.yaml:4: defaults.health_check: expected an object, got a list`,
				`pj.yaml:5: defaults.max_connections: expected a whole number, got a string (write it without quotes)`,
				`pj.yaml:6: defaults.rate_limit.per_client: expected a number, got a string`,
				`pj.yaml:9: proxies[0].backends: expected a list of backends, got a string`,
				`pj.yaml:10: proxies[0].name: expected a string, got a number`,
				`pj.yaml:11: proxies[1].listen: expected a string, got a list`,
				`pj.yaml:12: proxies[1].backends[1]: expected "HOST:PORT" or an object {address, weight, backup}, got a number`,
				`pj.yaml:12: proxies[1].backends[2].weight: expected a whole number, got 2.5`,
				`pj.yaml:12: proxies[1].backends[2].backup: expected true or false, got a string`,
			},
			toml: `[defaults]
connect_timeout = 5
allow = "10.0.0.0/8"
health_check = ["2s"]
max_connections = "100"
rate_limit = { per_client = "fast" }
[[proxies]]
listen = "0.0.0.0:80"
backends = "a:1"
name = 8080
[[proxies]]
listen = ["0.0.0.0:81"]
backends = ["a:1", 7, { address = "b:1", weight = 2.5, backup = "yes" }]
`,
			tomlWant: []string{
				`pj.toml:2: defaults.connect_timeout: expected a duration string such as "5s", got a number`,
				`pj.toml:3: defaults.allow: expected a list of address ranges such as ["10.0.0.0/8"], got a string`,
				`pj.toml:4: defaults.health_check: expected an object, got a list`,
				`pj.toml:5: defaults.max_connections: expected a whole number, got a string (write it without quotes)`,
				`pj.toml:6: defaults.rate_limit.per_client: expected a number, got a string`,
				`pj.toml:9: proxies[0].backends: expected a list of backends, got a string`,
				`pj.toml:10: proxies[0].name: expected a string, got a number`,
				`pj.toml:12: proxies[1].listen: expected a string, got a list`,
				`pj.toml:13: proxies[1].backends[1]: expected "HOST:PORT" or an object {address, weight, backup}, got a number`,
				`pj.toml:13: proxies[1].backends[2].weight: expected a whole number, got 2.5`,
				`pj.toml:13: proxies[1].backends[2].backup: expected true or false, got a string`,
			},
		},
		{
			name:     "a proxy that is not an object",
			yaml:     "proxies:\n  - 0.0.0.0:80:a:1\n",
			yamlWant: []string{"pj.yaml:2: proxies[0]: expected an object, got a string"},
			toml:     "proxies = [\"0.0.0.0:80:a:1\"]\n",
			tomlWant: []string{"pj.toml:1: proxies[0]: expected an object, got a string"},
		},
		{
			name: "bad values",
			yaml: `grace_period: -1s
log: { format: xml, level: loud }
defaults:
  connect_timeout: fast
  idle_timeout: 0
  balance: roundrobin
  proxy_protocol: v3
  deny: ["10.0.0.0/33", "fe80::1%eth0", 10.1.0.0/16]
  bandwidth: { per_connection: 10 parsecs }
  health_check: { rise: 0, fall: -1, timeout: 0s }
  max_connections: -5
  resolver: "10.0.0.53"
`,
			want: []string{
				`1: grace_period: -1s must not be negative (0s turns it off)`,
				`2: log.format: "xml" is not a log format; expected text or json`,
				`2: log.level: "loud" is not a log level; expected debug, info, warn or error`,
				`4: defaults.connect_timeout: "fast" is not a duration (write e.g. 500ms, 5s, 1m30s)`,
				`5: defaults.idle_timeout: expected a duration string such as "5s", got a number`,
				`6: defaults.balance: "roundrobin" is not a balance algorithm (did you mean round-robin?)`,
				`7: defaults.proxy_protocol: "v3" is not a PROXY protocol version; expected v1 or v2`,
				`8: defaults.deny[0]: "10.0.0.0/33" is not an address range (write e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32)`,
				`8: defaults.deny[1]: "fe80::1%eth0" is not an address range (write e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32)`,
				`9: defaults.bandwidth.per_connection: "10 parsecs" is not a size (write e.g. 10MiB, 500KiB, 1GB or a number of bytes)`,
				`10: defaults.health_check.rise: 0 must be at least 1`,
				`10: defaults.health_check.fall: -1 must be at least 1`,
				`10: defaults.health_check.timeout: 0s must be positive`,
				`11: defaults.max_connections: -5 must not be negative (0 means no cap)`,
				`12: defaults.resolver: "10.0.0.53": missing :PORT after the host (expected HOST:PORT, e.g. 10.0.0.1:80)`,
			},
			toml: `grace_period = "-1s"
log = { format = "xml", level = "loud" }
[defaults]
connect_timeout = "fast"
idle_timeout = 0
balance = "roundrobin"
proxy_protocol = "v3"
deny = ["10.0.0.0/33", "fe80::1%eth0", "10.1.0.0/16"]
bandwidth = { per_connection = "10 parsecs" }
health_check = { rise = 0, fall = -1, timeout = "0s" }
max_connections = -5
resolver = "10.0.0.53"
`,
		},
		{
			name: "bad addresses, missing keys, weight 0",
			yaml: `proxies:
  - name: web
    listen: 0.0.0.0
    backends: ["10.0.0.1:0", ":80", { address: "b:1", weight: 0 }]
  - name: ""
  - backends: []
`,
			yamlWant: []string{
				`pj.yaml:3: proxies[0].listen: "0.0.0.0": missing :PORT after the host (expected HOST:PORT, e.g. 0.0.0.0:8080)`,
				`pj.yaml:4: proxies[0].backends[0]: "10.0.0.1:0": port 0 is not a port one can connect to`,
				`pj.yaml:4: proxies[0].backends[1]: ":80" has no host (expected HOST:PORT, e.g. 10.0.0.1:80, or an SRV name such as _http._tcp.web.example)`,
				`pj.yaml:4: proxies[0].backends[2].weight: 0 must be at least 1`,
				`pj.yaml:5: proxies[1].name: must not be empty (leave it out to name the proxy after its listen address)`,
				`pj.yaml:5: proxies[1]: listen is missing (the address to accept connections on, e.g. listen: 0.0.0.0:8080)`,
				`pj.yaml:5: proxies[1]: backends is missing (the list of HOST:PORT to relay to, or routes to choose among)`,
				`pj.yaml:6: proxies[2]: listen is missing (the address to accept connections on, e.g. listen: 0.0.0.0:8080)`,
			},
			toml: `[[proxies]]
name = "web"
listen = "0.0.0.0"
backends = ["10.0.0.1:0", ":80", { address = "b:1", weight = 0 }]
[[proxies]]
name = ""
[[proxies]]
backends = []
`,
			tomlWant: []string{
				`pj.toml:3: proxies[0].listen: "0.0.0.0": missing :PORT after the host (expected HOST:PORT, e.g. 0.0.0.0:8080)`,
				`pj.toml:4: proxies[0].backends[0]: "10.0.0.1:0": port 0 is not a port one can connect to`,
				`pj.toml:4: proxies[0].backends[1]: ":80" has no host (expected HOST:PORT, e.g. 10.0.0.1:80, or an SRV name such as _http._tcp.web.example)`,
				`pj.toml:4: proxies[0].backends[2].weight: 0 must be at least 1`,
				`pj.toml:5: proxies[1]: listen is missing (the address to accept connections on, e.g. listen: 0.0.0.0:8080)`,
				`pj.toml:5: proxies[1]: backends is missing (the list of HOST:PORT to relay to, or routes to choose among)`,
				`pj.toml:6: proxies[1].name: must not be empty (leave it out to name the proxy after its listen address)`,
				`pj.toml:7: proxies[2]: listen is missing (the address to accept connections on, e.g. listen: 0.0.0.0:8080)`,
			},
		},
		{
			name: "unset variables and bad references",
			yaml: `admin:
  token: ${PJ_ADMIN_TOKEN}
defaults:
  connect_timeout: ${TIMEOUT}
  resolver: "${DNS:-10.0.0.53:53}"
  idle_timeout: "${IDLE"
  max_connections: ${MAX}
`,
			toml: `# the token comes from the environment
admin.token = "${PJ_ADMIN_TOKEN}"
[defaults]
connect_timeout = "${TIMEOUT}"
resolver = "${DNS:-10.0.0.53:53}"
idle_timeout = "${IDLE"
max_connections = "${MAX}"
`,
			want: []string{
				`2: admin.token: environment variable PJ_ADMIN_TOKEN is not set`,
				`4: defaults.connect_timeout: "fast" is not a duration (write e.g. 500ms, 5s, 1m30s)`,
				`5: defaults.resolver: "${DNS:-10.0.0.53:53}": ${DNS:-10.0.0.53:53} is not a variable reference: write ${NAME}, NAME made of letters, digits and _ (no defaults or other shell forms; $$ is a literal $)`,
				`6: defaults.idle_timeout: "${IDLE": ${ is not closed by } (write $$ for a literal $)`,
				`7: defaults.max_connections: "lots" is not a whole number`,
			},
			vars: map[string]string{"TIMEOUT": "fast", "MAX": "lots"},
		},
		{
			name: "a key set twice",
			yaml: "defaults:\n  connect_timeout: 1s\n  idle_timeout: 1m\n  connect_timeout: 2s\n",
			want: []string{"4: defaults.connect_timeout: set twice (first on line 2)"},
			toml: "[defaults]\nconnect_timeout = \"1s\"\nidle_timeout = \"1m\"\nconnect_timeout = \"2s\"\n",
		},
		{
			name:     "syntax error",
			yaml:     "defaults:\n  connect_timeout: 1s\n idle_timeout: 1m\n",
			yamlWant: []string{"pj.yaml:3: syntax error: did not find expected key"},
			toml:     "[defaults]\nconnect_timeout = \"1s\"\nidle_timeout = 1m\n",
			tomlWant: []string{"pj.toml:3: syntax error: strings must be quoted"},
		},
		{
			name:     "not an object at the top",
			yaml:     "- listen: 0.0.0.0:80\n",
			yamlWant: []string{"pj.yaml:1: expected an object of keys (log, admin, grace_period, max_connections, watch, defaults, proxies) at the top of the file, got a list"},
			// A TOML document is always a table.
			toml:     "[defaults]\n[defaults]\n",
			tomlWant: []string{"pj.toml:2: defaults: [defaults] is defined twice (first on line 1)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, f := range []struct {
				name, text string
				want       []string
			}{{"pj.yaml", tt.yaml, tt.yamlWant}, {"pj.toml", tt.toml, tt.tomlWant}} {
				if f.want == nil {
					for _, w := range tt.want {
						f.want = append(f.want, f.name+":"+w)
					}
				}
				got := decodeProblems(t, f.name, f.text, tt.vars)
				if !reflect.DeepEqual(got, f.want) {
					t.Errorf("%s: problems\n  %s\nwant\n  %s", f.name, strings.Join(got, "\n  "), strings.Join(f.want, "\n  "))
				}
			}
		})
	}
}

func TestTOMLTableRules(t *testing.T) {
	tests := []struct {
		name, toml string
		want       []string
	}{
		{
			name: "a list of tables after a static list",
			toml: "[[proxies]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"a:1\"]\n[[proxies.backends]]\naddress = \"b:1\"\n",
			want: []string{"pj.toml:4: proxies[0].backends: [[proxies.backends]] adds a table to a list, but backends is already set on line 3"},
		},
		{
			name: "an inline table extended",
			toml: "[defaults]\nhealth_check = { interval = \"1s\" }\n[defaults.health_check]\nrise = 1\n",
			want: []string{"pj.toml:3: defaults.health_check: [defaults.health_check] is defined twice (first on line 2)"},
		},
		{
			name: "a dotted key over a value",
			toml: "[defaults]\nbandwidth = 5\nbandwidth.per_connection = \"1MiB\"\n",
			want: []string{
				"pj.toml:2: defaults.bandwidth: expected an object, got a number",
				"pj.toml:3: defaults.bandwidth: is already set on line 2 and cannot be extended with a dotted key",
			},
		},
		{
			name: "a header through a value",
			toml: "defaults = 1\n[defaults.health_check]\n",
			want: []string{
				"pj.toml:1: defaults: expected an object, got a number",
				"pj.toml:2: defaults: is already set on line 1 and cannot be extended by a [table] header",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decodeProblems(t, "pj.toml", tt.toml, nil); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
	// What TOML allows: a sub-table of an implied one defined later, and
	// dotted keys building a table.
	ok := "[defaults.health_check]\ninterval = \"1s\"\n[defaults]\nbalance = \"round-robin\"\nrate_limit.per_client = 1\nrate_limit.burst = 2\n"
	c, err := config.Decode("pj.toml", []byte(ok), env(nil))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if c.Defaults.HealthCheck.Interval != time.Second || c.Defaults.RateLimit != (config.RateLimit{PerClient: 1, Burst: 2}) {
		t.Errorf("Defaults = %+v", c.Defaults)
	}
}

func TestYAMLAnchorsAndMergeKeys(t *testing.T) {
	text := `x-common: &common
  connect_timeout: 2s
  idle_timeout: 1m
proxies:
  - listen: 0.0.0.0:80
    backends: [a:1]
    <<: *common
    idle_timeout: 5m
`
	// The anchor's own key is unknown, which proves it is read; without it
	// the merge must work.
	if got := decodeProblems(t, "pj.yaml", text, nil); len(got) != 1 || !strings.HasPrefix(got[0], "pj.yaml:1: x-common: unknown key") {
		t.Fatalf("problems = %q, want one for x-common", got)
	}
	text = strings.Replace(text, "x-common: &common\n  connect_timeout: 2s\n  idle_timeout: 1m\n", "", 1)
	text = "defaults: &common\n  connect_timeout: 2s\n  idle_timeout: 1m\n" + text
	c, err := config.Decode("pj.yaml", []byte(text), env(nil))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if p := c.Proxies[0]; p.ConnectTimeout != 2*time.Second || p.IdleTimeout != 5*time.Minute {
		t.Errorf("merged proxy: connect %s, idle %s; want 2s (merged) and 5m (its own key wins)", p.ConnectTimeout, p.IdleTimeout)
	}
}

func TestExpansion(t *testing.T) {
	vars := map[string]string{"HOST": "10.0.0.7", "PORT": "5432", "EMPTY": "", "T": " 2s "}
	tests := []struct {
		in, want string
	}{
		{"${HOST}:${PORT}", "10.0.0.7:5432"},
		{"pa$$word", "pa$word"},
		{"$$${HOST}", "$10.0.0.7"},
		{"$${HOST}", "${HOST}"},
		{"a$b$", "a$b$"},
		{"x${EMPTY}y", "xy"},
		{"no dollar", "no dollar"},
	}
	for _, tt := range tests {
		text := "admin: { token: '" + tt.in + "' }\n"
		c, err := config.Decode("pj.yaml", []byte(text), env(vars))
		if err != nil {
			t.Fatalf("%q: %v", tt.in, err)
		}
		if c.Admin.Token != tt.want {
			t.Errorf("%q expanded to %q, want %q", tt.in, c.Admin.Token, tt.want)
		}
		toml := "[admin]\ntoken = '" + tt.in + "'\n"
		if c, err = config.Decode("pj.toml", []byte(toml), env(vars)); err != nil || c.Admin.Token != tt.want {
			t.Errorf("TOML: %q expanded to %q (%v), want %q", tt.in, c.Admin.Token, err, tt.want)
		}
	}
	// Expansion comes before the value is read: a duration, a number and
	// a boolean from variables. Keys are never expanded.
	text := "defaults:\n  connect_timeout: ${T}\n  max_connections: ${N}\nadmin: { pprof: \"${B}\" }\n"
	c, err := config.Decode("pj.yaml", []byte(text), env(map[string]string{"T": " 2s ", "N": "50", "B": "true"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Defaults.ConnectTimeout != 2*time.Second || c.Defaults.MaxConnections != 50 || !c.Admin.Pprof {
		t.Errorf("expanded values: connect %s, max %d, pprof %v", c.Defaults.ConnectTimeout, c.Defaults.MaxConnections, c.Admin.Pprof)
	}
	got := decodeProblems(t, "pj.yaml", "${KEY}: 1\n", map[string]string{"KEY": "log"})
	if len(got) != 1 || !strings.Contains(got[0], "unknown key") {
		t.Errorf("a key was expanded: problems %q", got)
	}
}

func TestOverrides(t *testing.T) {
	text := `defaults:
  connect_timeout: 2s
  balance: round-robin
proxies:
  - name: own
    listen: 0.0.0.0:80
    backends: [a:1]
    connect_timeout: 7s
  - name: inherits
    listen: 0.0.0.0:81
    backends: [a:1]
`
	three := config.Override{Key: "connect_timeout", Apply: func(s *config.Settings) { s.ConnectTimeout = 3 * time.Second }}
	c, err := config.Decode("pj.yaml", []byte(text), env(nil), three)
	if err != nil {
		t.Fatal(err)
	}
	if c.Defaults.ConnectTimeout != 3*time.Second {
		t.Errorf("defaults: connect %s, want the override's 3s", c.Defaults.ConnectTimeout)
	}
	if got := c.Proxies[0].ConnectTimeout; got != 7*time.Second {
		t.Errorf("a proxy that sets connect_timeout got %s, want its own 7s", got)
	}
	if got := c.Proxies[1].ConnectTimeout; got != 3*time.Second {
		t.Errorf("a proxy that does not set connect_timeout got %s, want the override's 3s", got)
	}
	c, err = config.Decode("pj.yaml", []byte(text), env(nil))
	if err != nil || c.Proxies[1].ConnectTimeout != 2*time.Second {
		t.Errorf("without override: %s (%v), want the file's 2s", c.Proxies[1].ConnectTimeout, err)
	}
}

// TestLoadValidates covers the problems of the whole file, which
// Validate finds after decoding: they name the file and the line of the
// proxy.
func TestLoadValidates(t *testing.T) {
	testLoadProblems(t, []fileCase{
		{
			name: "duplicate listen, empty backends, duplicate names",
			yaml: `proxies:
  - name: web
    listen: 0.0.0.0:8080
    backends: [10.0.0.1:80]
  - name: api
    listen: 0.0.0.0:8080
    backends: [10.0.0.2:80]
  - name: web
    listen: 0.0.0.0:8081
    backends: []
  - name: 0.0.0.0:8082
    listen: 0.0.0.0:8083
    backends: [a:1, a:1]
  - listen: 0.0.0.0:8082
    backends: [a:1]
`,
			want: []string{
				`pj.yaml:5: proxy "api": listen address 0.0.0.0:8080 is already used by proxy "web" (pj.yaml:2); to balance one listener over several backends, list them all in one proxy's backends`,
				`pj.yaml:8: proxy "web": name "web" is already used by proxy "web" (pj.yaml:2); give each proxy a name of its own`,
				`pj.yaml:8: proxy "web": no backends`,
				`pj.yaml:11: proxy "0.0.0.0:8082": backend a:1 is listed twice`,
				`pj.yaml:14: proxy "0.0.0.0:8082": name "0.0.0.0:8082" is already used by proxy "0.0.0.0:8082" (pj.yaml:11); give each proxy a name of its own`,
			},
		},
		{
			name: "settings that need each other, and settings not supported yet",
			yaml: `admin: { listen: "127.0.0.1:9090" }
defaults:
  rate_limit: { per_client: 10 }
  balance: least-conn
proxies:
  - listen: 0.0.0.0:80
    backends: [a:1]
    health_check: { interval: 1s }
    accept_proxy_protocol: {}
  - listen: 0.0.0.0:81
    backends: [a:1]
    health_check: { interval: 0s }
`,
			want: []string{
				`pj.yaml: defaults: rate_limit: burst must be at least 1 when per_client is set`,
				`pj.yaml:6: proxy "0.0.0.0:80": accept_proxy_protocol: trusted lists no address ranges; list those of the load balancers whose PROXY headers pj may believe`,
			},
		},
	})
}

// loadFile writes text as pj.yaml in a directory of its own, which
// becomes the working directory, and loads it by that name.
func loadFile(t *testing.T, text string) (config.Config, error) {
	t.Helper()
	t.Chdir(filepath.Dir(testutil.WriteFile(t, "pj.yaml", text)))
	return config.Load("pj.yaml", env(nil))
}

// fileCase is a YAML file and every problem Load must report of it, in
// order.
type fileCase struct {
	name, yaml string
	want       []string
}

func testLoadProblems(t *testing.T, tests []fileCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadFile(t, tt.yaml)
			if got := problemsOf(t, err); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

func TestLoad(t *testing.T) {
	path := testutil.WriteFile(t, "pj.toml", "[[proxies]]\nlisten = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:22\"]\n")
	c, err := config.Load(path, env(nil))
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	if c.File != path || len(c.Proxies) != 1 || c.Proxies[0].Name != "127.0.0.1:0" || c.Proxies[0].Source != path+":1" {
		t.Errorf("Load = %+v", c)
	}

	missing := filepath.Join(t.TempDir(), "missing.yaml")
	if _, err := config.Load(missing, env(nil)); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load of a missing file = %v, want an error naming %s", err, missing)
	}

	for _, name := range []string{"pj.json", "pj"} {
		_, err := config.Load(testutil.WriteFile(t, name, "{}"), env(nil))
		got := problemsOf(t, err)
		if len(got) != 1 || !strings.Contains(got[0], name+": cannot tell the format") || !strings.Contains(got[0], ".yaml, .yml") || !strings.Contains(got[0], ".toml") {
			t.Errorf("Load(%s) problems %q, want one naming the supported extensions", name, got)
		}
	}
}

func TestSyntaxErrorLines(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
	}{
		{"pj.yaml", "proxies:\n  - listen: a:1\n    backends: [a:1\n\nlog: {}\n", []string{"pj.yaml:3: syntax error: did not find expected ',' or ']'"}},
		{"pj.yaml", "a: b: c\n", []string{"pj.yaml:1: syntax error: mapping values are not allowed in this context"}},
		{"pj.yaml", "log: {}\nx: *nope\n", []string{"pj.yaml:2: syntax error: unknown anchor 'nope' referenced"}},
		{"pj.yaml", "log: {}\n---\nlog: {}\n", []string{"pj.yaml:2: syntax error: a second YAML document (after ---): a configuration file holds one"}},
		{"pj.yaml", "log: &a\n  format: *a\n", []string{
			"pj.yaml:2: log.format: the alias *a is inside the value it refers to",
			"pj.yaml:2: log.format: expected a string, got nothing (null)",
		}},
		{"pj.toml", "log = {}\nb = \n", []string{"pj.toml:2: syntax error: unexpected character U+000A at start of value"}},
		{"pj.toml", "[log]\n[defaults\n", []string{"pj.toml:2: syntax error: expected ']' to close table name"}},
		{"pj.toml", "[log]\nformat = \"json\nlevel = \"info\"\n", []string{"pj.toml:2: syntax error: basic strings cannot have new lines"}},
	}
	for _, tt := range tests {
		if got := decodeProblems(t, tt.name, tt.text, nil); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s %q: problems\n  %s\nwant\n  %s", tt.name, tt.text, strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
		}
	}
}

// Editors on Windows begin UTF-8 files with a byte order mark (EF BB BF):
// a file with one loads as it would without, its problems on the same
// lines.
func TestLoadByteOrderMark(t *testing.T) {
	const bom = "\xef\xbb\xbf"
	tests := []struct {
		name, file, text string
		source           string   // where the one proxy is, when it loads
		want             []string // else the problems, after the file's path
	}{
		{"yaml", "pj.yaml", "log: {}\nproxies:\n  - listen: 127.0.0.1:0\n    backends: [127.0.0.1:22]\n", ":3", nil},
		{"toml", "pj.toml", "[log]\n[[proxies]]\nlisten = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:22\"]\n", ":2", nil},
		{"yaml syntax error", "pj.yaml", "log: {}\nproxies:\n  - listen: a:1\n    backends: [a:1\n\n", "", []string{":4: syntax error: did not find expected ',' or ']'"}},
		{"toml syntax error", "pj.toml", "[log]\n[defaults\n", "", []string{":2: syntax error: expected ']' to close table name"}},
		{"yaml unknown key", "pj.yaml", "log:\n  formt: json\n", "", []string{":2: log.formt: unknown key (did you mean format?)"}},
		{"toml unknown key", "pj.toml", "[log]\nformt = \"json\"\n", "", []string{":2: log.formt: unknown key (did you mean format?)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := testutil.WriteFile(t, tt.file, bom+tt.text)
			c, err := config.Load(path, env(nil))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if len(c.Proxies) != 1 || c.Proxies[0].Source != path+tt.source {
					t.Fatalf("proxies %+v, want one at %s%s", c.Proxies, path, tt.source)
				}
				return
			}
			want := make([]string, len(tt.want))
			for i, w := range tt.want {
				want[i] = path + w
			}
			if got := problemsOf(t, err); !reflect.DeepEqual(got, want) {
				t.Errorf("problems\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
			}
		})
	}
}

package config_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
)

// mapping parses a mapping that is known to be good and gives it the
// built-in settings, as whoever builds a Proxy must.
func mapping(t *testing.T, s string) config.Proxy {
	t.Helper()
	p, err := config.ParseMapping(s)
	if err != nil {
		t.Fatalf("ParseMapping(%q): %v", s, err)
	}
	p.Settings = config.Default().Defaults
	return p
}

// literal is a proxy built field by field, as a config file's decoder or
// a test does, with the built-in settings.
func literal(name, listen string, backends ...config.Backend) config.Proxy {
	return config.Proxy{Name: name, Listen: listen, Backends: backends, Settings: config.Default().Defaults}
}

// withProxies is the built-in configuration with the given mappings.
func withProxies(t *testing.T, mappings ...string) config.Config {
	t.Helper()
	c := config.Default()
	for _, m := range mappings {
		c.Proxies = append(c.Proxies, mapping(t, m))
	}
	return c
}

// oneProxy makes a configuration of the proxy of one mapping, with what
// set changes in it.
func oneProxy(m string, set func(p *config.Proxy)) func(*testing.T, *config.Config) {
	return func(t *testing.T, c *config.Config) {
		p := mapping(t, m)
		set(&p)
		c.Proxies = []config.Proxy{p}
	}
}

// problems runs Validate and returns its problems, checking the error's
// shape on the way.
func problems(t *testing.T, c *config.Config) []string {
	t.Helper()
	err := c.Validate()
	if err == nil {
		return nil
	}
	if !errors.Is(err, config.ErrInvalid) {
		t.Errorf("Validate error %v does not wrap ErrInvalid", err)
	}
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Validate error %T is not a *ValidationError", err)
	}
	if len(ve.Problems) == 0 {
		t.Errorf("Validate returned a ValidationError with no problems")
	}
	return ve.Problems
}

func TestDefaultIsValid(t *testing.T) {
	c := withProxies(t, "0.0.0.0:8787:127.0.0.1:22")
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}
	d := config.Default()
	if d.Log.Format != config.FormatText || d.Log.Level != "info" || d.GracePeriod != 30*time.Second ||
		d.Defaults.Balance != config.RoundRobin || d.Defaults.ConnectTimeout != 5*time.Second || d.Defaults.IdleTimeout != 0 {
		t.Errorf("Default() = %+v, want the defaults README.md documents", d)
	}
}

func TestValidateInheritsDefaults(t *testing.T) {
	c := config.Default()
	c.Defaults.ConnectTimeout = 2 * time.Second
	c.Defaults.IdleTimeout = time.Minute
	// Settings are resolved by whoever builds the Proxy: the mapping takes
	// the defaults whole, db overrides three of them.
	web := mapping(t, "0.0.0.0:8080:10.0.0.1:80,10.0.0.2:80")
	web.Settings = c.Defaults
	dbSettings := c.Defaults
	dbSettings.Balance = config.RoundRobin
	dbSettings.ConnectTimeout = 500 * time.Millisecond
	dbSettings.IdleTimeout = time.Hour
	c.Proxies = []config.Proxy{
		web,
		{
			Name:     "db",
			Listen:   "127.0.0.1:5432",
			Backends: []config.Backend{{Address: "10.0.0.5:5432"}, {Address: "10.0.0.6:5432", Weight: 3}},
			Settings: dbSettings,
		},
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}

	web = c.Proxies[0]
	if web.Name != "0.0.0.0:8080" {
		t.Errorf("Name = %q, want the listen address", web.Name)
	}
	if web.Balance != config.RoundRobin || web.ConnectTimeout != 2*time.Second || web.IdleTimeout != time.Minute {
		t.Errorf("proxy without settings got balance %q, connect %s, idle %s; want the defaults round-robin, 2s, 1m",
			web.Balance, web.ConnectTimeout, web.IdleTimeout)
	}
	for _, b := range web.Backends {
		if b.Weight != 1 {
			t.Errorf("backend %s weight %d, want 1", b.Address, b.Weight)
		}
	}

	db := c.Proxies[1]
	if db.Name != "db" {
		t.Errorf("Name = %q, want the one set, db", db.Name)
	}
	if db.ConnectTimeout != 500*time.Millisecond || db.IdleTimeout != time.Hour {
		t.Errorf("proxy with its own settings got connect %s, idle %s; want 500ms, 1h", db.ConnectTimeout, db.IdleTimeout)
	}
	if got := []int{db.Backends[0].Weight, db.Backends[1].Weight}; got[0] != 1 || got[1] != 3 {
		t.Errorf("weights = %v, want [1 3] (unset becomes 1, set is kept)", got)
	}
}

func TestValidateDuplicateListen(t *testing.T) {
	tests := []struct {
		name     string
		mappings []string
		want     []string // each must appear in the one problem
	}{
		{
			name:     "two mappings one address",
			mappings: []string{"0.0.0.0:8080:10.0.0.1:80", "0.0.0.0:8080:10.0.0.2:80"},
			want: []string{
				"-p 0.0.0.0:8080:10.0.0.2:80", // the second, where the problem is
				"already used by -p 0.0.0.0:8080:10.0.0.1:80",
				"0.0.0.0:8080:10.0.0.1:80,10.0.0.2:80",
			},
		},
		{
			name:     "lists of backends are merged in order",
			mappings: []string{"0.0.0.0:8080:a:1,b:2", "0.0.0.0:8080:c:3,d:4"},
			want:     []string{"0.0.0.0:8080:a:1,b:2,c:3,d:4"},
		},
		{
			name:     "host names differ only in case",
			mappings: []string{"LocalHost:80:a:1", "localhost:80:b:1"},
			want:     []string{"localhost:80 is already used", "LocalHost:80:a:1,b:1"},
		},
		{
			name:     "ipv6",
			mappings: []string{"[::1]:80:a:1", "[::1]:80:[::2]:1"},
			want:     []string{"[::1]:80:a:1,[::2]:1"},
		},
		{
			name:     "leading zeros are the same port",
			mappings: []string{"0.0.0.0:80:a:1", "0.0.0.0:080:b:1"},
			want:     []string{"0.0.0.0:80:a:1,b:1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := withProxies(t, tt.mappings...)
			got := problems(t, &c)
			if len(got) != 1 {
				t.Fatalf("problems = %q, want exactly one", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("problem %q does not contain %q", got[0], w)
				}
			}
		})
	}
}

func TestValidateListenersThatDoNotCollide(t *testing.T) {
	tests := []struct {
		name     string
		mappings []string
	}{
		{"port 0 twice", []string{"127.0.0.1:0:a:1", "127.0.0.1:0:b:1"}},
		{"empty host port 0 twice", []string{":0:a:1", ":0:b:1", ":0:c:1"}},
		{"same port other hosts", []string{"127.0.0.1:80:a:1", "127.0.0.2:80:b:1"}},
		{"same host other ports", []string{"127.0.0.1:80:a:1", "127.0.0.1:81:a:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := withProxies(t, tt.mappings...)
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestValidateThreeOnOneAddress(t *testing.T) {
	c := withProxies(t, "0.0.0.0:80:a:1", "0.0.0.0:80:b:1", "0.0.0.0:80:c:1")
	got := problems(t, &c)
	if len(got) != 2 {
		t.Fatalf("problems = %q, want two (the second and the third mapping)", got)
	}
	if !strings.Contains(got[0], "-p 0.0.0.0:80:b:1") || !strings.Contains(got[1], "-p 0.0.0.0:80:c:1") {
		t.Errorf("problems = %q, want one naming each later mapping", got)
	}
}

// TestValidateDuplicateListenNamesFirstProxy covers proxies that do not come
// from a mapping (a config file, tests): Source is empty, and the message
// must still say which proxy already holds the address.
func TestValidateDuplicateListenNamesFirstProxy(t *testing.T) {
	c := config.Default()
	c.Proxies = []config.Proxy{
		literal("web", "0.0.0.0:8080", config.Backend{Address: "10.0.0.1:80"}),
		literal("api", "0.0.0.0:8080", config.Backend{Address: "10.0.0.2:80"}),
	}
	got := problems(t, &c)
	if len(got) != 1 {
		t.Fatalf("problems = %q, want one", got)
	}
	for _, w := range []string{`proxy "api"`, `already used by proxy "web"`, "0.0.0.0:8080:10.0.0.1:80,10.0.0.2:80"} {
		if !strings.Contains(got[0], w) {
			t.Errorf("problem %q does not contain %q", got[0], w)
		}
	}
}

func TestValidateProblems(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, c *config.Config)
		want   []string // one substring per expected problem, in order
	}{
		{
			name: "duplicate backend in one proxy",
			mutate: func(t *testing.T, c *config.Config) {
				c.Proxies = []config.Proxy{mapping(t, "0.0.0.0:80:10.0.0.1:80,10.0.0.2:80,10.0.0.1:80")}
			},
			want: []string{"-p 0.0.0.0:80:10.0.0.1:80,10.0.0.2:80,10.0.0.1:80: backend 10.0.0.1:80 is listed twice"},
		},
		{
			name:   "zero default connect timeout",
			mutate: func(_ *testing.T, c *config.Config) { c.Defaults.ConnectTimeout = 0 },
			want:   []string{"connect timeout 0s: must be positive"},
		},
		{
			name:   "negative default connect timeout",
			mutate: func(_ *testing.T, c *config.Config) { c.Defaults.ConnectTimeout = -time.Second },
			want:   []string{"connect timeout -1s: must be positive"},
		},
		{
			name: "bad default timeouts are reported once, not per proxy",
			mutate: func(t *testing.T, c *config.Config) {
				c.Defaults.ConnectTimeout = 0
				c.Defaults.IdleTimeout = -time.Second
				c.Proxies = []config.Proxy{mapping(t, "0.0.0.0:80:b:80"), mapping(t, "0.0.0.0:81:b:80")}
			},
			want: []string{"connect timeout 0s: must be positive", "idle timeout -1s: must not be negative"},
		},
		{
			name: "a proxy's own bad timeout is reported beside a bad default",
			mutate: func(t *testing.T, c *config.Config) {
				c.Defaults.ConnectTimeout = 0
				p := mapping(t, "0.0.0.0:80:b:80")
				p.ConnectTimeout = -time.Second
				c.Proxies = []config.Proxy{p}
			},
			want: []string{"connect timeout 0s: must be positive", "-p 0.0.0.0:80:b:80: connect timeout -1s: must be positive"},
		},
		{
			name:   "negative proxy connect timeout",
			mutate: oneProxy("0.0.0.0:80:b:80", func(p *config.Proxy) { p.ConnectTimeout = -5 * time.Second }),
			want:   []string{"-p 0.0.0.0:80:b:80: connect timeout -5s: must be positive"},
		},
		{
			name:   "negative default idle timeout",
			mutate: func(_ *testing.T, c *config.Config) { c.Defaults.IdleTimeout = -time.Second },
			want:   []string{"idle timeout -1s: must not be negative"},
		},
		{
			name:   "negative proxy idle timeout",
			mutate: oneProxy("0.0.0.0:80:b:80", func(p *config.Proxy) { p.IdleTimeout = -time.Millisecond }),
			want:   []string{"-p 0.0.0.0:80:b:80: idle timeout -1ms: must not be negative"},
		},
		{
			name:   "bad proxy balance",
			mutate: oneProxy("0.0.0.0:80:b:80", func(p *config.Proxy) { p.Balance = "fastest" }),
			want:   []string{`-p 0.0.0.0:80:b:80: balance "fastest": expected round-robin`},
		},
		{
			name: "bad default balance is reported once, not per proxy",
			mutate: func(t *testing.T, c *config.Config) {
				c.Defaults.Balance = "roundrobin"
				c.Proxies = []config.Proxy{mapping(t, "0.0.0.0:80:b:80"), mapping(t, "0.0.0.0:81:b:80")}
			},
			want: []string{`balance "roundrobin": expected round-robin`},
		},
		{
			name:   "bad default balance without proxies",
			mutate: func(_ *testing.T, c *config.Config) { c.Defaults.Balance = "" },
			want:   []string{`balance "": expected round-robin`},
		},
		{
			name:   "bad log format",
			mutate: func(_ *testing.T, c *config.Config) { c.Log.Format = "xml" },
			want:   []string{`log format "xml": expected text or json`},
		},
		{
			name:   "empty log format",
			mutate: func(_ *testing.T, c *config.Config) { c.Log.Format = "" },
			want:   []string{`log format "": expected text or json`},
		},
		{
			name:   "bad log level",
			mutate: func(_ *testing.T, c *config.Config) { c.Log.Level = "verbose" },
			want:   []string{`log level "verbose": expected debug, info, warn or error`},
		},
		{
			name:   "negative grace period",
			mutate: func(_ *testing.T, c *config.Config) { c.GracePeriod = -time.Second },
			want:   []string{"grace period -1s: must not be negative"},
		},
		{
			name: "no backends, named by proxy name",
			mutate: func(_ *testing.T, c *config.Config) {
				c.Proxies = []config.Proxy{literal("web", "0.0.0.0:80")}
			},
			want: []string{`proxy "web": no backends`},
		},
		{
			name: "no backends, named by listen address",
			mutate: func(_ *testing.T, c *config.Config) {
				c.Proxies = []config.Proxy{literal("", "0.0.0.0:80")}
			},
			want: []string{`proxy "0.0.0.0:80": no backends`},
		},
		{
			name: "negative weight",
			mutate: func(_ *testing.T, c *config.Config) {
				c.Proxies = []config.Proxy{literal("web", ":80", config.Backend{Address: "b:80", Weight: -2})}
			},
			want: []string{`proxy "web": backend b:80: weight -2 must be at least 1`},
		},
		{
			name: "several problems are all reported",
			mutate: func(t *testing.T, c *config.Config) {
				c.Log.Format = "xml"
				c.Log.Level = "loud"
				c.GracePeriod = -time.Second
				bad := mapping(t, "0.0.0.0:80:a:1,a:1")
				bad.IdleTimeout = -time.Second
				c.Proxies = []config.Proxy{bad, mapping(t, "0.0.0.0:80:b:1")}
			},
			want: []string{
				`log format "xml"`,
				`log level "loud"`,
				"grace period -1s",
				"-p 0.0.0.0:80:a:1,a:1: idle timeout -1s",
				"-p 0.0.0.0:80:a:1,a:1: backend a:1 is listed twice",
				"-p 0.0.0.0:80:b:1: listen address 0.0.0.0:80 is already used",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			tt.mutate(t, &c)
			got := problems(t, &c)
			if len(got) != len(tt.want) {
				t.Fatalf("problems = %q\nwant %d: %q", got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}

// TestValidateChecksAddresses covers proxies that do not come through
// ParseMapping (a config file): Validate must check the addresses itself,
// or a typo reaches net.Listen ("" even binds an ephemeral port on every
// interface).
func TestValidateChecksAddresses(t *testing.T) {
	tests := []struct {
		name    string
		listen  string
		backend string
		want    string
	}{
		{"empty listen", "", "10.0.0.1:80", "listen"},
		{"listen without port", "0.0.0.0", "10.0.0.1:80", `"0.0.0.0"`},
		{"listen port out of range", "0.0.0.0:70000", "10.0.0.1:80", `"0.0.0.0:70000"`},
		{"unbracketed ipv6 listen", "::1:80", "10.0.0.1:80", `"::1:80"`},
		{"backend without port", "0.0.0.0:80", "10.0.0.1", `"10.0.0.1"`},
		{"backend port 0", "0.0.0.0:80", "10.0.0.1:0", "10.0.0.1:0"},
		{"backend without host", "0.0.0.0:80", ":80", `":80"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			c.Proxies = []config.Proxy{literal("p", tt.listen, config.Backend{Address: tt.backend})}
			got := problems(t, &c)
			if len(got) != 1 || !strings.Contains(got[0], tt.want) {
				t.Errorf("problems = %q, want one naming %s", got, tt.want)
			}
		})
	}
}

func TestValidationErrorText(t *testing.T) {
	one := &config.ValidationError{Problems: []string{"log format \"xml\": expected text or json"}}
	if got, want := one.Error(), `log format "xml": expected text or json`; got != want {
		t.Errorf("one problem: Error() = %q, want %q", got, want)
	}
	two := &config.ValidationError{Problems: []string{"first", "second"}}
	if got, want := two.Error(), "2 problems:\n  first\n  second"; got != want {
		t.Errorf("two problems: Error() = %q, want %q", got, want)
	}
	if !errors.Is(two, config.ErrInvalid) {
		t.Errorf("ValidationError does not unwrap to ErrInvalid")
	}
	wrapped := fmt.Errorf("load: %w", two)
	var ve *config.ValidationError
	if !errors.As(wrapped, &ve) || len(ve.Problems) != 2 || !errors.Is(wrapped, config.ErrInvalid) {
		t.Errorf("a wrapped ValidationError is not found by errors.As / errors.Is")
	}
}

func TestValidateWeightBounds(t *testing.T) {
	for _, tc := range []struct {
		weight int
		ok     bool
	}{{1, true}, {config.MaxWeight, true}, {config.MaxWeight + 1, false}} {
		c := withProxies(t, "0.0.0.0:8080:10.0.0.1:80")
		c.Proxies[0].Settings = c.Defaults
		c.Proxies[0].Backends[0].Weight = tc.weight
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("weight %d: Validate = %v, want ok=%v", tc.weight, err, tc.ok)
		}
	}
}

func TestSRVBackendsHaveNoPort(t *testing.T) {
	cfg, err := config.Decode("pj.yaml", []byte("proxies:\n  - listen: \"127.0.0.1:9000\"\n    backends: [\"_api._tcp.web.example\"]\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("an SRV backend without a port: %v", err)
	}
	if got := cfg.Proxies[0].Backends[0].Address; got != "_api._tcp.web.example" {
		t.Fatalf("backend %q", got)
	}
	_, err = config.Decode("pj.yaml", []byte("proxies:\n  - listen: \"127.0.0.1:9000\"\n    backends: [\"web.example\"]\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "or an SRV name") {
		t.Fatalf("a plain name without a port: %v; want an error that mentions SRV names", err)
	}
}

// Package config holds pj's one configuration type and its validation.
//
// Configuration flows one way: Default() gives the built-in values; a file
// (Load) and the command line fill them in; Validate checks the whole
// result; the server builds immutable runtime objects from it. Every Proxy
// carries fully resolved Settings: whoever builds a Proxy copies the
// defaults into it first and overlays what the proxy sets itself.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Balance algorithms.
const (
	RoundRobin         = "round-robin"
	WeightedRoundRobin = "weighted-round-robin"
	LeastConn          = "least-conn"
	RandomTwo          = "random-two"
	SourceHash         = "source-hash"
)

// Balances lists the algorithms in the order help texts show them.
var Balances = []string{RoundRobin, WeightedRoundRobin, LeastConn, RandomTwo, SourceHash}

// Log formats.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// Config is everything pj needs to run.
type Config struct {
	Log   Log
	Admin Admin
	// GracePeriod is how long connections may finish after SIGTERM, and
	// how long connections of a proxy removed by a reload may run on.
	GracePeriod time.Duration
	// MaxConnections caps the connections of the whole process; 0 means
	// no cap. Past it, listeners stop accepting until connections close.
	MaxConnections int
	// Watch reloads the file when it changes (as --watch).
	Watch bool
	// Defaults are the settings every proxy starts from.
	Defaults Settings
	Proxies  []Proxy
	// File is the configuration file the values came from, if any.
	File string
}

// Log selects the encoding and the threshold of log records.
type Log struct {
	Format string // "text" or "json"
	Level  string // "debug", "info", "warn" or "error"
}

// Admin is the HTTP admin listener (CONTRACT.md section 6).
type Admin struct {
	Listen string // HOST:PORT; empty means no admin listener
	Token  string // required by mutating endpoints when set
	Pprof  bool   // serve net/http/pprof under /debug/pprof/
}

// Settings are the per-proxy settings that "defaults" gives every proxy
// and that a proxy may override.
type Settings struct {
	Balance        string
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration // 0 = never
	HealthCheck    HealthCheck

	// DNSRefresh is how often backend host names are resolved again.
	DNSRefresh time.Duration
	// Resolver is a DNS server (HOST:PORT) for backend names; empty means
	// the system's resolver.
	Resolver string

	MaxConnections          int // per listener; 0 = no cap
	MaxConnectionsPerClient int // per client IP; 0 = no cap
	Allow, Deny             []netip.Prefix
	RateLimit               RateLimit
	Bandwidth               Bandwidth

	// ProxyProtocol sends a PROXY protocol header to backends: "" (off),
	// "v1" or "v2".
	ProxyProtocol string
	// AcceptProxyProtocol reads a PROXY protocol header from clients in
	// these ranges; nil means the listener does not expect one.
	AcceptProxyProtocol *AcceptProxyProtocol
}

// HealthCheck configures active checks of a proxy's backends.
type HealthCheck struct {
	Interval time.Duration // 0 turns active checks off
	Timeout  time.Duration
	Rise     int // consecutive successes that bring a backend up
	Fall     int // consecutive failures that take it down
	// Send, if set, is written after connecting; Expect, if set, must
	// prefix the reply (HAProxy's tcp-check send/expect).
	Send, Expect string
	// SendProxy sends the PROXY protocol header in checks too.
	SendProxy bool
	// Explicit is true when the configuration set health_check for this
	// proxy (or in defaults): then a proxy with one backend is checked
	// too. Without it, only proxies of several backends are.
	Explicit bool
}

// RateLimit is a token bucket of new connections per client IP.
type RateLimit struct {
	PerClient float64 // tokens per second; 0 = no limit
	Burst     int
}

// Bandwidth caps bytes per second.
type Bandwidth struct {
	PerConnection int64 // bytes per second in each direction; 0 = no cap
}

// AcceptProxyProtocol says whose PROXY protocol headers are believed.
type AcceptProxyProtocol struct {
	Trusted []netip.Prefix
}

// Proxy is one listener and the backends its connections are relayed to.
type Proxy struct {
	// Name identifies the proxy in logs, metrics and the API; it defaults
	// to the listen address.
	Name string
	// Listen is HOST:PORT; an empty host means every interface, port 0 an
	// ephemeral port.
	Listen   string
	Backends []Backend
	Settings

	// Source tells where the proxy was defined, for error messages:
	// "-p 0.0.0.0:80:b:80", "PJ_PROXY ...", or "pj.yaml:12".
	Source string
}

// MaxWeight bounds a backend's weight. Weights are relative: 1000 levels
// are plenty, and the bound keeps the weighted schedules small.
const MaxWeight = 1000

// Backend is one configured backend.
type Backend struct {
	Address string // HOST:PORT; HOST may be a DNS name or an SRV name
	Weight  int    // at least 1
	Backup  bool   // used only when no primary is healthy
}

// Default returns the built-in configuration of CONTRACT.md sections 1 and 5.
func Default() Config {
	return Config{
		Log:         Log{Format: FormatText, Level: "info"},
		GracePeriod: 30 * time.Second,
		Defaults: Settings{
			Balance:        RoundRobin,
			ConnectTimeout: 5 * time.Second,
			HealthCheck:    HealthCheck{Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
			DNSRefresh:     10 * time.Second,
		},
	}
}

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid configuration")

// ValidationError lists every problem found in a configuration, not only the
// first, so that a user fixes them in one round.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0]
	}
	return fmt.Sprintf("%d problems:\n  %s", len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Unwrap lets callers test for ErrInvalid.
func (e *ValidationError) Unwrap() error { return ErrInvalid }

// Validate checks the whole configuration and returns a *ValidationError
// naming every problem. It changes nothing but what is documented as
// defaulted: the Name of an unnamed proxy becomes its listen address, and
// a backend's Weight 0 becomes 1.
//
// Problems name the proxy by its Source: "-p MAPPING" for the command
// line, "pj.yaml:12: proxy "web"" for a file.
func (c *Config) Validate() error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	switch c.Log.Format {
	case FormatText, FormatJSON:
	default:
		add("log format %q: expected text or json", c.Log.Format)
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		add("log level %q: expected debug, info, warn or error", c.Log.Level)
	}
	if c.GracePeriod < 0 {
		add("grace period %s: must not be negative", c.GracePeriod)
	}
	if c.MaxConnections < 0 {
		add("max_connections %d: must not be negative (0 means no cap)", c.MaxConnections)
	}
	if c.Admin.Listen != "" {
		if _, _, err := SplitHostPort(c.Admin.Listen); err != nil {
			add("admin listen: %v", err)
		}
	}
	defaultsWhere := "" // on the command line, the defaults are the flags
	if c.File != "" {
		defaultsWhere = c.File + ": defaults"
	}
	checkSettings(defaultsWhere, true, &c.Defaults, c.Defaults, add)

	seen := make(map[string]*Proxy, len(c.Proxies)) // by listen address
	names := make(map[string]*Proxy, len(c.Proxies))
	for i := range c.Proxies {
		p := &c.Proxies[i]
		if p.Name == "" {
			p.Name = p.Listen
		}
		where := p.where()
		// Two proxies named after their listen addresses collide only where
		// the addresses do, which is reported below (or is port 0 twice,
		// which is allowed); any other shared name is ambiguous in logs,
		// metrics and the API.
		if first, dup := names[p.Name]; dup && (p.Name != p.Listen || first.Name != first.Listen) {
			add("%s: name %q is already used by %s; give each proxy a name of its own", where, p.Name, first.ref())
		} else if !dup {
			names[p.Name] = p
		}
		if len(p.Backends) == 0 {
			add("%s: no backends", where)
		}
		checkSettings(where, false, &p.Settings, c.Defaults, add)
		if _, _, err := SplitHostPort(p.Listen); err != nil {
			add("%s: listen: %v", where, err)
		}
		backends := make(map[string]bool, len(p.Backends))
		for j := range p.Backends {
			b := &p.Backends[j]
			if IsSRV(b.Address) {
				// an SRV name: ports come from its records
			} else if host, port, err := SplitHostPort(b.Address); err != nil {
				add("%s: backend: %v", where, err)
			} else if host == "" || port == 0 {
				add("%s: backend %q: needs a host and a port from 1 to 65535", where, b.Address)
			}
			if backends[b.Address] {
				add("%s: backend %s is listed twice", where, b.Address)
			}
			backends[b.Address] = true
			if b.Weight == 0 {
				b.Weight = 1
			}
			if b.Weight < 0 {
				add("%s: backend %s: weight %d must be at least 1", where, b.Address, b.Weight)
			}
			if b.Weight > MaxWeight {
				add("%s: backend %s: weight %d is more than %d; weights are relative, so scale them down", where, b.Address, b.Weight, MaxWeight)
			}
		}
		key := listenKey(p.Listen)
		if key == "" {
			continue // port 0: every such listener gets a port of its own
		}
		if first, dup := seen[key]; dup {
			hint := "to balance one listener over several backends, list them all in one proxy's backends"
			if p.fromCommandLine() && first.fromCommandLine() {
				hint = "to balance one listener over several backends, list them in one mapping: " + balanceHint(first, p)
			}
			add("%s: listen address %s is already used by %s; %s", where, p.Listen, first.ref(), hint)
			continue
		}
		seen[key] = p
	}
	if len(problems) > 0 {
		return &ValidationError{Problems: problems}
	}
	return nil
}

// fromCommandLine reports whether the proxy is a mapping (of -p or
// PJ_PROXY) or was built without a Source, as tests do.
func (p *Proxy) fromCommandLine() bool {
	return p.Source == "" || strings.HasPrefix(p.Source, "-p ") || strings.HasPrefix(p.Source, "PJ_PROXY ")
}

// where starts a problem of the proxy: "-p MAPPING", or "pj.yaml:12:
// proxy "web"", or "proxy "web"".
func (p *Proxy) where() string {
	switch {
	case p.Source == "":
		return fmt.Sprintf("proxy %q", p.Name)
	case p.fromCommandLine():
		return p.Source
	}
	return fmt.Sprintf("%s: proxy %q", p.Source, p.Name)
}

// ref names the proxy inside another's problem: "-p MAPPING", or
// "proxy "web" (pj.yaml:5)".
func (p *Proxy) ref() string {
	switch {
	case p.Source == "":
		return fmt.Sprintf("proxy %q", p.Name)
	case p.fromCommandLine():
		return p.Source
	}
	return fmt.Sprintf("proxy %q (%s)", p.Name, p.Source)
}

// checkSettings validates one set of settings. A proxy's value equal to the
// default's is reported once, for the defaults, not again for every proxy
// that inherited it.
func checkSettings(where string, isDefaults bool, s *Settings, d Settings, add func(string, ...any)) {
	report := func(differs bool, format string, args ...any) {
		if !isDefaults && !differs {
			return
		}
		if where == "" {
			add(format, args...)
			return
		}
		add("%s: "+format, append([]any{where}, args...)...)
	}
	if !validBalance(s.Balance) {
		report(s.Balance != d.Balance, "balance %q: expected %s", s.Balance, orList(Balances))
	}
	if s.ConnectTimeout <= 0 {
		report(s.ConnectTimeout != d.ConnectTimeout, "connect timeout %s: must be positive", s.ConnectTimeout)
	}
	if s.IdleTimeout < 0 {
		report(s.IdleTimeout != d.IdleTimeout, "idle timeout %s: must not be negative (0 turns it off)", s.IdleTimeout)
	}
	hc, dhc := s.HealthCheck, d.HealthCheck
	if hc.Interval < 0 {
		report(hc.Interval != dhc.Interval, "health_check interval %s: must not be negative (0 turns checks off)", hc.Interval)
	}
	if hc.Interval > 0 {
		if hc.Timeout <= 0 {
			report(hc.Timeout != dhc.Timeout, "health_check timeout %s: must be positive", hc.Timeout)
		}
		if hc.Rise < 1 {
			report(hc.Rise != dhc.Rise, "health_check rise %d: must be at least 1", hc.Rise)
		}
		if hc.Fall < 1 {
			report(hc.Fall != dhc.Fall, "health_check fall %d: must be at least 1", hc.Fall)
		}
	}
	if s.DNSRefresh < 0 {
		report(s.DNSRefresh != d.DNSRefresh, "dns_refresh %s: must not be negative (0 resolves names once)", s.DNSRefresh)
	}
	if s.Resolver != "" {
		if host, port, err := SplitHostPort(s.Resolver); err != nil || host == "" || port == 0 {
			report(s.Resolver != d.Resolver, "resolver %q: expected HOST:PORT of a DNS server, e.g. 10.0.0.53:53", s.Resolver)
		}
	}
	if s.MaxConnections < 0 {
		report(s.MaxConnections != d.MaxConnections, "max_connections %d: must not be negative (0 means no cap)", s.MaxConnections)
	}
	if s.MaxConnectionsPerClient < 0 {
		report(s.MaxConnectionsPerClient != d.MaxConnectionsPerClient, "max_connections_per_client %d: must not be negative (0 means no cap)", s.MaxConnectionsPerClient)
	}
	if s.RateLimit.PerClient < 0 || s.RateLimit.Burst < 0 {
		report(s.RateLimit != d.RateLimit, "rate_limit: per_client and burst must not be negative")
	}
	if s.RateLimit.PerClient > 0 && s.RateLimit.Burst < 1 {
		report(s.RateLimit != d.RateLimit, "rate_limit: burst must be at least 1 when per_client is set")
	}
	if s.Bandwidth.PerConnection < 0 {
		report(s.Bandwidth != d.Bandwidth, "bandwidth per_connection: must not be negative (0 means no cap)")
	}
	switch s.ProxyProtocol {
	case "", "v1", "v2":
	default:
		report(s.ProxyProtocol != d.ProxyProtocol, "proxy_protocol %q: expected v1 or v2", s.ProxyProtocol)
	}
	checkPrefixes := func(what string, list, dlist []netip.Prefix) {
		for _, p := range list {
			if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				report(!slices.Equal(list, dlist), "%s: %s is not a canonical address range (write e.g. 10.0.0.0/8)", what, p)
			}
		}
	}
	checkPrefixes("allow", s.Allow, d.Allow)
	checkPrefixes("deny", s.Deny, d.Deny)
	if ap := s.AcceptProxyProtocol; ap != nil {
		var dtrusted []netip.Prefix
		if d.AcceptProxyProtocol != nil {
			dtrusted = d.AcceptProxyProtocol.Trusted
		}
		differs := d.AcceptProxyProtocol == nil || !slices.Equal(ap.Trusted, dtrusted)
		if len(ap.Trusted) == 0 {
			report(differs, "accept_proxy_protocol: trusted lists no address ranges; list those of the load balancers whose PROXY headers pj may believe")
		}
		checkPrefixes("accept_proxy_protocol trusted", ap.Trusted, dtrusted)
	}
}

func validBalance(b string) bool {
	for _, v := range Balances {
		if b == v {
			return true
		}
	}
	return false
}

// listenKey normalises a listen address for duplicate detection; it returns
// "" for port 0, which never collides.
func listenKey(listen string) string {
	host, port, err := SplitHostPort(listen)
	if err != nil || port == 0 {
		return ""
	}
	return JoinHostPort(strings.ToLower(host), port)
}

// balanceHint shows the comma form that merges two mappings' backends.
func balanceHint(a, b *Proxy) string {
	addrs := make([]string, 0, len(a.Backends)+len(b.Backends))
	for _, be := range a.Backends {
		addrs = append(addrs, be.Address)
	}
	for _, be := range b.Backends {
		addrs = append(addrs, be.Address)
	}
	return a.Listen + ":" + strings.Join(addrs, ",")
}

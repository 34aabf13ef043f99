// Package config holds pj's one configuration type and its validation.
//
// Configuration flows one way: Default() gives the built-in values; a file
// (Load) and the command line fill them in; Validate checks the whole
// result; the server builds immutable runtime objects from it. Every Proxy
// carries fully resolved Settings: whoever builds a Proxy copies the
// defaults into it first and overlays what the proxy sets itself.
package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
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
	// Ignored lists where the configuration sets keys that pj accepts
	// and ignores (retired keys), in the order they were read; Warnings
	// says it to the user.
	Ignored []Ignored
}

// Ignored is a retired key set by a configuration, and where.
type Ignored struct {
	Key   string // as a file names it: "kernel_relay"
	Where string // "pj.yaml:4", "--kernel-relay", "PJ_KERNEL_RELAY"
}

// Warnings says, in one line per retired key that c sets, where it is
// set, that it is ignored and why: what pj check prints and a load logs.
func (c *Config) Warnings() []string {
	var out []string
	for _, i := range append(infos(topKeys), infos(settingKeys)...) {
		if i.retired == "" {
			continue
		}
		var where []string
		for _, ig := range c.Ignored {
			if ig.Key == i.name {
				where = append(where, ig.Where)
			}
		}
		if len(where) > 0 {
			out = append(out, fmt.Sprintf("%s: %s is no longer supported and is ignored: %s; remove it",
				strings.Join(where, ", "), i.name, i.retired))
		}
	}
	return out
}

// Log selects the encoding and the threshold of log records.
type Log struct {
	Format string // "text" or "json"
	Level  string // "debug", "info", "warn" or "error"
}

// Admin is the HTTP admin listener.
type Admin struct {
	Listen string // HOST:PORT; empty means no admin listener
	Token  string // required by mutating endpoints when set
	Pprof  bool   // serve net/http/pprof under /debug/pprof/
	// Hosts are the names, beside IP addresses and localhost, that
	// requests may give as their Host (a guard against DNS rebinding).
	Hosts []string
}

// Equal reports whether a and b are the same admin listener settings.
func (a Admin) Equal(b Admin) bool {
	return a.Listen == b.Listen && a.Token == b.Token && a.Pprof == b.Pprof && slices.Equal(a.Hosts, b.Hosts)
}

// Settings are the per-proxy settings that "defaults" gives every proxy
// and that a proxy may override.
type Settings struct {
	Balance        string
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration // 0 = never
	// HalfCloseTimeout closes a connection whose one side has finished
	// sending once the other has been silent this long; 0 = never.
	HalfCloseTimeout time.Duration
	HealthCheck      HealthCheck

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

	// MatchTimeout is how long a proxy with routes waits for the first
	// bytes its routes need before it chooses on what it has.
	MatchTimeout time.Duration

	// UDP are the settings of UDP proxies alone.
	UDP UDPSettings

	// TLS, if set, terminates the clients' TLS with these certificates;
	// nil relays the clients' bytes as they come.
	TLS *TLS
	// BackendTLS, if set, opens TLS to the backends; nil connects with
	// plain TCP.
	BackendTLS *BackendTLS

	// Pool keeps backend connections open before clients need them.
	Pool Pool
}

// TLS says how pj terminates clients' TLS.
type TLS struct {
	// Certificates are chosen by the name the client asks for; the first
	// is the fallback.
	Certificates []Certificate
	// ClientCA, if set, requires a client certificate signed by one of
	// its CAs (mutual TLS).
	ClientCA   string
	MinVersion string // "1.2" or "1.3"; empty means 1.2
	ALPN       []string
	// ACME, if set, obtains and renews certificates automatically.
	ACME *ACME
}

// Certificate is a certificate chain and its private key, as PEM files.
type Certificate struct {
	Cert, Key string
}

// ACME says for which names, from which directory and where certificates
// are obtained automatically.
type ACME struct {
	Domains   []string
	Email     string
	Directory string // empty: Let's Encrypt's
	CARoots   string // empty: the system's roots
	Storage   string
	// HTTPListen, if set, is where pj answers the http-01 challenge
	// (HOST:PORT; port 80 for a public CA) and redirects other requests
	// to https. Empty: tls-alpn-01 alone.
	HTTPListen string
}

// BackendTLS says how pj opens TLS to backends.
type BackendTLS struct {
	ServerName         string // empty: the backend's host name
	CA                 string // empty: the system's roots
	Cert, Key          string // a client certificate, if the backends ask for one
	InsecureSkipVerify bool
}

// Pool is a proxy's (or a route's) warm backend connections.
type Pool struct {
	// Size is how many connected, unused connections are kept per
	// backend; 0 turns the pool off.
	Size int
	// MaxAge is how long a warm connection may wait for a client before
	// it is replaced.
	MaxAge time.Duration
}

// MaxPoolSize bounds pool.size: each warm connection is a descriptor
// and a connection the backend holds open for nobody yet.
const MaxPoolSize = 1024

// poolProblems reports settings that cannot go with a pool.
func (s *Settings) poolProblems() []string {
	if s.Pool.Size > 0 && s.ProxyProtocol != "" {
		return []string{"pool: cannot be used with proxy_protocol: the PROXY header names the client, " +
			"unknown when a warm connection is opened; remove one of them"}
	}
	return nil
}

// ProxyVersion is the PROXY protocol version sent to backends: 0 (none),
// 1 or 2.
func (s *Settings) ProxyVersion() byte {
	switch s.ProxyProtocol {
	case "v1":
		return 1
	case "v2":
		return 2
	}
	return 0
}

// UDPSettings are the settings of a UDP proxy's sessions.
type UDPSettings struct {
	// Responses ends a session after this many replies (DNS: 1); 0 means
	// sessions end by the idle timeout alone.
	Responses int
}

// UDPIdleTimeout is the idle timeout of a UDP proxy that sets none: a
// session has no end of its own (no FIN), so "never" is not on offer.
const UDPIdleTimeout = 30 * time.Second

// HealthCheck configures active checks of a proxy's backends.
type HealthCheck struct {
	Interval time.Duration // 0 turns active checks off
	Timeout  time.Duration
	Rise     int // consecutive successes that bring a backend up
	Fall     int // consecutive failures that take it down
	// Send, if set, is written after connecting; Expect, if set, must
	// prefix the reply (HAProxy's tcp-check send/expect). SendHex and
	// ExpectHex say the same in hexadecimal, for binary protocols; a
	// check has one of each pair at most (see Payload).
	Send, Expect       string
	SendHex, ExpectHex string
	// SendProxy sends the PROXY protocol header in checks too.
	SendProxy bool
	// Explicit is true when the configuration set health_check for this
	// proxy (or in defaults): then a proxy with one backend is checked
	// too. Without it, only proxies of several backends are.
	Explicit bool
	// Datagrams marks the checks of a UDP proxy (set by Validate): a
	// probe sends the payload as a datagram and waits for a reply, and
	// without a payload no check runs.
	Datagrams bool
}

// Payload returns what a check sends and what the reply must start with:
// Send or SendHex, Expect or ExpectHex, as bytes (nil when not set).
// Validate has checked the hexadecimal.
func (hc HealthCheck) Payload() (send, expect []byte) {
	pick := func(text, hexText string) []byte {
		if text != "" {
			return []byte(text)
		}
		if hexText != "" {
			b, _ := hex.DecodeString(hexText) // checked by Validate
			return b
		}
		return nil
	}
	return pick(hc.Send, hc.SendHex), pick(hc.Expect, hc.ExpectHex)
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
	// Routes, given instead of Backends, choose the destination of each
	// connection by what the client sends first.
	Routes []Route
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

// Default returns the built-in configuration.
func Default() Config {
	return Config{
		Log:         Log{Format: FormatText, Level: "info"},
		GracePeriod: 30 * time.Second,
		Defaults: Settings{
			Balance:        RoundRobin,
			ConnectTimeout: 5 * time.Second,
			// HAProxy's timeout client-fin and server-fin guard against
			// the same hung peer.
			HalfCloseTimeout: DefaultHalfCloseTimeout,
			HealthCheck:      HealthCheck{Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
			DNSRefresh:       10 * time.Second,
			MatchTimeout:     DefaultMatchTimeout,
			Pool:             Pool{MaxAge: 30 * time.Second},
		},
	}
}

// DefaultHalfCloseTimeout is how long a half-closed connection may wait
// for its other side.
const DefaultHalfCloseTimeout = 5 * time.Minute

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid configuration")

// ValidationError lists every problem found in a configuration, not only the
// first, so that a user fixes them in one round.
type ValidationError struct {
	Problems []string // at most MaxProblems, in the order of the file
	More     int      // how many more problems were found and are not listed
}

// MaxProblems bounds the problems a ValidationError lists: a file of a
// million mistakes gets the first ones and a count, not a message of
// gigabytes.
const MaxProblems = 50

// MaxFileSize bounds a configuration file, checked before it is read.
const MaxFileSize = 16 << 20

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 && e.More == 0 {
		return e.Problems[0]
	}
	msg := fmt.Sprintf("%d problems:\n  %s", len(e.Problems)+e.More, strings.Join(e.Problems, "\n  "))
	if e.More > 0 {
		msg += fmt.Sprintf("\n  and %d more", e.More)
	}
	return msg
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
	var problems problemTexts
	problems.add(keyProblems(topKeys, c, nil)...)
	defaultsWhere := "" // on the command line, the defaults are the flags
	if c.File != "" {
		defaultsWhere = c.File + ": defaults"
	}
	problems.add(located(defaultsWhere, keyProblems(settingKeys, &c.Defaults, nil))...)
	c.proxyProblems(&problems)
	if len(problems.list) > 0 {
		return &ValidationError{Problems: problems.list, More: problems.more}
	}
	return nil
}

// problemTexts collects the problems Validate reports: the first
// MaxProblems, each at most maxProblemText bytes, and a count of the
// others (7000 mappings of one address make 6999 problems).
type problemTexts struct {
	list []string
	more int
}

func (ps *problemTexts) full() bool { return len(ps.list) >= MaxProblems }

func (ps *problemTexts) add(problems ...string) {
	for _, p := range problems {
		if ps.full() {
			ps.more++
			continue
		}
		ps.list = append(ps.list, shorten(escapeControls(p), maxProblemText))
	}
}

// addf adds a problem, formatted only if it is one that is listed.
func (ps *problemTexts) addf(format string, args ...any) {
	if ps.full() {
		ps.more++
		return
	}
	ps.add(fmt.Sprintf(format, args...))
}

// proxyProblems checks every proxy, and that no two share a name or a
// listen address. A setting a proxy inherited from the defaults is not
// reported again for the proxy.
func (c *Config) proxyProblems(problems *problemTexts) {
	add := problems.addf
	byListen := make(map[string]*Proxy, len(c.Proxies))
	byName := make(map[string]*Proxy, len(c.Proxies))
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
		if first, dup := byName[p.Name]; dup && (p.Name != p.Listen || first.Name != first.Listen) {
			add("%s: name %q is already used by %s; give each proxy a name of its own", where, p.Name, first.ref())
		} else if !dup {
			byName[p.Name] = p
		}
		if i := strings.IndexFunc(p.Name, unicode.IsControl); i >= 0 {
			r, _ := utf8.DecodeRuneInString(p.Name[i:])
			add("%s: name %q contains a control character (%U): names are written into logs, metric labels and the API", where, shorten(p.Name, maxArgText), r)
		}
		for _, rt := range p.Routes {
			if i := strings.IndexFunc(rt.Name, unicode.IsControl); i >= 0 {
				r, _ := utf8.DecodeRuneInString(rt.Name[i:])
				add("%s: route name %q contains a control character (%U): names are written into logs, metric labels and the API", where, shorten(rt.Name, maxArgText), r)
			}
		}
		if len(p.Routes) > 0 {
			problems.add(p.routeProblems()...)
		} else if len(p.Backends) == 0 {
			add("%s: no backends", where)
		}
		problems.add(located(where, keyProblems(settingKeys, &p.Settings, &c.Defaults))...)
		if _, _, err := SplitHostPort(listenHostPort(p.Listen)); err != nil {
			add("%s: listen: %v", where, err)
		}
		problems.add(located(where, p.transportProblems(&c.Defaults))...)
		if len(p.Routes) == 0 {
			problems.add(located(where, p.poolProblems())...)
		}
		if problems.full() {
			problems.more += len(backendProblems(p.Backends)) // counted; their texts would not be listed
		} else {
			problems.add(located(where, backendProblems(p.Backends))...)
		}
		key := listenKey(p.Listen)
		if key == "" {
			continue // port 0: every such listener gets a port of its own
		}
		if first, dup := byListen[key]; dup {
			if problems.full() {
				problems.more++
				continue
			}
			hint := "to balance one listener over several backends, list them all in one proxy's backends"
			if p.fromCommandLine() && first.fromCommandLine() {
				hint = "to balance one listener over several backends, list them in one mapping: " + shorten(balanceHint(first, p), maxMappingText)
			}
			add("%s: listen address %s is already used by %s; %s", where, p.Listen, first.ref(), hint)
			continue
		}
		byListen[key] = p
	}
	c.http01Problems(problems, byListen)
}

// http01Problems reports an ACME http-01 listener on a proxy's listen
// address: pj answers there itself, so it cannot also relay.
func (c *Config) http01Problems(problems *problemTexts, byListen map[string]*Proxy) {
	for i := range c.Proxies {
		p := &c.Proxies[i]
		settings := []*Settings{&p.Settings}
		for j := range p.Routes {
			settings = append(settings, &p.Routes[j].Settings)
		}
		for _, s := range settings {
			if s.TLS == nil || s.TLS.ACME == nil || s.TLS.ACME.HTTPListen == "" {
				continue
			}
			addr := s.TLS.ACME.HTTPListen
			if other := byListen[listenKey(addr)]; other != nil {
				problems.addf("%s: tls.acme.http_listen %s is the listen address of %s too: pj answers ACME's http-01 "+
					"there itself; move that proxy, or remove http_listen and rely on tls-alpn-01", p.where(), addr, other.ref())
			}
		}
	}
}

// backendProblems checks a proxy's or a route's backends; a Weight of 0
// becomes 1.
func backendProblems(backends []Backend) []string {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	seen := make(map[string]bool, len(backends))
	for j := range backends {
		b := &backends[j]
		if IsSRV(b.Address) {
			// an SRV name: ports come from its records
		} else if host, port, err := SplitHostPort(b.Address); err != nil {
			add("backend: %v", err)
		} else if host == "" || port == 0 {
			add("backend %q: needs a host and a port from 1 to 65535", b.Address)
		}
		if seen[b.Address] {
			add("backend %s is listed twice", b.Address)
		}
		seen[b.Address] = true
		if b.Weight == 0 {
			b.Weight = 1
		}
		if b.Weight < 0 {
			add("backend %s: weight %d must be at least 1", b.Address, b.Weight)
		}
		if b.Weight > MaxWeight {
			add("backend %s: weight %d is more than %d; weights are relative, so scale them down", b.Address, b.Weight, MaxWeight)
		}
	}
	return problems
}

// located starts each problem with where, if it is not "".
func located(where string, problems []string) []string {
	if where == "" {
		return problems
	}
	for i, p := range problems {
		problems[i] = where + ": " + p
	}
	return problems
}

// fromCommandLine reports whether the proxy is a mapping (of -p or
// PJ_PROXY) or was built without a Source, as tests do.
func (p *Proxy) fromCommandLine() bool {
	return p.Source == "" || strings.HasPrefix(p.Source, "-p ") || strings.HasPrefix(p.Source, "PJ_PROXY ")
}

// where starts a problem of the proxy: "-p MAPPING", or "pj.yaml:12:
// proxy "web"", or "proxy "web"".
func (p *Proxy) where() string {
	return p.label(func(name string) string { return p.Source + ": " + name })
}

// ref names the proxy inside another's problem: "-p MAPPING", or
// "proxy "web" (pj.yaml:5)".
func (p *Proxy) ref() string {
	return p.label(func(name string) string { return name + " (" + p.Source + ")" })
}

// label names the proxy by its mapping if it has one; otherwise as
// "proxy "web"", placed by at where the proxy has a Source.
func (p *Proxy) label(at func(name string) string) string {
	name := fmt.Sprintf("proxy %q", p.Name)
	switch {
	case p.Source == "":
		return name
	case p.fromCommandLine():
		return p.Source
	}
	return at(name)
}

// listenKey normalises a listen address for duplicate detection; it returns
// "" for port 0, which never collides.
func listenKey(listen string) string {
	addr, network := SplitNetwork(listen)
	host, port, err := SplitHostPort(addr)
	if err != nil || port == 0 {
		return ""
	}
	return JoinHostPort(strings.ToLower(host), port) + "/" + network
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

// Runs reports whether active checks run for a proxy of so many backends:
// with an interval, for several backends, or for one when the
// configuration asks for checks explicitly; for a UDP proxy, only with a
// payload to send.
func (hc HealthCheck) Runs(backends int) bool {
	if hc.Datagrams && hc.Send == "" && hc.SendHex == "" {
		return false
	}
	return hc.Interval > 0 && (backends > 1 || hc.Explicit)
}

// Summary describes, for pj check, the top-level settings that are not
// the built-in ones.
func (c Config) Summary() []string {
	def := Default()
	return summary(topKeys, &c, &def)
}

// Summary describes, for pj check, the proxy's balance algorithm, its
// health checks and the settings that are not the built-in ones; for a
// proxy with routes, those of its listener (each route has its Summary).
func (p Proxy) Summary() []string {
	def := Default().Defaults
	s := p.Settings
	// pj check tells the match timeout with the routes; without routes,
	// nothing waits for it.
	s.MatchTimeout = def.MatchTimeout
	if len(p.Routes) > 0 {
		return summary(proxyListenerKeys, &s, &def)
	}
	if !s.HealthCheck.Runs(len(p.Backends)) {
		s.HealthCheck.Interval = 0
	}
	return summary(settingKeys, &s, &def)
}

// Changed names the top-level keys whose values differ in next.
func (c Config) Changed(next Config) []string { return changed(topKeys, &c, &next) }

// Changed names what differs in next: "listen", "backends", "routes", and
// the keys of the settings.
func (p Proxy) Changed(next Proxy) []string {
	var out []string
	if p.Listen != next.Listen {
		out = append(out, "listen")
	}
	if !slices.Equal(p.Backends, next.Backends) {
		out = append(out, "backends")
	}
	if routesChanged(p.Routes, next.Routes) {
		out = append(out, "routes")
	}
	return append(out, changed(settingKeys, &p.Settings, &next.Settings)...)
}

package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The keys of a configuration file, each declared once (keys.go says how
// a declaration is read). Their order is that of help texts, of pj
// check's summary and of messages.

// topKeys are the keys at the top of a file, beside defaults and proxies.
var topKeys = []setting[Config]{
	object("log", func(c *Config) *Log { return &c.Log }).
		shown(func(l Log) string { return fmt.Sprintf("log %s at level %s", l.Format, l.Level) }),
	def("log.format", func(c *Config) *string { return &c.Log.Format },
		choice[string]{what: "log format", values: []string{FormatText, FormatJSON}}.value()).
		withFlag("log-format", "log encoding: text or json"),
	def("log.level", func(c *Config) *string { return &c.Log.Level },
		choice[string]{what: "log level", values: []string{"debug", "info", "warn", "error"}, fold: true}.value()).
		withFlag("log-level", "least severe records logged: debug, info, warn or error"),

	object("admin", func(c *Config) *Admin { return &c.Admin }),
	def("admin.listen", func(c *Config) *string { return &c.Admin.Listen }, address(true)).
		withFlag("admin", "serve metrics, the admin API and the status page on this HOST:PORT").
		shown(func(s string) string { return "admin on " + s }),
	def("admin.token", func(c *Config) *string { return &c.Admin.Token }, text()).
		withEnv("PJ_ADMIN_TOKEN"),
	def("admin.pprof", func(c *Config) *bool { return &c.Admin.Pprof }, boolean()),
	def("admin.hosts", func(c *Config) *[]string { return &c.Admin.Hosts },
		names(`a list of host names such as ["pj.example.net"]`, func(s string) string {
			if err := checkHost(s); err != nil || s == "" || looksNumeric(s) {
				return fmt.Sprintf("%q is not a host name (IP addresses and localhost need no listing)", s)
			}
			return ""
		})),

	def("grace_period", func(c *Config) *time.Duration { return &c.GracePeriod }, duration(notNegative)).
		zeroMeans("0s turns it off").
		withFlag("grace-period", "on SIGTERM/SIGINT, how long established connections may finish").
		shown(func(d time.Duration) string { return "grace period " + durationText(d) }),
	def("max_connections", func(c *Config) *int { return &c.MaxConnections }, count(notNegative)).
		zeroMeans("0 means no cap").
		shown(func(n int) string { return fmt.Sprintf("at most %d connections in all", n) }),
	def("watch", func(c *Config) *bool { return &c.Watch }, boolean()).
		withFlag("watch", "with --config, also reload the file when it changes"),
}

// settingKeys are the keys of Settings: in defaults, and in every proxy,
// which inherits each key it does not set from the defaults.
var settingKeys = []setting[Settings]{
	def("balance", func(s *Settings) *string { return &s.Balance },
		choice[string]{what: "balance algorithm", values: Balances}.value()).
		withFlag("balance", "how connections are spread over a proxy's backends: "+strings.Join(Balances, ", ")).
		alwaysShown(func(b string) string { return b }),
	def("connect_timeout", func(s *Settings) *time.Duration { return &s.ConnectTimeout }, duration(positive)).
		withFlag("connect-timeout", "time allowed to open a backend connection (all failover tries included)").
		shown(func(d time.Duration) string { return "connect timeout " + durationText(d) }),
	def("idle_timeout", func(s *Settings) *time.Duration { return &s.IdleTimeout }, duration(notNegative)).
		zeroMeans("0s turns it off").
		withFlag("idle-timeout", "close a connection idle in both directions this long; 0 = never").
		shown(func(d time.Duration) string { return "idle timeout " + durationText(d) }),
	def("half_close_timeout", func(s *Settings) *time.Duration { return &s.HalfCloseTimeout }, duration(notNegative)).
		zeroMeans("0s turns it off").
		withFlag("half-close-timeout", "after one side has finished sending, close when the other has been silent this long; 0 = never").
		shown(func(d time.Duration) string { return "half-close timeout " + durationText(d) }),

	object("health_check", func(s *Settings) *HealthCheck { return &s.HealthCheck }).
		onSet(func(s *Settings) { s.HealthCheck.Explicit = true }).
		rule(func(hc HealthCheck) string {
			switch {
			case hc.Send != "" && hc.SendHex != "":
				return "send and send_hex say the same thing: set one"
			case hc.Expect != "" && hc.ExpectHex != "":
				return "expect and expect_hex say the same thing: set one"
			}
			return ""
		}).
		alwaysShown(HealthCheck.describe),
	def("health_check.interval", func(s *Settings) *time.Duration { return &s.HealthCheck.Interval }, duration(notNegative)).
		zeroMeans("0s turns checks off"),
	def("health_check.timeout", func(s *Settings) *time.Duration { return &s.HealthCheck.Timeout }, duration(positive)),
	def("health_check.rise", func(s *Settings) *int { return &s.HealthCheck.Rise }, count(atLeastOne)),
	def("health_check.fall", func(s *Settings) *int { return &s.HealthCheck.Fall }, count(atLeastOne)),
	def("health_check.send", func(s *Settings) *string { return &s.HealthCheck.Send }, text()),
	def("health_check.expect", func(s *Settings) *string { return &s.HealthCheck.Expect }, text()),
	def("health_check.send_hex", func(s *Settings) *string { return &s.HealthCheck.SendHex }, hexBytes()),
	def("health_check.expect_hex", func(s *Settings) *string { return &s.HealthCheck.ExpectHex }, hexBytes()),
	def("health_check.send_proxy", func(s *Settings) *bool { return &s.HealthCheck.SendProxy }, boolean()),

	def("dns_refresh", func(s *Settings) *time.Duration { return &s.DNSRefresh }, duration(notNegative)).
		zeroMeans("0s resolves names once").
		shown(func(d time.Duration) string {
			if d == 0 {
				return "host names resolved once"
			}
			return "host names resolved every " + durationText(d)
		}),
	def("resolver", func(s *Settings) *string { return &s.Resolver }, address(false)).
		shown(func(s string) string { return "DNS server " + s }),

	def("max_connections", func(s *Settings) *int { return &s.MaxConnections }, count(notNegative)).
		forListener().
		zeroMeans("0 means no cap").
		shown(func(n int) string { return fmt.Sprintf("at most %d connections", n) }),
	def("max_connections_per_client", func(s *Settings) *int { return &s.MaxConnectionsPerClient }, count(notNegative)).
		forListener().
		zeroMeans("0 means no cap").
		shown(func(n int) string { return fmt.Sprintf("at most %d connections per client", n) }),
	def("allow", func(s *Settings) *[]netip.Prefix { return &s.Allow }, prefixes()).
		forListener().
		shown(func(l []netip.Prefix) string { return ifAny(l, "allow ") }),
	def("deny", func(s *Settings) *[]netip.Prefix { return &s.Deny }, prefixes()).
		forListener().
		shown(func(l []netip.Prefix) string { return ifAny(l, "deny ") }),

	object("rate_limit", func(s *Settings) *RateLimit { return &s.RateLimit }).
		forListener().
		rule(func(r RateLimit) string {
			if r.PerClient > 0 && r.Burst < 1 {
				return "burst must be at least 1 when per_client is set"
			}
			return ""
		}).
		shown(func(r RateLimit) string {
			if r.PerClient == 0 {
				return ""
			}
			return fmt.Sprintf("at most %s new connections per second per client (burst %d)",
				strconv.FormatFloat(r.PerClient, 'f', -1, 64), r.Burst)
		}),
	def("rate_limit.per_client", func(s *Settings) *float64 { return &s.RateLimit.PerClient }, rate(notNegative)),
	def("rate_limit.burst", func(s *Settings) *int { return &s.RateLimit.Burst }, count(notNegative)),

	object("bandwidth", func(s *Settings) *Bandwidth { return &s.Bandwidth }).
		onlyFor(TCP, ""),
	def("bandwidth.per_connection", func(s *Settings) *int64 { return &s.Bandwidth.PerConnection }, size(notNegative)).
		zeroMeans("0 means no cap").
		shown(func(n int64) string { return "at most " + bytesText(n) + "/s each way per connection" }),

	def("proxy_protocol", func(s *Settings) *string { return &s.ProxyProtocol },
		choice[string]{what: "PROXY protocol version", values: []string{"v1", "v2"}, orNone: true}.value()).
		onlyFor(TCP, "").
		shown(func(v string) string { return "PROXY protocol " + v + " to backends" }),
	// The object's presence turns the feature on; its keys fill it in.
	optional("accept_proxy_protocol", func(s *Settings) **AcceptProxyProtocol { return &s.AcceptProxyProtocol }).
		forListener().onlyFor(TCP, "admission keys apply to each datagram's source address").
		rule(func(a *AcceptProxyProtocol) string {
			if a != nil && len(a.Trusted) == 0 {
				return "trusted lists no address ranges; list those of the load balancers whose PROXY headers pj may believe"
			}
			return ""
		}).
		shown(func(a *AcceptProxyProtocol) string { return "PROXY protocol accepted from " + prefixText(a.Trusted) }),
	def("accept_proxy_protocol.trusted", inside(acceptOf, func(a *AcceptProxyProtocol) *[]netip.Prefix { return &a.Trusted }), prefixes()),

	def("match_timeout", func(s *Settings) *time.Duration { return &s.MatchTimeout }, duration(positive)).
		forListener().onlyFor(TCP, "").
		shown(func(d time.Duration) string { return "match timeout " + durationText(d) }),

	object("pool", func(s *Settings) *Pool { return &s.Pool }).
		onlyFor(TCP, "a UDP session has no connection to open ahead").
		shown(func(p Pool) string {
			if p.Size == 0 {
				return ""
			}
			return fmt.Sprintf("%d warm connections per backend, each kept at most %s", p.Size, durationText(p.MaxAge))
		}),
	def("pool.size", func(s *Settings) *int { return &s.Pool.Size }, count(notNegative)).
		zeroMeans("0 turns the pool off").
		rule(func(n int) string {
			if n > MaxPoolSize {
				return fmt.Sprintf("is more than %d warm connections per backend", MaxPoolSize)
			}
			return ""
		}),
	def("pool.max_age", func(s *Settings) *time.Duration { return &s.Pool.MaxAge }, duration(positive)),

	object("udp", func(s *Settings) *UDPSettings { return &s.UDP }).
		onlyFor(UDP, ""),
	def("udp.responses", func(s *Settings) *int { return &s.UDP.Responses }, count(notNegative)).
		zeroMeans("0 ends sessions by idle_timeout alone").
		shown(func(n int) string {
			if n == 1 {
				return "a session ends with its reply"
			}
			return fmt.Sprintf("a session ends after %d replies", n)
		}),

	// The object's presence turns termination on; its keys fill it in.
	optional("tls", func(s *Settings) **TLS { return &s.TLS }).
		onlyFor(TCP, "pj does not speak DTLS").
		rule(func(t *TLS) string {
			if t != nil && len(t.Certificates) == 0 && t.ACME == nil {
				return "no certificates: list certificates ({cert, key} files) or configure acme"
			}
			return ""
		}).
		shown(func(t *TLS) string { return t.describe() }),
	def("tls.certificates", inside(tlsOf, func(t *TLS) *[]Certificate { return &t.Certificates }),
		value[[]Certificate]{read: (*decoder).certificates, clone: slices.Clone[[]Certificate]}),
	def("tls.client_ca", inside(tlsOf, func(t *TLS) *string { return &t.ClientCA }), text()),
	def("tls.min_version", inside(tlsOf, func(t *TLS) *string { return &t.MinVersion }),
		choice[string]{what: "TLS version", values: []string{"1.2", "1.3"}, orNone: true}.value()),
	def("tls.alpn", inside(tlsOf, func(t *TLS) *[]string { return &t.ALPN }), names(`a list of ALPN protocol names such as ["h2", "http/1.1"]`, func(s string) string {
		if s == "" || len(s) > 255 {
			return fmt.Sprintf("%q is not an ALPN protocol name (1 to 255 bytes)", s)
		}
		return ""
	})),
	optional("tls.acme", inside(tlsOf, func(t *TLS) **ACME { return &t.ACME })).
		rule(func(a *ACME) string {
			switch {
			case a == nil:
				return ""
			case len(a.Domains) == 0:
				return "domains lists no names: list the names to obtain certificates for"
			case a.Storage == "":
				return "storage is missing: name a directory where the account and certificates are kept"
			}
			return ""
		}),
	def("tls.acme.domains", inside(acmeOf, func(a *ACME) *[]string { return &a.Domains }), names(`a list of host names such as ["app.example.com"]`, func(s string) string {
		if err := checkHost(s); err != nil || s == "" || looksNumeric(s) {
			return fmt.Sprintf("%q is not a host name", s)
		}
		return ""
	})),
	def("tls.acme.email", inside(acmeOf, func(a *ACME) *string { return &a.Email }), text()),
	def("tls.acme.directory", inside(acmeOf, func(a *ACME) *string { return &a.Directory }), text()),
	def("tls.acme.ca_roots", inside(acmeOf, func(a *ACME) *string { return &a.CARoots }), text()),
	def("tls.acme.storage", inside(acmeOf, func(a *ACME) *string { return &a.Storage }), text()),
	def("tls.acme.http_listen", inside(acmeOf, func(a *ACME) *string { return &a.HTTPListen }), address(true)),

	optional("backend_tls", func(s *Settings) **BackendTLS { return &s.BackendTLS }).
		onlyFor(TCP, "pj does not speak DTLS").
		rule(func(b *BackendTLS) string {
			if b != nil && (b.Cert == "") != (b.Key == "") {
				return "cert and key go together: give both (a client certificate) or neither"
			}
			return ""
		}).
		shown(func(b *BackendTLS) string { return b.describe() }),
	def("backend_tls.server_name", inside(backendTLSOf, func(b *BackendTLS) *string { return &b.ServerName }), text()),
	def("backend_tls.ca", inside(backendTLSOf, func(b *BackendTLS) *string { return &b.CA }), text()),
	def("backend_tls.cert", inside(backendTLSOf, func(b *BackendTLS) *string { return &b.Cert }), text()),
	def("backend_tls.key", inside(backendTLSOf, func(b *BackendTLS) *string { return &b.Key }), text()),
	def("backend_tls.insecure_skip_verify", inside(backendTLSOf, func(b *BackendTLS) *bool { return &b.InsecureSkipVerify }), boolean()),

	// Keys pj no longer acts on, still accepted so that a file (or a
	// command line) written for an older pj loads; each load warns.
	retired[Settings]("kernel_relay", boolean(), "connections are relayed with splice, which measured faster").
		withFlag("kernel-relay", "no longer supported; ignored"),
}

// inside is where a key of an optional object lives, as f finds it in
// the object that of returns; nil while the object is absent.
func inside[P, T any](of func(*Settings) *P, f func(*P) *T) func(*Settings) *T {
	return func(s *Settings) *T {
		if p := of(s); p != nil {
			return f(p)
		}
		return nil
	}
}

// The optional objects of Settings, nil while absent.
func tlsOf(s *Settings) *TLS                    { return s.TLS }
func backendTLSOf(s *Settings) *BackendTLS      { return s.BackendTLS }
func acceptOf(s *Settings) *AcceptProxyProtocol { return s.AcceptProxyProtocol }

func acmeOf(s *Settings) *ACME {
	if s.TLS == nil {
		return nil
	}
	return s.TLS.ACME
}

// describe is pj check's phrase for TLS termination.
func (t *TLS) describe() string {
	var parts []string
	for _, c := range t.Certificates {
		parts = append(parts, c.Cert)
	}
	out := "TLS terminated"
	if len(parts) > 0 {
		out += " with " + strings.Join(parts, ", ")
	}
	if t.ACME != nil {
		out += " and ACME for " + strings.Join(t.ACME.Domains, ", ")
		if t.ACME.HTTPListen != "" {
			out += " (http-01 on " + t.ACME.HTTPListen + ")"
		}
	}
	if t.ClientCA != "" {
		out += ", client certificates from " + t.ClientCA
	}
	if t.MinVersion != "" {
		out += ", TLS " + t.MinVersion + " or later"
	}
	if len(t.ALPN) > 0 {
		out += ", ALPN " + strings.Join(t.ALPN, ", ")
	}
	return out
}

// describe is pj check's phrase for TLS to the backends.
func (b *BackendTLS) describe() string {
	out := "TLS to backends"
	if b.ServerName != "" {
		out += " as " + b.ServerName
	}
	switch {
	case b.InsecureSkipVerify:
		out += ", certificates NOT verified"
	case b.CA != "":
		out += ", verified with " + b.CA
	default:
		out += ", verified with the system's roots"
	}
	if b.Cert != "" {
		out += ", client certificate " + b.Cert
	}
	return out
}

// proxyKeys are a proxy's own keys, beside the settings it may override.
var proxyKeys = []setting[Proxy]{
	def("name", func(p *Proxy) *string { return &p.Name }, givenName("name the proxy after its listen address")),
	def("listen", func(p *Proxy) *string { return &p.Listen }, listenAddress()),
	def("backends", func(p *Proxy) *[]Backend { return &p.Backends }, value[[]Backend]{read: (*decoder).backends}),
}

// backendKeys are the keys of a backend written as an object.
var backendKeys = []setting[Backend]{
	def("address", func(b *Backend) *string { return &b.Address },
		value[string]{read: func(d *decoder, n *node, path string) (string, bool) { return d.address(n, path, false, true) }}),
	def("weight", func(b *Backend) *int { return &b.Weight }, count(atLeastOne)),
	def("backup", func(b *Backend) *bool { return &b.Backup }, boolean()),
}

// describe is pj check's phrase for the health checks.
func (hc HealthCheck) describe() string {
	if hc.Interval <= 0 {
		return "no health checks"
	}
	check := fmt.Sprintf("health checks every %s (timeout %s, rise %d, fall %d",
		durationText(hc.Interval), durationText(hc.Timeout), hc.Rise, hc.Fall)
	if hc.Send != "" {
		check += fmt.Sprintf(", send %q", hc.Send)
	}
	if hc.Expect != "" {
		check += fmt.Sprintf(", expect %q", hc.Expect)
	}
	if hc.SendHex != "" {
		check += ", send hex " + hc.SendHex
	}
	if hc.ExpectHex != "" {
		check += ", expect hex " + hc.ExpectHex
	}
	if hc.SendProxy {
		check += ", with a PROXY header"
	}
	return check + ")"
}

// ifAny writes "allow 10.0.0.0/8, 192.0.2.7/32", or "" for no ranges.
func ifAny(list []netip.Prefix, what string) string {
	if len(list) == 0 {
		return ""
	}
	return what + prefixText(list)
}

func prefixText(list []netip.Prefix) string {
	out := make([]string, len(list))
	for i, p := range list {
		out[i] = p.String()
	}
	return strings.Join(out, ", ")
}

// bytesText writes a byte count in the largest binary unit that divides it.
func bytesText(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + " " + u.name
		}
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// durationText writes a duration as a person would: 1m rather than 1m0s.
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

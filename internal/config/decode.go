package config

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The schema of a configuration file (CONTRACT.md section 5), decoded from
// the tree of tree.go. Every key is known here: an unknown key, a value of
// the wrong type or a bad value becomes a problem naming the line and the
// key path, and decoding goes on, so that every problem of a file is
// reported at once.

// problem is one thing wrong with a file.
type problem struct {
	line int    // 0 when unknown
	path string // the key path, e.g. proxies[1].connect_timeout; "" for the file
	msg  string
}

// format writes the problem as FILE:LINE: PATH: MESSAGE.
func (p problem) format(file string) string {
	loc := file
	if p.line > 0 {
		loc += ":" + strconv.Itoa(p.line)
	}
	if p.path == "" {
		return loc + ": " + p.msg
	}
	return loc + ": " + p.path + ": " + p.msg
}

// joinPath names key inside parent: defaults.health_check. A key that is
// not a plain name (only a typo can make one) is quoted.
func joinPath(parent, key string) string {
	plain := key != ""
	for _, r := range key {
		if !(r == '_' || r == '-' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')) {
			plain = false
			break
		}
	}
	switch {
	case !plain:
		return parent + "[" + strconv.Quote(key) + "]"
	case parent == "":
		return key
	}
	return parent + "." + key
}

// indexPath names item i (from 0) of the list parent: proxies[0].
func indexPath(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

// patch is the settings one object of the file (defaults, or a proxy)
// sets, as functions that apply them, and the keys it set. Keeping the
// keys, rather than looking for zero values, is what lets a proxy set
// idle_timeout: 0s against defaults of 1m.
type patch struct {
	keys  map[string]bool // "balance", "health_check", "health_check.interval"
	apply []func(*Settings)
}

func (p *patch) set(key string, f func(*Settings)) {
	if p.keys == nil {
		p.keys = map[string]bool{}
	}
	p.keys[key] = true
	p.apply = append(p.apply, f)
}

func (p *patch) applyTo(s *Settings) {
	for _, f := range p.apply {
		f(s)
	}
}

// fileProxy is a proxy as the file wrote it, before inheritance.
type fileProxy struct {
	line     int
	proxy    Proxy // Name, Listen, Backends
	settings patch
}

// decoded is what decoding a file yields, ready to be resolved into a
// Config.
type decoded struct {
	cfg      Config // the top-level values; Defaults are Default()'s
	defaults patch
	proxies  []fileProxy
}

type decoder struct {
	lookupEnv func(string) (string, bool)
	problems  []problem
}

func (d *decoder) problemf(line int, path, format string, args ...any) {
	d.problems = append(d.problems, problem{line: line, path: path, msg: fmt.Sprintf(format, args...)})
}

// handlers decode the keys of one kind of object; each gets the value and
// its key path.
type handlers map[string]func(v *node, path string)

// object decodes the keys of n with their handlers and reports the others.
// hint, if not nil, explains a key that belongs somewhere else.
func (d *decoder) object(n *node, path string, hs handlers, hint func(key string) string) bool {
	if n.kind != kindMap {
		d.typeError(n, path, "an object")
		return false
	}
	for i := range n.fields {
		f := &n.fields[i]
		fpath := joinPath(path, f.key)
		if h, ok := hs[f.key]; ok {
			h(f.value, fpath)
			continue
		}
		d.unknownKey(f, fpath, hs, hint)
	}
	return true
}

func (d *decoder) unknownKey(f *field, path string, hs handlers, hint func(string) string) {
	if hint != nil {
		if h := hint(f.key); h != "" {
			d.problemf(f.line, path, "unknown key (%s)", h)
			return
		}
	}
	valid := make([]string, 0, len(hs))
	for k := range hs {
		valid = append(valid, k)
	}
	if s := suggest(f.key, valid); s != "" {
		d.problemf(f.line, path, "unknown key (did you mean %s?)", s)
		return
	}
	sort.Strings(valid)
	d.problemf(f.line, path, "unknown key (valid here: %s)", strings.Join(valid, ", "))
}

func (d *decoder) typeError(n *node, path, want string) {
	d.problemf(n.line, path, "expected %s, got %s", want, n.kind)
}

// text reads a string value, with ${VAR} expanded. expanded says whether
// a variable was used, for the typed readers: "${MAX_CONNS}" may stand for
// a number.
func (d *decoder) text(n *node, path, want string) (s string, expanded, ok bool) {
	if n.kind != kindString {
		d.typeError(n, path, want)
		return "", false, false
	}
	s, expanded, err := expand(n.text, d.lookupEnv)
	if err != nil {
		d.problemf(n.line, path, "%v", err)
		return "", false, false
	}
	return s, expanded, true
}

func (d *decoder) str(n *node, path string) (string, bool) {
	s, _, ok := d.text(n, path, "a string")
	return s, ok
}

// scalar reads the text of a number or boolean; a string is accepted only
// when it came from a ${VAR}, because environment variables are strings.
func (d *decoder) scalar(n *node, path string, k kind, want string) (string, bool) {
	switch {
	case n.kind == k:
		return n.text, true
	case n.kind == kindString:
		s, expanded, ok := d.text(n, path, want)
		if !ok {
			return "", false
		}
		if !expanded {
			hint := ""
			if _, err := strconv.ParseFloat(s, 64); err == nil || s == "true" || s == "false" {
				hint = " (write it without quotes)"
			}
			d.problemf(n.line, path, "expected %s, got a string%s", want, hint)
			return "", false
		}
		return strings.TrimSpace(s), true
	}
	d.typeError(n, path, want)
	return "", false
}

// integer reads a whole number of at least lowest; tooLow completes the
// message when it is not.
func (d *decoder) integer(n *node, path string, lowest int64, tooLow string) (int, bool) {
	if n.kind == kindFloat {
		d.problemf(n.line, path, "expected a whole number, got %s", n.text)
		return 0, false
	}
	s, ok := d.scalar(n, path, kindInt, "a whole number")
	if !ok {
		return 0, false
	}
	v, err := parseInt(s)
	switch {
	case err != nil:
		d.problemf(n.line, path, "%v", err)
		return 0, false
	case v < lowest:
		d.problemf(n.line, path, "%d %s", v, tooLow)
		return 0, false
	case v > 1<<31-1:
		d.problemf(n.line, path, "%d is too large", v)
		return 0, false
	}
	return int(v), true
}

// number reads a non-negative number that may have a fraction.
func (d *decoder) number(n *node, path string) (float64, bool) {
	k := n.kind
	if k != kindInt && k != kindFloat {
		k = kindFloat
	}
	s, ok := d.scalar(n, path, k, "a number")
	if !ok {
		return 0, false
	}
	f, err := parseFloat(s)
	switch {
	case err != nil:
		d.problemf(n.line, path, "%v", err)
		return 0, false
	case f < 0:
		d.problemf(n.line, path, "%s must not be negative", s)
		return 0, false
	}
	return f, true
}

func (d *decoder) boolean(n *node, path string) (bool, bool) {
	s, ok := d.scalar(n, path, kindBool, "true or false")
	if !ok {
		return false, false
	}
	switch s {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	d.problemf(n.line, path, "%q is not true or false", s)
	return false, false
}

// durationRule says which durations a key accepts.
type durationRule int

const (
	positive    durationRule = iota // > 0
	nonNegative                     // >= 0, where 0 turns something off
)

func (d *decoder) duration(n *node, path string, rule durationRule) (time.Duration, bool) {
	const want = `a duration string such as "5s"`
	if n.kind != kindString {
		d.typeError(n, path, want)
		return 0, false
	}
	s, _, ok := d.text(n, path, want)
	if !ok {
		return 0, false
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		d.problemf(n.line, path, "%q is not a duration (write e.g. 500ms, 5s, 1m30s)", s)
		return 0, false
	}
	switch {
	case rule == positive && v <= 0:
		d.problemf(n.line, path, "%s must be positive", v)
		return 0, false
	case rule == nonNegative && v < 0:
		d.problemf(n.line, path, "%s must not be negative (0s turns it off)", v)
		return 0, false
	}
	return v, true
}

// enum reads one of values; what names the kind of value in messages.
func (d *decoder) enum(n *node, path, what string, values []string, foldCase bool) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	for _, v := range values {
		if s == v || (foldCase && strings.EqualFold(s, v)) {
			return v, true
		}
	}
	if sug := suggest(s, values); sug != "" {
		d.problemf(n.line, path, "%q is not a %s (did you mean %s?)", s, what, sug)
	} else {
		d.problemf(n.line, path, "%q is not a %s; expected %s", s, what, orList(values))
	}
	return "", false
}

// orList writes "a, b or c".
func orList(values []string) string {
	if len(values) < 2 {
		return strings.Join(values, "")
	}
	return strings.Join(values[:len(values)-1], ", ") + " or " + values[len(values)-1]
}

func (d *decoder) size(n *node, path string) (int64, bool) {
	const want = `a size such as "10MiB" or a whole number of bytes`
	var (
		v   int64
		err error
	)
	switch n.kind {
	case kindInt:
		v, err = parseInt(n.text)
		if err == nil && v < 0 {
			err = fmt.Errorf("%d must not be negative", v)
		}
	case kindString:
		s, _, ok := d.text(n, path, want)
		if !ok {
			return 0, false
		}
		v, err = parseSize(s)
	default:
		d.typeError(n, path, want)
		return 0, false
	}
	if err != nil {
		d.problemf(n.line, path, "%v", err)
		return 0, false
	}
	return v, true
}

func (d *decoder) prefixes(n *node, path string) ([]netip.Prefix, bool) {
	if n.kind != kindList {
		d.typeError(n, path, `a list of address ranges such as ["10.0.0.0/8"]`)
		return nil, false
	}
	out := make([]netip.Prefix, 0, len(n.items))
	ok := true
	for i, item := range n.items {
		ipath := indexPath(path, i)
		s, sok := d.str(item, ipath)
		if !sok {
			ok = false
			continue
		}
		p, err := parsePrefix(s)
		if err != nil {
			d.problemf(item.line, ipath, "%v", err)
			ok = false
			continue
		}
		out = append(out, p)
	}
	return out, ok
}

// address reads HOST:PORT. A listen address may have an empty host (every
// interface) and port 0 (ephemeral); a backend needs both.
// srvOK admits an SRV name (backends only).
func (d *decoder) address(n *node, path string, listen, srvOK bool) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	example := "10.0.0.1:80"
	if listen {
		example = "0.0.0.0:8080"
	}
	if srvOK && IsSRV(s) {
		return s, true // an SRV name: its records give the ports
	}
	if srvOK {
		example += ", or an SRV name such as _http._tcp.web.example"
	}
	host, port, err := SplitHostPort(s)
	switch {
	case err != nil:
		d.problemf(n.line, path, "%s (expected HOST:PORT, e.g. %s)", unwrapAddress(err), example)
		return "", false
	case !listen && host == "":
		d.problemf(n.line, path, "%q has no host (expected HOST:PORT, e.g. %s)", s, example)
		return "", false
	case !listen && port == 0:
		d.problemf(n.line, path, "%q: port 0 is not a port one can connect to", s)
		return "", false
	}
	return JoinHostPort(host, port), true
}

// Keys of each object, for the hints about keys written in the wrong place.
var (
	topKeys   = []string{"log", "admin", "grace_period", "max_connections", "watch", "defaults", "proxies"}
	proxyKeys = []string{"name", "listen", "backends"}
)

// file decodes the whole file.
func (d *decoder) file(root *node) decoded {
	out := decoded{cfg: Default()}
	c := &out.cfg
	top := handlers{
		"log": func(v *node, path string) {
			d.object(v, path, handlers{
				"format": func(v *node, path string) {
					if s, ok := d.enum(v, path, "log format", []string{FormatText, FormatJSON}, false); ok {
						c.Log.Format = s
					}
				},
				"level": func(v *node, path string) {
					if s, ok := d.enum(v, path, "log level", []string{"debug", "info", "warn", "error"}, true); ok {
						c.Log.Level = s
					}
				},
			}, nil)
		},
		"admin": func(v *node, path string) {
			d.object(v, path, handlers{
				"listen": func(v *node, path string) {
					if s, ok := d.address(v, path, true, false); ok {
						c.Admin.Listen = s
					}
				},
				"token": func(v *node, path string) {
					if s, ok := d.str(v, path); ok {
						c.Admin.Token = s
					}
				},
				"pprof": func(v *node, path string) {
					if b, ok := d.boolean(v, path); ok {
						c.Admin.Pprof = b
					}
				},
			}, nil)
		},
		"grace_period": func(v *node, path string) {
			if t, ok := d.duration(v, path, nonNegative); ok {
				c.GracePeriod = t
			}
		},
		"max_connections": func(v *node, path string) {
			if n, ok := d.integer(v, path, 0, "must not be negative (0 means no cap)"); ok {
				c.MaxConnections = n
			}
		},
		"watch": func(v *node, path string) {
			if b, ok := d.boolean(v, path); ok {
				c.Watch = b
			}
		},
		"defaults": func(v *node, path string) {
			d.object(v, path, d.settings(&out.defaults, handlers{}), func(key string) string {
				if contains(proxyKeys, key) {
					return key + " is set in each proxy, not in defaults"
				}
				return ""
			})
		},
		"proxies": func(v *node, path string) {
			if v.kind != kindList {
				d.typeError(v, path, "a list of proxies")
				return
			}
			for i, item := range v.items {
				if p, ok := d.proxy(item, indexPath(path, i)); ok {
					out.proxies = append(out.proxies, p)
				}
			}
		},
	}
	if root.kind != kindMap {
		d.problemf(root.line, "", "expected an object of keys (%s) at the top of the file, got %s", strings.Join(topKeys, ", "), root.kind)
		return out
	}
	d.object(root, "", top, func(key string) string {
		switch {
		case key == "proxy":
			return "did you mean proxies?"
		case contains(proxyKeys, key):
			return key + " belongs to a proxy, in the list under proxies"
		case key != "max_connections" && contains(settingsKeys, key):
			return key + " goes under defaults (for every proxy) or in a proxy"
		}
		return ""
	})
	return out
}

// proxy decodes one item of the proxies list.
func (d *decoder) proxy(n *node, path string) (fileProxy, bool) {
	fp := fileProxy{line: n.line}
	p := &fp.proxy
	var hasListen, hasBackends bool
	hs := handlers{
		"name": func(v *node, path string) {
			if s, ok := d.str(v, path); ok {
				if s == "" {
					d.problemf(v.line, path, "must not be empty (leave it out to name the proxy after its listen address)")
					return
				}
				p.Name = s
			}
		},
		"listen": func(v *node, path string) {
			hasListen = true
			if s, ok := d.address(v, path, true, false); ok {
				p.Listen = s
			}
		},
		"backends": func(v *node, path string) {
			hasBackends = true
			if v.kind != kindList {
				d.typeError(v, path, "a list of backends")
				return
			}
			p.Backends = make([]Backend, 0, len(v.items))
			for i, item := range v.items {
				if b, ok := d.backend(item, indexPath(path, i)); ok {
					p.Backends = append(p.Backends, b)
				}
			}
		},
	}
	ok := d.object(n, path, d.settings(&fp.settings, hs), func(key string) string {
		if contains(topKeys, key) && key != "max_connections" {
			return key + " is a top-level key, not a proxy's"
		}
		if key == "address" {
			return "a proxy has a listen address and a list of backends"
		}
		return ""
	})
	if !ok {
		return fp, false
	}
	if !hasListen {
		d.problemf(n.line, path, "listen is missing (the address to accept connections on, e.g. listen: 0.0.0.0:8080)")
	}
	if !hasBackends {
		d.problemf(n.line, path, "backends is missing (the list of HOST:PORT to relay to)")
	}
	return fp, true
}

// backend decodes one backend: "HOST:PORT" or {address, weight, backup}.
func (d *decoder) backend(n *node, path string) (Backend, bool) {
	b := Backend{Weight: 1}
	switch n.kind {
	case kindString:
		addr, ok := d.address(n, path, false, true)
		b.Address = addr
		return b, ok
	case kindMap:
	default:
		d.typeError(n, path, `"HOST:PORT" or an object {address, weight, backup}`)
		return b, false
	}
	ok, hasAddress := true, false
	d.object(n, path, handlers{
		"address": func(v *node, path string) {
			hasAddress = true
			addr, aok := d.address(v, path, false, true)
			b.Address, ok = addr, ok && aok
		},
		"weight": func(v *node, path string) {
			w, wok := d.integer(v, path, 1, "must be at least 1")
			b.Weight, ok = w, ok && wok
		},
		"backup": func(v *node, path string) {
			bk, bok := d.boolean(v, path)
			b.Backup, ok = bk, ok && bok
		},
	}, nil)
	if !hasAddress {
		d.problemf(n.line, path, "address is missing (the backend's HOST:PORT)")
		return b, false
	}
	return b, ok
}

// settingsKeys are the keys of Settings, in defaults and in every proxy.
var settingsKeys = []string{
	"balance", "connect_timeout", "idle_timeout", "health_check", "dns_refresh", "resolver",
	"max_connections", "max_connections_per_client", "allow", "deny", "rate_limit", "bandwidth",
	"proxy_protocol", "accept_proxy_protocol",
}

// settings adds the handlers of every settings key to hs, recording what
// is set in p, and returns hs.
func (d *decoder) settings(p *patch, hs handlers) handlers {
	dur := func(key string, rule durationRule, set func(*Settings, time.Duration)) func(*node, string) {
		return func(v *node, path string) {
			if t, ok := d.duration(v, path, rule); ok {
				p.set(key, func(s *Settings) { set(s, t) })
			}
		}
	}
	count := func(key string, lowest int64, tooLow string, set func(*Settings, int)) func(*node, string) {
		return func(v *node, path string) {
			if n, ok := d.integer(v, path, lowest, tooLow); ok {
				p.set(key, func(s *Settings) { set(s, n) })
			}
		}
	}
	cidrs := func(key string, set func(*Settings, []netip.Prefix)) func(*node, string) {
		return func(v *node, path string) {
			if l, ok := d.prefixes(v, path); ok {
				p.set(key, func(s *Settings) { set(s, l) })
			}
		}
	}
	const noCap = "must not be negative (0 means no cap)"

	hs["balance"] = func(v *node, path string) {
		if b, ok := d.enum(v, path, "balance algorithm", Balances, false); ok {
			p.set("balance", func(s *Settings) { s.Balance = b })
		}
	}
	hs["connect_timeout"] = dur("connect_timeout", positive, func(s *Settings, t time.Duration) { s.ConnectTimeout = t })
	hs["idle_timeout"] = dur("idle_timeout", nonNegative, func(s *Settings, t time.Duration) { s.IdleTimeout = t })
	hs["dns_refresh"] = dur("dns_refresh", nonNegative, func(s *Settings, t time.Duration) { s.DNSRefresh = t })
	hs["resolver"] = func(v *node, path string) {
		if r, ok := d.address(v, path, false, false); ok {
			p.set("resolver", func(s *Settings) { s.Resolver = r })
		}
	}
	hs["max_connections"] = count("max_connections", 0, noCap, func(s *Settings, n int) { s.MaxConnections = n })
	hs["max_connections_per_client"] = count("max_connections_per_client", 0, noCap, func(s *Settings, n int) { s.MaxConnectionsPerClient = n })
	hs["allow"] = cidrs("allow", func(s *Settings, l []netip.Prefix) { s.Allow = l })
	hs["deny"] = cidrs("deny", func(s *Settings, l []netip.Prefix) { s.Deny = l })
	hs["proxy_protocol"] = func(v *node, path string) {
		if pp, ok := d.enum(v, path, "PROXY protocol version", []string{"v1", "v2"}, false); ok {
			p.set("proxy_protocol", func(s *Settings) { s.ProxyProtocol = pp })
		}
	}

	hs["health_check"] = func(v *node, path string) {
		p.set("health_check", func(s *Settings) { s.HealthCheck.Explicit = true })
		hcDur := func(key string, rule durationRule, set func(*HealthCheck, time.Duration)) func(*node, string) {
			return dur("health_check."+key, rule, func(s *Settings, t time.Duration) { set(&s.HealthCheck, t) })
		}
		hcCount := func(key string, set func(*HealthCheck, int)) func(*node, string) {
			return count("health_check."+key, 1, "must be at least 1", func(s *Settings, n int) { set(&s.HealthCheck, n) })
		}
		hcText := func(key string, set func(*HealthCheck, string)) func(*node, string) {
			return func(v *node, path string) {
				if t, ok := d.str(v, path); ok {
					p.set("health_check."+key, func(s *Settings) { set(&s.HealthCheck, t) })
				}
			}
		}
		d.object(v, path, handlers{
			"interval": hcDur("interval", nonNegative, func(h *HealthCheck, t time.Duration) { h.Interval = t }),
			"timeout":  hcDur("timeout", positive, func(h *HealthCheck, t time.Duration) { h.Timeout = t }),
			"rise":     hcCount("rise", func(h *HealthCheck, n int) { h.Rise = n }),
			"fall":     hcCount("fall", func(h *HealthCheck, n int) { h.Fall = n }),
			"send":     hcText("send", func(h *HealthCheck, t string) { h.Send = t }),
			"expect":   hcText("expect", func(h *HealthCheck, t string) { h.Expect = t }),
			"send_proxy": func(v *node, path string) {
				if b, ok := d.boolean(v, path); ok {
					p.set("health_check.send_proxy", func(s *Settings) { s.HealthCheck.SendProxy = b })
				}
			},
		}, nil)
	}
	hs["rate_limit"] = func(v *node, path string) {
		d.object(v, path, handlers{
			"per_client": func(v *node, path string) {
				if f, ok := d.number(v, path); ok {
					p.set("rate_limit.per_client", func(s *Settings) { s.RateLimit.PerClient = f })
				}
			},
			"burst": count("rate_limit.burst", 0, "must not be negative", func(s *Settings, n int) { s.RateLimit.Burst = n }),
		}, nil)
	}
	hs["bandwidth"] = func(v *node, path string) {
		d.object(v, path, handlers{
			"per_connection": func(v *node, path string) {
				if n, ok := d.size(v, path); ok {
					p.set("bandwidth.per_connection", func(s *Settings) { s.Bandwidth.PerConnection = n })
				}
			},
		}, nil)
	}
	hs["accept_proxy_protocol"] = func(v *node, path string) {
		// The object's presence turns the feature on; its keys fill it.
		p.set("accept_proxy_protocol", func(s *Settings) {
			if s.AcceptProxyProtocol == nil {
				s.AcceptProxyProtocol = &AcceptProxyProtocol{}
			}
		})
		d.object(v, path, handlers{
			"trusted": cidrs("accept_proxy_protocol.trusted", func(s *Settings, l []netip.Prefix) { s.AcceptProxyProtocol.Trusted = l }),
		}, nil)
	}
	return hs
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

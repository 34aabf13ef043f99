// Package config holds pj's one configuration type and its validation.
//
// Configuration flows one way: Default() gives the built-in values, the command
// line (and, later, a file) fills them in, Validate checks the whole result,
// and the server builds immutable runtime objects from it.
package config

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Balance algorithms. Only RoundRobin is implemented so far; the others are
// named so that the validation message can list them.
const (
	RoundRobin = "round-robin"
)

// Log formats and levels.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// Config is everything pj needs to run.
type Config struct {
	Log         Log
	GracePeriod time.Duration
	Defaults    Defaults
	Proxies     []Proxy
}

// Log selects the encoding and the threshold of log records.
type Log struct {
	Format string // "text" or "json"
	Level  string // "debug", "info", "warn" or "error"
}

// Defaults are the per-proxy settings a proxy inherits unless it sets its own.
type Defaults struct {
	Balance        string
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
}

// Proxy is one listener and the backends its connections are relayed to.
type Proxy struct {
	// Name identifies the proxy in logs; it defaults to the listen address.
	Name string
	// Listen is HOST:PORT; an empty host means every interface, port 0 an
	// ephemeral port.
	Listen   string
	Backends []Backend

	Balance        string
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration

	// Source tells where the proxy was defined ("-p 0.0.0.0:80:b:80",
	// "PJ_PROXY"), for error messages.
	Source string
}

// Backend is one address connections may be relayed to.
type Backend struct {
	Address string // HOST:PORT
	Weight  int
	Backup  bool
}

// Default returns the built-in configuration of CONTRACT.md section 1.
func Default() Config {
	return Config{
		Log:         Log{Format: FormatText, Level: "info"},
		GracePeriod: 30 * time.Second,
		Defaults: Defaults{
			Balance:        RoundRobin,
			ConnectTimeout: 5 * time.Second,
			IdleTimeout:    0,
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

// Validate checks the whole configuration and fills each proxy's unset
// settings from Defaults. It returns a *ValidationError naming every problem.
func (c *Config) Validate() error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	switch c.Log.Format {
	case FormatText, FormatJSON:
	default:
		add("log format %q: expected text or json", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log level %q: expected debug, info, warn or error", c.Log.Level)
	}
	if c.GracePeriod < 0 {
		add("grace period %s: must not be negative", c.GracePeriod)
	}
	checkDefaults(&c.Defaults, add)

	type firstUse struct {
		p     *Proxy
		where string
	}
	seen := make(map[string]firstUse, len(c.Proxies))
	for i := range c.Proxies {
		p := &c.Proxies[i]
		p.inherit(c.Defaults)
		if p.Name == "" {
			p.Name = p.Listen
		}
		where := p.Source
		if where == "" {
			where = fmt.Sprintf("proxy %q", p.Name)
		}
		if len(p.Backends) == 0 {
			add("%s: no backends", where)
		}
		// A bad inherited value is reported once, for the defaults.
		if p.ConnectTimeout <= 0 && p.ConnectTimeout != c.Defaults.ConnectTimeout {
			add("%s: connect timeout %s: must be positive", where, p.ConnectTimeout)
		}
		if p.IdleTimeout < 0 && p.IdleTimeout != c.Defaults.IdleTimeout {
			add("%s: idle timeout %s: must not be negative (0 turns it off)", where, p.IdleTimeout)
		}
		if p.Balance != RoundRobin && p.Balance != c.Defaults.Balance {
			add("%s: balance %q: expected %s", where, p.Balance, RoundRobin)
		}
		if _, _, err := SplitHostPort(p.Listen); err != nil {
			add("%s: listen: %v", where, err)
		}
		backends := make(map[string]bool, len(p.Backends))
		for _, b := range p.Backends {
			if host, port, err := SplitHostPort(b.Address); err != nil {
				add("%s: backend: %v", where, err)
			} else if host == "" || port == 0 {
				add("%s: backend %q: needs a host and a port from 1 to 65535", where, b.Address)
			}
			if backends[b.Address] {
				add("%s: backend %s is listed twice", where, b.Address)
			}
			backends[b.Address] = true
			if b.Weight <= 0 {
				add("%s: backend %s: weight %d must be at least 1", where, b.Address, b.Weight)
			}
		}
		key := listenKey(p.Listen)
		if key == "" {
			continue // port 0: every such listener gets a port of its own
		}
		if first, dup := seen[key]; dup {
			add("%s: listen address %s is already used by %s; to balance one listener over several backends, list them in one mapping: %s",
				where, p.Listen, first.where, balanceHint(first.p, p))
			continue
		}
		seen[key] = firstUse{p, where}
	}
	if len(problems) > 0 {
		return &ValidationError{Problems: problems}
	}
	return nil
}

func checkDefaults(d *Defaults, add func(string, ...any)) {
	if d.Balance != RoundRobin {
		add("balance %q: expected %s", d.Balance, RoundRobin)
	}
	if d.ConnectTimeout <= 0 {
		add("connect timeout %s: must be positive", d.ConnectTimeout)
	}
	if d.IdleTimeout < 0 {
		add("idle timeout %s: must not be negative (0 turns it off)", d.IdleTimeout)
	}
}

func (p *Proxy) inherit(d Defaults) {
	if p.Balance == "" {
		p.Balance = d.Balance
	}
	if p.ConnectTimeout == 0 {
		p.ConnectTimeout = d.ConnectTimeout
	}
	if p.IdleTimeout == 0 {
		p.IdleTimeout = d.IdleTimeout
	}
	for i := range p.Backends {
		if p.Backends[i].Weight == 0 {
			p.Backends[i].Weight = 1
		}
	}
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

// Package proxy holds the runtime form of a configured proxy: immutable once
// built, shared by every connection its listener accepts, and replaced
// whole (never mutated) when the configuration changes. Its backends are a
// live balance.Set, whose pool DNS changes may swap.
package proxy

import (
	"context"
	"log/slog"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
)

// Proxy is what a listener's connections need to know about their proxy.
type Proxy struct {
	Name           string
	Balance        string
	Backends       *balance.Set
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	// Health has the rise and fall that passive checks (failed
	// connects) use too.
	Health config.HealthCheck
	// Stats are the proxy's live counters; they carry over a reload that
	// keeps the proxy's name.
	Stats *observe.ProxyStats
}

// Build makes the runtime proxy of c, resolving backend host names within
// ctx. prev, if not nil, is the proxy this one replaces: backends that stay
// keep their state, and the counters carry over if the name is the same.
// The set's health checks and DNS refresh start with Start.
func Build(ctx context.Context, c config.Proxy, log *slog.Logger, prev *Proxy) *Proxy {
	var prevSet *balance.Set
	stats := observe.NewProxyStats()
	if prev != nil {
		prevSet = prev.Backends
		if prev.Name == c.Name {
			stats = prev.Stats
		}
	}
	return &Proxy{
		Name:           c.Name,
		Balance:        c.Balance,
		Backends:       balance.NewSet(ctx, c.Name, c.Backends, c.Settings, log, prevSet),
		ConnectTimeout: c.ConnectTimeout,
		IdleTimeout:    c.IdleTimeout,
		Health:         c.HealthCheck,
		Stats:          stats,
	}
}

// Pool is the proxy's current pool of backends.
func (p *Proxy) Pool() *balance.Pool { return p.Backends.Pool() }

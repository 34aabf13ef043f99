// Package proxy holds the runtime form of a configured proxy: immutable once
// built, shared by every connection its listener accepts, and replaced
// whole (never mutated) when the configuration changes.
package proxy

import (
	"context"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
)

// Proxy is what a listener's connections need to know about their proxy.
type Proxy struct {
	Name           string
	Balance        string
	Pool           *balance.Pool
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	// Stats are the proxy's live counters; they carry over a reload that
	// keeps the proxy's name.
	Stats *observe.ProxyStats
}

// Build makes the runtime proxy of c, resolving backend host names (see
// balance.NewPool). prev, if not nil, is the proxy this one replaces on the
// same listener: backends that stay keep their state.
func Build(ctx context.Context, c config.Proxy, r balance.Resolver, prev *Proxy) *Proxy {
	var prevPool *balance.Pool
	stats := observe.NewProxyStats()
	if prev != nil {
		prevPool = prev.Pool
		if prev.Name == c.Name {
			stats = prev.Stats
		}
	}
	return &Proxy{
		Name:           c.Name,
		Balance:        c.Balance,
		Pool:           balance.NewPool(ctx, c.Backends, r, prevPool),
		ConnectTimeout: c.ConnectTimeout,
		IdleTimeout:    c.IdleTimeout,
		Stats:          stats,
	}
}

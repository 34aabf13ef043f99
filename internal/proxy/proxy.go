// Package proxy holds the runtime form of a configured proxy: immutable once
// built, shared by every connection its listener accepts, and replaced
// whole (never mutated) when the configuration changes. Its backends are a
// live balance.Set, whose pool DNS changes may swap.
package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/pj-proxy/pj/internal/admission"
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

	// Admission, decided at accept, before any backend is contacted.
	ACL            *admission.ACL     // nil: everyone is allowed
	Clients        *admission.Clients // per-client rate and cap; nil: none
	MaxConnections int                // of this listener; 0: no cap
	// Bandwidth caps each direction of each connection, in bytes per
	// second; 0: no cap.
	Bandwidth int64

	// ProxyProtocol is the PROXY protocol version sent to backends: 0
	// (none), 1 or 2.
	ProxyProtocol byte
	// TrustedProxies are the peers whose PROXY protocol header is read;
	// nil: no header is expected from anyone.
	TrustedProxies *admission.CIDRSet

	// UDP marks a proxy of datagrams (a listen address ending in /udp);
	// Responses, if not 0, ends each of its sessions after that many
	// replies.
	UDP       bool
	Responses int

	rateLimit config.RateLimit // what Clients was built with
	perClient int
}

// Build makes the runtime proxy of c, resolving backend host names within
// ctx. prev, if not nil, is the proxy this one replaces: backends that stay
// keep their state, and the counters carry over if the name is the same.
// The set's health checks and DNS refresh start with Start. A proxy that
// cannot run as configured (an unknown balance algorithm) is an error.
func Build(ctx context.Context, c config.Proxy, log *slog.Logger, prev *Proxy) (*Proxy, error) {
	if len(c.Routes) > 0 {
		// pj check validates routes; the listeners do not choose among
		// them yet, and a proxy without backends would refuse everyone.
		return nil, fmt.Errorf("proxy %s: routes are not served by this version of pj "+
			"(pj check validates them); list backends instead", c.Name)
	}
	var prevSet *balance.Set
	stats := observe.NewProxyStats()
	clients := admission.NewClients(c.RateLimit.PerClient, c.RateLimit.Burst, c.MaxConnectionsPerClient, admission.DefaultCapacity)
	if prev != nil {
		prevSet = prev.Backends
		if prev.Name == c.Name {
			stats = prev.Stats
			// Per-client buckets and counts carry over when the limits
			// stay, so a reload neither forgives nor forgets a client.
			if prev.rateLimit == c.RateLimit && prev.perClient == c.MaxConnectionsPerClient {
				clients = prev.Clients
			}
		}
	}
	var trusted *admission.CIDRSet
	if c.AcceptProxyProtocol != nil {
		trusted = admission.NewCIDRSet(c.AcceptProxyProtocol.Trusted)
	}
	set, err := balance.NewSet(ctx, c.Name, c.Backends, c.Settings, log, prevSet)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", c.Name, err)
	}
	return &Proxy{
		Name:           c.Name,
		Balance:        c.Balance,
		Backends:       set,
		ConnectTimeout: c.ConnectTimeout,
		IdleTimeout:    c.IdleTimeout,
		Health:         c.HealthCheck,
		Stats:          stats,
		ACL:            acl(c.Allow, c.Deny),
		Clients:        clients,
		MaxConnections: c.MaxConnections,
		Bandwidth:      c.Bandwidth.PerConnection,
		ProxyProtocol:  c.ProxyVersion(),
		TrustedProxies: trusted,
		UDP:            c.IsUDP(),
		Responses:      c.UDP.Responses,
		rateLimit:      c.RateLimit,
		perClient:      c.MaxConnectionsPerClient,
	}, nil
}

// Pool is the proxy's current pool of backends.
func (p *Proxy) Pool() *balance.Pool { return p.Backends.Pool() }

// acl is nil for a proxy without lists: its connections pay one nil check.
func acl(allow, deny []netip.Prefix) *admission.ACL {
	if len(allow) == 0 && len(deny) == 0 {
		return nil
	}
	return admission.NewACL(allow, deny)
}

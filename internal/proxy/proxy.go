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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/admission"
	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/certs"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/route"
	"github.com/pj-proxy/pj/internal/tlsproxy"
	"github.com/pj-proxy/pj/internal/warm"
	"github.com/pj-proxy/pj/internal/watch"
)

// Proxy is what a listener's connections need to know about their proxy.
// The listener's settings are read from the embedded Settings as
// configured (p.MatchTimeout, p.MaxConnections); those of a connection
// from the route that takes it. The fields of Proxy itself are what pj
// builds from them; UDP, which shares a setting's name, says whether the
// proxy relays datagrams (its udp settings are p.Settings.UDP).
type Proxy struct {
	config.Settings
	Name string
	// Routes are where the proxy's connections go, in order: at least
	// one. A proxy configured without routes has one, named after the
	// proxy, that takes every connection.
	Routes []*Route
	// Table decides which route takes a connection; nil when the proxy
	// was configured without routes.
	Table *route.Table
	// ACME are the routes that obtain certificates with ACME, when the
	// proxy has routes: the CA's tls-alpn-01 hello for one of their names
	// goes to them, whichever route its name would choose. Usually nil.
	ACME []*Route
	// HeaderTimeout bounds the wait for a trusted peer's PROXY protocol
	// header: the proxy's connect timeout.
	HeaderTimeout time.Duration
	// Stats are the proxy's live counters; they carry over a reload that
	// keeps the proxy's name.
	Stats *observe.ProxyStats

	// Admission, decided at accept, before any backend is contacted.
	ACL     *admission.ACL     // nil: everyone is allowed
	Clients *admission.Clients // per-client rate and cap; nil: none

	// TrustedProxies are the peers whose PROXY protocol header is read;
	// nil: no header is expected from anyone.
	TrustedProxies *admission.CIDRSet

	// UDP marks a proxy of datagrams (a listen address ending in /udp);
	// Responses, if not 0, ends each of its sessions after that many
	// replies.
	UDP       bool
	Responses int

	watchMu   sync.Mutex
	stopWatch context.CancelFunc // ends WatchCertificates; nil while not watching
	watching  sync.WaitGroup
}

// Route is one destination of a proxy: its backends and the settings of
// the connections it takes. A setting is read from the embedded Settings
// as configured (r.IdleTimeout); the fields of Route itself are what pj
// builds from them, and the few that share a setting's name (TLS,
// Bandwidth, ProxyProtocol) stand for it in the form the data path uses.
type Route struct {
	config.Settings
	Name     string
	Backends *balance.Set
	// Match says what the route takes, as pj check says it ("sni
	// app.example.com; protocol tls"); empty for the one route of a proxy
	// configured without routes.
	Match string
	// Bandwidth caps each direction of each connection, in bytes per
	// second; 0: no cap.
	Bandwidth int64
	// ProxyProtocol is the PROXY protocol version sent to backends: 0
	// (none), 1 or 2.
	ProxyProtocol byte
	// Taken counts the connections the route took; it carries over a
	// reload that keeps the proxy's and the route's names.
	Taken *atomic.Uint64
	// TLS, if not nil, is the route of connections that need TLS in user
	// space (tls, backend_tls): the engine hands them to the TLS path.
	TLS *tlsproxy.Route
	// Warm holds connections to the backends opened before clients need
	// them; nil when the route has no pool.
	Warm *warm.Pools
}

// Pool is the route's current pool of backends.
func (r *Route) Pool() *balance.Pool { return r.Backends.Pool() }

// Build makes the runtime proxy of c, resolving backend host names within
// ctx. prev, if not nil, is the proxy this one replaces: the backends of a
// route that keeps its name keep their state, and the counters carry over
// if the proxy's name is the same. The routes' health checks and DNS
// refresh start with Start. A proxy that cannot run as configured (an
// unknown balance algorithm) is an error.
func Build(ctx context.Context, c config.Proxy, log *slog.Logger, prev *Proxy) (*Proxy, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stats := observe.NewProxyStats()
	clients := admission.NewClients(c.RateLimit.PerClient, c.RateLimit.Burst, c.MaxConnectionsPerClient, admission.DefaultCapacity)
	if prev != nil && prev.Name == c.Name {
		stats = prev.Stats
		// Per-client buckets and counts carry over when the limits
		// stay, so a reload neither forgives nor forgets a client.
		if prev.RateLimit == c.RateLimit && prev.MaxConnectionsPerClient == c.MaxConnectionsPerClient {
			clients = prev.Clients
		}
	}
	var trusted *admission.CIDRSet
	if c.AcceptProxyProtocol != nil {
		trusted = admission.NewCIDRSet(c.AcceptProxyProtocol.Trusted)
	}
	p := &Proxy{
		Settings:       c.Settings,
		Name:           c.Name,
		HeaderTimeout:  c.ConnectTimeout,
		Stats:          stats,
		ACL:            acl(c.Allow, c.Deny),
		Clients:        clients,
		TrustedProxies: trusted,
		UDP:            c.IsUDP(),
		Responses:      c.UDP.Responses,
	}
	if len(c.Routes) == 0 {
		r, err := buildRoute(ctx, c.Name, c.Name, "", c.Backends, c.Settings, stats, log, prev)
		if err != nil {
			return nil, fmt.Errorf("proxy %s: %w", c.Name, err)
		}
		if r.TLS != nil {
			r.TLS.Name = "" // the log names no route for a proxy without routes
		}
		p.Routes = []*Route{r}
		return p, nil
	}
	t, err := route.NewTable(c.Matches())
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", c.Name, err)
	}
	p.Table = t
	for _, rc := range c.Routes {
		r, err := buildRoute(ctx, c.Name, rc.Name, rc.Match.Describe(), rc.Backends, rc.Settings,
			stats, log.With("route", rc.Name), prev)
		if err != nil {
			p.Discard() // the routes built so far
			return nil, fmt.Errorf("proxy %s, route %s: %w", c.Name, rc.Name, err)
		}
		p.Routes = append(p.Routes, r)
		if r.TLS != nil && r.TLS.Terminate != nil && r.TLS.Terminate.Store().ACME() != nil {
			p.ACME = append(p.ACME, r)
		}
	}
	return p, nil
}

// buildRoute makes the route name of proxy proxyName. Its backends keep
// the state they had in prev's route of the same name.
func buildRoute(ctx context.Context, proxyName, name, match string, backends []config.Backend, s config.Settings,
	stats *observe.ProxyStats, log *slog.Logger, prev *Proxy) (*Route, error) {
	var prevSet *balance.Set
	var prevWarm *warm.Pools
	taken := new(atomic.Uint64)
	if old := prev.route(name); old != nil {
		prevSet = old.Backends
		if prev.Name == proxyName {
			taken = old.Taken
			prevWarm = old.Warm
		}
	}
	set, err := balance.NewSet(ctx, proxyName, backends, s, log, prevSet)
	if err != nil {
		return nil, err
	}
	r := &Route{
		Settings:      s,
		Name:          name,
		Backends:      set,
		Match:         match,
		Bandwidth:     s.Bandwidth.PerConnection,
		ProxyProtocol: s.ProxyVersion(),
		Taken:         taken,
	}
	if s.TLS != nil || s.BackendTLS != nil {
		var prevTLS *tlsproxy.Route
		if old := prev.route(name); old != nil {
			prevTLS = old.TLS
		}
		if r.TLS, err = buildTLS(proxyName, name, s, set, stats, log, prevTLS); err != nil {
			return nil, err
		}
	}
	if s.Pool.Size > 0 {
		ws := warm.Settings{Size: s.Pool.Size, MaxAge: s.Pool.MaxAge, ConnectTimeout: s.ConnectTimeout}
		if r.TLS != nil && r.TLS.Originate != nil {
			ws.Handshake = r.TLS.Originate.Ahead()
			ws.TLS = *s.BackendTLS
		}
		r.Warm = warm.New(set, ws, &stats.PoolHits, &stats.PoolMisses, log, prevWarm)
		if r.TLS != nil {
			r.TLS.Warm = r.Warm
		}
	}
	return r, nil
}

// buildTLS makes the TLS path's route: the certificate store and the
// client's TLS material are read now (a file that cannot be used is an
// error at start; on a reload, prev's copy of it is kept and logged).
func buildTLS(proxyName, routeName string, s config.Settings, set *balance.Set, stats *observe.ProxyStats,
	log *slog.Logger, prev *tlsproxy.Route) (*tlsproxy.Route, error) {
	tr := &tlsproxy.Route{
		Proxy:            proxyName,
		Name:             routeName,
		Backends:         set,
		Rise:             s.HealthCheck.Rise,
		Fall:             s.HealthCheck.Fall,
		ConnectTimeout:   s.ConnectTimeout,
		IdleTimeout:      s.IdleTimeout,
		HalfCloseTimeout: s.HalfCloseTimeout,
		ProxyProtocol:    s.ProxyVersion(),
		Stats:            stats,
	}
	if s.TLS != nil {
		var prevStore *certs.Store
		var prevTerm *tlsproxy.Terminator
		if prev != nil && prev.Terminate != nil {
			prevTerm = prev.Terminate
			prevStore = prevTerm.Store()
		}
		store, err := certs.NewStore(ServerOptions(s.TLS), log, prevStore)
		if err != nil {
			return nil, err
		}
		tr.Terminate = tlsproxy.NewTerminator(store, prevTerm)
	}
	if s.BackendTLS != nil {
		var prevClient *certs.Client
		if prev != nil && prev.Originate != nil {
			prevClient = prev.Originate.Client()
		}
		client, err := certs.NewClient(ClientOptions(s.BackendTLS), log, prevClient)
		if err != nil {
			if tr.Terminate != nil {
				tr.Terminate.Store().Close()
			}
			return nil, err
		}
		tr.Originate = tlsproxy.NewDialer(client)
	}
	return tr, nil
}

// ServerOptions are the certificate store's options of a tls setting.
func ServerOptions(t *config.TLS) certs.ServerOptions {
	opt := certs.ServerOptions{ClientCA: t.ClientCA, MinVersion: t.MinVersion, ALPN: t.ALPN}
	for _, c := range t.Certificates {
		opt.Certificates = append(opt.Certificates, certs.Pair{Cert: c.Cert, Key: c.Key})
	}
	if a := t.ACME; a != nil {
		opt.ACME = &certs.ACMEOptions{Domains: a.Domains, Email: a.Email, Directory: a.Directory,
			CARoots: a.CARoots, Storage: a.Storage, HTTPListen: a.HTTPListen}
	}
	return opt
}

// ClientOptions are the TLS client's options of a backend_tls setting.
func ClientOptions(b *config.BackendTLS) certs.ClientOptions {
	return certs.ClientOptions{ServerName: b.ServerName, CA: b.CA, Cert: b.Cert, Key: b.Key,
		InsecureSkipVerify: b.InsecureSkipVerify}
}

// route returns p's route of that name; nil if p is nil or has none.
func (p *Proxy) route(name string) *Route {
	if p == nil {
		return nil
	}
	for _, r := range p.Routes {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// ACMEFor returns the route that answers the CA's tls-alpn-01 challenge in
// a hello with this server name and ALPN list; nil if it is no challenge
// or no route obtains a certificate for the name.
func (p *Proxy) ACMEFor(serverName string, alpn []string) *Route {
	for _, r := range p.ACME {
		if r.TLS.Terminate.Store().ACME().Wants(serverName, alpn) {
			return r
		}
	}
	return nil
}

// Routed reports whether the proxy was configured with routes.
func (p *Proxy) Routed() bool { return p.Table != nil }

// Start runs the health checks and DNS refresh of every route, fills
// its pool of warm connections (taking over those of the proxy it
// replaces, if that one's pool had the same settings), and starts
// obtaining its ACME certificates.
func (p *Proxy) Start() {
	for _, r := range p.Routes {
		r.Backends.Start()
		if r.Warm != nil {
			r.Warm.Start()
		}
		if r.TLS != nil && r.TLS.Terminate != nil {
			r.TLS.Terminate.Store().Start()
		}
	}
}

// Discard releases what Build took for a proxy that will never start (a
// reload that failed): its certificate stores let go of the ACME clients
// they share with the running proxies, and stop those no one else uses.
func (p *Proxy) Discard() {
	for _, r := range p.Routes {
		if r.TLS != nil && r.TLS.Terminate != nil {
			r.TLS.Terminate.Store().Close()
		}
	}
}

// ReloadCertificates reads the TLS files of every route again (SIGHUP). A
// file that fails keeps what was loaded before, and is logged.
func (p *Proxy) ReloadCertificates() {
	for _, r := range p.Routes {
		if r.TLS == nil {
			continue
		}
		if t := r.TLS.Terminate; t != nil {
			_ = t.Store().Reload() // logged by the store
		}
		if o := r.TLS.Originate; o != nil {
			_ = o.Client().Reload()
		}
	}
}

// WatchCertificates reloads a route's TLS files whenever they change,
// until Stop. The files are watched when it returns: a change made after
// it is seen.
func (p *Proxy) WatchCertificates(debounce time.Duration, log *slog.Logger) {
	p.watchMu.Lock()
	defer p.watchMu.Unlock()
	if p.stopWatch != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stopWatch = cancel
	start := func(what string, files []string, reload func() error) {
		if len(files) == 0 {
			return
		}
		w, err := watch.NewFiles(files, log)
		if err != nil {
			log.Error("cannot watch the TLS files; reload them with SIGHUP", "proxy", p.Name, "error", err.Error())
			return
		}
		p.watching.Go(func() {
			_ = w.Run(ctx, debounce, func() {
				if reload() == nil { // a failure is logged by the reload
					log.Info(what+" reloaded", "proxy", p.Name, "files", strings.Join(files, ", "))
				}
			})
		})
	}
	for _, r := range p.Routes {
		if r.TLS == nil {
			continue
		}
		if t := r.TLS.Terminate; t != nil {
			start("certificates", t.Store().Files(), t.Store().Reload)
		}
		if o := r.TLS.Originate; o != nil {
			start("backend_tls files", o.Client().Files(), o.Client().Reload)
		}
	}
}

// StopWatchingCertificates ends what WatchCertificates started, and
// waits for its watchers to be gone (a reload that turns --watch off).
func (p *Proxy) StopWatchingCertificates() {
	p.watchMu.Lock()
	if p.stopWatch != nil {
		p.stopWatch()
		p.stopWatch = nil
	}
	p.watchMu.Unlock()
	p.watching.Wait()
}

// Stop ends what Start and WatchCertificates started, and waits for it;
// warm connections not taken over by a successor's Start are closed.
func (p *Proxy) Stop() {
	p.StopWatchingCertificates()
	for _, r := range p.Routes {
		r.Backends.Stop()
		if r.Warm != nil {
			r.Warm.Stop()
		}
	}
	p.Discard()
}

// Pooled reports whether a route of the proxy keeps warm connections.
func (p *Proxy) Pooled() bool {
	for _, r := range p.Routes {
		if r.Warm != nil {
			return true
		}
	}
	return false
}

// Backends lists the backends of every route, route by route.
func (p *Proxy) Backends() []*balance.Backend {
	if len(p.Routes) == 1 {
		return p.Routes[0].Pool().Backends()
	}
	var out []*balance.Backend
	for _, r := range p.Routes {
		out = append(out, r.Pool().Backends()...)
	}
	return out
}

// acl is nil for a proxy without lists: its connections pay one nil check.
func acl(allow, deny []netip.Prefix) *admission.ACL {
	if len(allow) == 0 && len(deny) == 0 {
		return nil
	}
	return admission.NewACL(allow, deny)
}

// Package admin is pj's HTTP admin listener (README.md, "Admin listener"):
// Prometheus metrics, health and readiness, a JSON API over the running
// proxies and the live connection table, and the status page.
//
// It has its own ServeMux, timeouts on every phase of a request, and
// nothing it does can stop the proxying: it only reads the server's
// counters, and the few changes it can make (close a connection, drain a
// backend) go through the same paths as the proxy's own decisions.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/tlsproxy"
)

// Source is what the admin listener shows and acts on: a pj's running
// proxies and open connections (a *server.Server).
type Source interface {
	Proxies() []proxy.View
	// Connections returns at most limit (all if limit < 0) of the open
	// connections of proxy (all if ""), oldest first.
	Connections(proxy string, limit int) []observe.ConnInfo
	Kill(id uint64) bool
	// SetBackendState returns an error wrapping proxy.ErrNotFound for a
	// proxy or backend that does not exist.
	SetBackendState(proxyName, backend string, state balance.AdminState) error
	Ready() error
	Reloads() (ok, failed uint64)
	Panics() uint64
}

// Options configure the admin listener.
type Options struct {
	// Token, when set, must be presented (Authorization: Bearer TOKEN) by
	// requests that change something.
	Token string
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool
	// Hosts are names, beside IP addresses and localhost, that requests
	// may give as their Host (admin.hosts).
	Hosts   []string
	Version string
	Logger  *slog.Logger
	// LogDropped, if set, counts the log lines dropped because the log
	// destination was too slow (pj_log_lines_dropped_total).
	LogDropped func() uint64
	// Reload, if set, serves POST /api/v1/reload.
	Reload Reloader
	// Socket, if set, is a listening socket for addr handed over by the
	// pj this one upgrades: Listen serves it instead of binding. Listen
	// owns it.
	Socket *os.File
}

// Handler returns the admin HTTP handler. loopbackOnly says whether the
// listener it serves accepts connections from this machine only: then
// changes are allowed without a token. Every request passes the guards of
// guard.go first.
func Handler(src Source, opt Options, loopbackOnly bool) http.Handler {
	return guard(handlerMux(src, opt, loopbackOnly), newHostGuard(opt.Hosts, opt.Logger))
}

func handlerMux(src Source, opt Options, loopbackOnly bool) http.Handler {
	h := &handler{src: src, opt: opt, loopbackOnly: loopbackOnly, started: time.Now()}
	if h.opt.Logger == nil {
		h.opt.Logger = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(src, opt.Version, opt.LogDropped))
	reg.MustRegister(tlsproxy.NewCollector(func() []tlsproxy.Terminated { return terminated(src) }))
	registerRuntime(reg)

	mux := http.NewServeMux()
	// A collector that fails (the process collector, out of descriptors)
	// leaves its metrics out; the others are served all the same.
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slogErrorLog{h.opt.Logger}, ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.HandleFunc("GET /api/v1/proxies", h.proxies)
	mux.HandleFunc("GET /api/v1/connections", h.connections)
	mux.HandleFunc("DELETE /api/v1/connections/{id}", h.mutating(h.kill))
	mux.HandleFunc("PUT /api/v1/proxies/{name}/backends/{address}/state", h.mutating(h.backendState))
	mux.HandleFunc("POST /api/v1/reload", h.mutating(h.reload))
	mux.HandleFunc("GET /api/v1/auth", h.auth)
	mux.Handle("GET /", statusPage())
	if opt.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

type handler struct {
	src          Source
	opt          Options
	loopbackOnly bool
	started      time.Time
}

func (h *handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := h.src.Ready(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ready\n")
}

// The JSON shapes README.md documents. More fields may be added; these
// stay.
type proxiesJSON struct {
	Proxies []proxyJSON `json:"proxies"`
}

type proxyJSON struct {
	Name              string        `json:"name"`
	Listen            string        `json:"listen"`
	Balance           string        `json:"balance"`
	ActiveConnections int64         `json:"active_connections"`
	ConnectionsTotal  uint64        `json:"connections_total"`
	BytesUp           uint64        `json:"bytes_up"`
	BytesDown         uint64        `json:"bytes_down"`
	Backends          []backendJSON `json:"backends"` // of every route
	Routes            []routeJSON   `json:"routes"`
}

// routeJSON is one route of a proxy; a proxy without routes has one,
// named after it, without match.
type routeJSON struct {
	Name              string        `json:"name"`
	Match             string        `json:"match,omitempty"` // as pj check says it; none for the route of a proxy without routes
	Balance           string        `json:"balance"`
	ActiveConnections int64         `json:"active_connections"`
	ConnectionsTotal  uint64        `json:"connections_total"`
	Backends          []backendJSON `json:"backends"`
}

type backendJSON struct {
	Address           string `json:"address"`
	Name              string `json:"name,omitempty"`
	Route             string `json:"route,omitempty"` // in a proxy's list, for a proxy with routes
	State             string `json:"state"`
	Weight            int    `json:"weight"`
	Backup            bool   `json:"backup"`
	ActiveConnections int64  `json:"active_connections"`
	ConnectionsTotal  uint64 `json:"connections_total"`
	Error             string `json:"error,omitempty"`
	// Pool is the backend's warm connections, for a route with a pool.
	Pool *poolJSON `json:"pool,omitempty"`
}

type poolJSON struct {
	Idle int `json:"idle"` // open, unused, waiting for a client
	Size int `json:"size"` // what the pool keeps
}

func (h *handler) proxies(w http.ResponseWriter, _ *http.Request) {
	out := proxiesJSON{Proxies: []proxyJSON{}}
	for _, v := range h.src.Proxies() {
		p := v.Proxy
		pj := proxyJSON{
			Name: p.Name, Listen: v.Listen, Balance: p.Balance,
			ActiveConnections: p.Stats.Active.Load(), ConnectionsTotal: p.Stats.Total(),
			BytesUp: p.Stats.BytesUp.Load(), BytesDown: p.Stats.BytesDown.Load(),
			Backends: []backendJSON{}, Routes: []routeJSON{},
		}
		for _, r := range p.Routes {
			rj := routeJSON{Name: r.Name, Match: r.Match, Balance: r.Balance, ConnectionsTotal: r.Taken.Load(),
				Backends: []backendJSON{}}
			for _, b := range r.Pool().Backends() {
				bj := backendOf(b)
				if r.Warm != nil {
					bj.Pool = &poolJSON{Idle: r.Warm.Idle(b.Address), Size: r.Warm.Size()}
				}
				rj.Backends = append(rj.Backends, bj)
				rj.ActiveConnections += bj.ActiveConnections
				if p.Routed() {
					bj.Route = r.Name
				}
				pj.Backends = append(pj.Backends, bj)
			}
			pj.Routes = append(pj.Routes, rj)
		}
		out.Proxies = append(out.Proxies, pj)
	}
	writeJSON(w, http.StatusOK, out)
}

func backendOf(b *balance.Backend) backendJSON {
	bj := backendJSON{
		Address: b.Address, State: b.StateName(), Weight: b.Weight, Backup: b.Backup,
		ActiveConnections: b.Active.Load(), ConnectionsTotal: b.Total.Load(),
	}
	if b.Name != b.Address {
		bj.Name = b.Name
	}
	if b.Err != nil {
		bj.Error = b.Err.Error()
	}
	return bj
}

type connectionsJSON struct {
	Connections []connectionJSON `json:"connections"`
}

type connectionJSON struct {
	ID         string  `json:"id"`
	Client     string  `json:"client"`
	Proxy      string  `json:"proxy"`
	Listener   string  `json:"listener"`
	Route      string  `json:"route,omitempty"`
	Backend    string  `json:"backend"`
	Started    string  `json:"started"`
	AgeSeconds float64 `json:"age_seconds"`
	BytesUp    int64   `json:"bytes_up"`
	BytesDown  int64   `json:"bytes_down"`
	TLS        string  `json:"tls,omitempty"`
	SNI        string  `json:"sni,omitempty"`
}

// connections lists the open connections, oldest first. ?proxy=NAME keeps
// one proxy's; ?limit=N the first N.
func (h *handler) connections(w http.ResponseWriter, r *http.Request) {
	limit := -1
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: expected a whole number", v))
			return
		}
		limit = n
	}
	only := r.URL.Query().Get("proxy")
	// The limit goes to the source: a listing of the oldest one costs one,
	// however many are open.
	conns := h.src.Connections(only, limit)
	now := time.Now()
	out := connectionsJSON{Connections: make([]connectionJSON, 0, len(conns))}
	for _, c := range conns {
		out.Connections = append(out.Connections, connectionJSON{
			ID: connID(c.ID), Client: c.Client.String(), Proxy: c.Proxy, Listener: c.Listener,
			Route: c.Route, Backend: c.Backend, Started: c.Started.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
			AgeSeconds: roundTo(now.Sub(c.Started).Seconds(), 3), BytesUp: c.Up, BytesDown: c.Down,
			TLS: c.TLS, SNI: c.SNI,
		})
	}
	writeJSON(w, http.StatusOK, out)
}

func connID(id uint64) string { return "c" + strconv.FormatUint(id, 10) }

func roundTo(f float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(f*p+0.5)) / p
}

func (h *handler) kill(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("id")
	id, err := strconv.ParseUint(strings.TrimPrefix(raw, "c"), 10, 64)
	if err != nil || !strings.HasPrefix(raw, "c") {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("connection id %q: expected c and a number, as /api/v1/connections shows", raw))
		return
	}
	if !h.src.Kill(id) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no open connection %s", raw))
		return
	}
	h.opt.Logger.Info("connection closed through the admin API", "conn", raw, "from", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

// backendState takes the new state as a plain body ("drain") or as JSON
// ({"state": "drain"}).
func (h *handler) backendState(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1024))
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	text := strings.TrimSpace(string(body))
	if strings.HasPrefix(text, "{") {
		var v struct {
			State string `json:"state"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			writeError(w, http.StatusBadRequest, "body: "+err.Error()+`; expected up, drain or down, or {"state": "drain"}`)
			return
		}
		text = v.State
	}
	state, err := balance.ParseAdminState(text)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	name, addr := r.PathValue("name"), r.PathValue("address")
	if err := h.src.SetBackendState(name, addr, state); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, proxy.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeError(w, code, err.Error())
		return
	}
	h.opt.Logger.Info("backend state set through the admin API", "proxy", name, "backend", addr, "state", state.String(), "from", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]string{"proxy": name, "backend": addr, "state": state.String()})
}

// auth tells the status page whether changes need a token, and whether the
// one it sends is right.
func (h *handler) auth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]bool{
		"token_required":   h.opt.Token != "" || !h.loopbackOnly,
		"token_configured": h.opt.Token != "",
		"allowed":          h.allowed(r) == nil,
	})
}

// mutating wraps a handler that changes something with the token rule.
func (h *handler) mutating(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h.allowed(r); err != nil {
			code := http.StatusUnauthorized
			if h.opt.Token == "" {
				code = http.StatusForbidden
			}
			writeError(w, code, err.Error())
			return
		}
		next(w, r)
	}
}

// allowed applies the rule: the configured token, or, with no token, a
// listener that only this machine can reach.
func (h *handler) allowed(r *http.Request) error {
	if h.opt.Token == "" {
		if h.loopbackOnly {
			return nil
		}
		return errors.New("changes are refused: this admin listener is reachable from other machines and no admin.token (PJ_ADMIN_TOKEN) is set")
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.opt.Token)) != 1 {
		return errors.New("changes need the admin token: send Authorization: Bearer TOKEN")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// LoopbackOnly reports whether a listener bound to addr accepts
// connections from this machine only.
func LoopbackOnly(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	return ok && ip.Unmap().IsLoopback()
}

// Server is a running admin listener.
type Server struct {
	srv  *http.Server
	ln   *capListener
	done chan struct{}
}

// Listen binds addr and serves the admin handler on it.
func Listen(addr string, src Source, opt Options) (*Server, error) {
	var (
		raw net.Listener
		err error
	)
	if opt.Socket != nil {
		raw, err = net.FileListener(opt.Socket) // a duplicate
		_ = opt.Socket.Close()
	} else {
		raw, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	if host, _, err := net.SplitHostPort(addr); err == nil && host != "" {
		// A name the operator bound by is one of the listener's own.
		opt.Hosts = append(slices.Clip(opt.Hosts), host)
	}
	ln, err := newCapListener(raw.(*net.TCPListener), func() int64 { return activeConnections(src) }, opt.Logger)
	if err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	ln.handler = Handler(src, opt, LoopbackOnly(ln.Addr()))
	s := &Server{
		ln:   ln,
		done: make(chan struct{}),
		srv: &http.Server{
			Handler:           ln.handler,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      60 * time.Second, // a pprof profile takes 30 s
			IdleTimeout:       IdleTimeout,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slogErrorLog{opt.Logger}.logger(),
		},
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && opt.Logger != nil {
			opt.Logger.Error("admin listener stopped", "address", ln.Addr().String(), "error", err.Error())
		}
	}()
	return s, nil
}

// activeConnections counts the proxies' open connections.
func activeConnections(src Source) int64 {
	var n int64
	for _, v := range src.Proxies() {
		n += v.Proxy.Stats.Active.Load()
	}
	return n
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Dup returns a duplicate of the listening socket's descriptor, for a pj
// that takes over (an upgrade). The caller owns it.
func (s *Server) Dup() (int, error) {
	fd := -1
	var derr error
	if err := s.ln.rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	return fd, nil
}

// Close stops the listener, letting requests in flight finish briefly.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close() // the requests in flight did not finish in time
	}
	<-s.done
}

// terminated lists the routes that terminate TLS, for the TLS metrics.
func terminated(src Source) []tlsproxy.Terminated {
	var out []tlsproxy.Terminated
	for _, v := range src.Proxies() {
		for _, r := range v.Proxy.Routes {
			if r.TLS != nil && r.TLS.Terminate != nil {
				out = append(out, tlsproxy.Terminated{Proxy: v.Proxy.Name, Terminator: r.TLS.Terminate})
			}
		}
	}
	return out
}

package certs

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/netutil"

	"github.com/pj-proxy/pj/internal/evloop"
)

// The HTTP listeners of ACME's http-01 challenge, by address. Several ACME
// clients may share one (every route of a proxy on port 80, and a client
// and its replacement during a reload), so a listener is bound by the
// first client that needs it and closed when the last one lets go: a
// reload that keeps the address never closes and binds it again.
var challengeListeners = struct {
	sync.Mutex
	by map[string]*challengeListener
}{by: map[string]*challengeListener{}}

// challengeListener answers http-01 challenges for the clients that share
// it, and redirects every other request to https.
type challengeListener struct {
	addr    string
	srv     *http.Server
	clients []*ACME // in the order they joined: the newest wins a name
	done    chan struct{}
}

// Bounds of a challenge listener: the CA makes a few requests per order,
// and anyone else gets a redirect; neither needs more.
const (
	challengeMaxConns    = 256
	challengeTimeout     = 10 * time.Second
	challengeIdleTimeout = 30 * time.Second
	challengeMaxHeader   = 8 << 10
)

// joinChallengeListener makes a answer http-01 challenges on addr, binding
// it if no other client does yet.
func joinChallengeListener(addr string, a *ACME) error {
	challengeListeners.Lock()
	defer challengeListeners.Unlock()
	if cl := challengeListeners.by[addr]; cl != nil {
		cl.clients = append(cl.clients, a)
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("tls acme http_listen %s: %w%s", addr, evloop.UnwrapOp(err), bindHint(err))
	}
	cl := &challengeListener{addr: addr, clients: []*ACME{a}, done: make(chan struct{})}
	cl.srv = &http.Server{
		Handler:           http.HandlerFunc(cl.serveHTTP),
		ReadHeaderTimeout: challengeTimeout,
		ReadTimeout:       challengeTimeout,
		WriteTimeout:      challengeTimeout,
		IdleTimeout:       challengeIdleTimeout,
		MaxHeaderBytes:    challengeMaxHeader,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	challengeListeners.by[addr] = cl
	go func() {
		defer close(cl.done)
		_ = cl.srv.Serve(netutil.LimitListener(ln, challengeMaxConns))
	}()
	a.log.Info("answering ACME http-01 challenges", "address", ln.Addr().String())
	return nil
}

// leaveChallengeListener stops a answering on addr; the last client to
// leave closes the listener and waits until it is closed.
func leaveChallengeListener(addr string, a *ACME) {
	challengeListeners.Lock()
	cl := challengeListeners.by[addr]
	if cl == nil {
		challengeListeners.Unlock()
		return
	}
	cl.clients = slices.DeleteFunc(cl.clients, func(c *ACME) bool { return c == a })
	if len(cl.clients) > 0 {
		challengeListeners.Unlock()
		return
	}
	delete(challengeListeners.by, addr)
	challengeListeners.Unlock()
	_ = cl.srv.Close() // closes the listener and every connection
	<-cl.done
}

// serveHTTP hands a request to the clients whose domains include the
// request's host, newest first. A challenge goes to the first that holds
// its token (two proxies may obtain certificates for the same name, each
// with tokens of its own); anything else is redirected to https. A host no
// client has gets the newest client's answer: a refusal for a challenge, a
// redirect otherwise.
func (cl *challengeListener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	challengeListeners.Lock()
	var chosen []*ACME
	for _, c := range slices.Backward(cl.clients) {
		if c.covers(host) {
			chosen = append(chosen, c)
		}
	}
	if len(chosen) == 0 && len(cl.clients) > 0 {
		chosen = cl.clients[len(cl.clients)-1:]
	}
	challengeListeners.Unlock()
	switch {
	case len(chosen) == 0: // closing
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	case len(chosen) == 1 || !strings.HasPrefix(r.URL.Path, challengePath):
		chosen[0].httpHandler.ServeHTTP(w, r)
		return
	}
	// A token's answer is a few hundred bytes: try each client in turn.
	var rec *httptest.ResponseRecorder
	for _, c := range chosen {
		rec = httptest.NewRecorder()
		c.httpHandler.ServeHTTP(rec, r)
		if rec.Code == http.StatusOK {
			break
		}
	}
	maps.Copy(w.Header(), rec.Header())
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// challengePath is where the CA asks for http-01 tokens (RFC 8555, 8.3).
const challengePath = "/.well-known/acme-challenge/"

// bindHint says what to do about a listener that cannot be bound.
func bindHint(err error) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return " (another process, or one of pj's proxies, listens there: an http-01 listener needs the port to itself)"
	case errors.Is(err, syscall.EACCES):
		return " (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability)"
	}
	return ""
}

// Package pjtest runs pj's server in-process for tests: one way to build a
// proxy and one way to serve a configuration, for every package whose
// tests need a running pj.
package pjtest

import (
	"context"
	"log/slog"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
)

// Proxy is a proxy named name ("" names it after its address) listening on
// listen and relaying to backends (weight 1 each), with the built-in
// settings.
func Proxy(name, listen string, backends ...string) config.Proxy {
	p := config.Proxy{Name: name, Listen: listen, Settings: config.Default().Defaults}
	for _, b := range backends {
		p.Backends = append(p.Backends, config.Backend{Address: b, Weight: 1})
	}
	return p
}

// Routed is a proxy named name listening on listen whose connections go
// to routes, with the built-in settings: each route's are the proxy's.
func Routed(name, listen string, routes ...config.Route) config.Proxy {
	p := config.Proxy{Name: name, Listen: listen, Settings: config.Default().Defaults}
	for _, r := range routes {
		r.Settings = p.Settings
		p.Routes = append(p.Routes, r)
	}
	return p
}

// Route is a route named name that takes what m matches to backends
// (weight 1 each).
func Route(name string, m config.Match, backends ...string) config.Route {
	r := config.Route{Name: name, Match: m}
	for _, b := range backends {
		r.Backends = append(r.Backends, config.Backend{Address: b, Weight: 1})
	}
	return r
}

// Config is the built-in configuration with proxies.
func Config(proxies ...config.Proxy) config.Config {
	c := config.Default()
	c.Proxies = proxies
	return c
}

// Server is a pj server serving in-process.
type Server struct {
	*server.Server
	// Log is its logger, which writes to Logs in pj's text format at
	// level info.
	Log     *slog.Logger
	Logs    *testutil.Buffer
	cancel  context.CancelFunc
	stopped chan struct{}
	err     error // what Serve returned, once stopped is closed
}

// Start validates cfg and serves it until the test ends, or until Stop.
// opt's Logger is replaced by one writing to Logs.
func Start(t testing.TB, cfg config.Config, opt server.Options) *Server {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := new(testutil.Buffer)
	log, err := observe.NewLogger(logs, "text", "info")
	if err != nil {
		t.Fatal(err)
	}
	opt.Logger = log
	srv, err := server.New(cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Server: srv, Log: log, Logs: logs, cancel: cancel, stopped: make(chan struct{})}
	go func() {
		defer close(s.stopped)
		s.err = srv.Serve(ctx)
	}()
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			t.Logf("pj's log:\n%s", logs)
		}
	})
	return s
}

// Shutdown begins the shutdown SIGTERM begins: the server stops accepting
// and lets connections finish for the grace period.
func (s *Server) Shutdown() { s.cancel() }

// Stopped is closed once the server has shut down.
func (s *Server) Stopped() <-chan struct{} { return s.stopped }

// Stop shuts the server down, waits, and returns what Serve returned.
func (s *Server) Stop() error {
	s.cancel()
	<-s.stopped
	return s.err
}

// Addr is the bound address of the i-th proxy, as HOST:PORT.
func (s *Server) Addr(i int) string { return s.Addrs()[i].String() }

// Package pjtest runs pj's server in-process for tests: one way to serve
// a configuration (built with pjconf), for every package whose tests need
// a running pj.
package pjtest

import (
	"context"
	"log/slog"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

// The configuration builders, under this package's name too, so that a
// test that serves pj needs one import.
var (
	Proxy  = pjconf.Proxy
	Routed = pjconf.Routed
	Route  = pjconf.Route
	Config = pjconf.Config
)

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

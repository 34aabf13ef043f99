package server_test

import (
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// TestReloadKeepsAPoolAndClosesRemovedBackends: a reload that changes
// a pooled proxy's other settings and removes one backend keeps the warm
// connections of the backend that stays and closes the removed one's;
// shutdown closes the rest.
func TestReloadKeepsAPoolAndClosesRemovedBackends(t *testing.T) {
	a, b := testutil.StartCounted(t, nil), testutil.StartCounted(t, nil)
	p := pjconf.Proxy("db", testutil.ClosedAddr(t), a.Addr, b.Addr)
	p.Pool.Size = 2
	p.HealthCheck.Interval = 0
	srv := pjtest.Start(t, cfgOf(time.Second, p), server.Options{})
	idle := func(i int) int {
		r := srv.Proxies()[0].Proxy.Routes[0]
		return r.Warm.Idle(r.Pool().Backends()[i].Address)
	}
	testutil.WaitFor(t, 10*time.Second, "both pools to fill", func() bool { return idle(0) == 2 && idle(1) == 2 })

	p.IdleTimeout = time.Minute
	p.Backends = p.Backends[:1]
	if _, err := srv.Reload(cfgOf(time.Second, p)); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the removed backend's warm connections to be closed", func() bool { return b.Ended.Load() == 2 })
	if n := idle(0); n != 2 {
		t.Errorf("the kept backend has %d warm connections after the reload, want the same 2", n)
	}
	if n, c := a.Accepted.Load(), a.Ended.Load(); n != 2 || c != 0 {
		t.Errorf("the kept backend accepted %d and saw %d closed; want 2 and 0", n, c)
	}

	// A changed pool starts afresh.
	p.Pool.MaxAge = time.Hour
	if _, err := srv.Reload(cfgOf(time.Second, p)); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the old pool's connections to be replaced", func() bool {
		return a.Ended.Load() == 2 && a.Accepted.Load() == 4 && idle(0) == 2
	})

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "shutdown to close every warm connection", func() bool { return a.Ended.Load() == 4 })
}

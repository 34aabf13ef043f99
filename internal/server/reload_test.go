package server_test

import (
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

func cfgOf(grace time.Duration, proxies ...config.Proxy) config.Config {
	c := config.Default()
	c.GracePeriod = grace
	c.Proxies = proxies
	return c
}

// startOne serves one proxy, named name, on a reserved loopback address,
// to backends, set up by change, with a minute's grace. It returns the
// server and the proxy's address.
func startOne(t *testing.T, name string, change func(*config.Proxy), backends ...string) (*pjtest.Server, string) {
	t.Helper()
	x := testutil.ClosedAddr(t)
	p := pjtest.Proxy(name, x, backends...)
	change(&p)
	return pjtest.Start(t, cfgOf(time.Minute, p), server.Options{}), x
}

func TestReloadRefusesNothingAndCutsNothing(t *testing.T) {
	a1, a2 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2")
	echo := testutil.StartEcho(t)
	x, y, z := testutil.ClosedAddr(t), testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	r := pjtest.Start(t, cfgOf(time.Minute, pjconf.Proxy("web", x, a1), pjconf.Proxy("legacy", y, echo)), server.Options{})

	// A long connection through the proxy that will be removed.
	long := testutil.Dial(t, y)
	if got := testutil.RoundTrip(t, long, "before"); got != "before" {
		t.Fatal(got)
	}

	// A bounded client loop hammers the listener that stays, while the
	// configuration changes under it several times.
	const clients, perClient = 4, 150
	var (
		wg       sync.WaitGroup
		failures []error
		mu       sync.Mutex
		answers  = map[string]int{}
	)
	for range clients {
		wg.Go(func() {
			for range perClient {
				got, err := testutil.Ask(x)
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					answers[got]++
				}
				mu.Unlock()
			}
		})
	}
	next := cfgOf(time.Minute, pjconf.Proxy("web", x, a2), pjconf.Proxy("cache", z, echo))
	what, err := r.Reload(next)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"+1 proxy (cache)", "-1 proxy (legacy)", "web: backends changed"} {
		if !strings.Contains(what, want) {
			t.Errorf("reload said %q, want %q in it", what, want)
		}
	}
	for i := range 5 { // flip the backend a few more times mid-hammer
		b := a2 // the last of the five is a2
		if i%2 == 1 {
			b = a1
		}
		if _, err := r.Reload(cfgOf(time.Minute, pjconf.Proxy("web", x, b), pjconf.Proxy("cache", z, echo))); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed during reloads; first: %v", len(failures), clients*perClient, failures[0])
	}
	if answers["a1"]+answers["a2"] != clients*perClient {
		t.Fatalf("answers %v", answers)
	}

	// After the last reload: web goes to a2, cache works, legacy refuses.
	if got, err := testutil.Ask(x); err != nil || got != "a2" {
		t.Fatalf("web answered %q, %v; want a2", got, err)
	}
	c := testutil.Dial(t, z)
	if got := testutil.RoundTrip(t, c, "new"); got != "new" {
		t.Fatalf("cache answered %q", got)
	}
	if nc, err := net.DialTimeout("tcp", y, time.Second); err == nil {
		_ = nc.Close()
		t.Fatal("the removed proxy still accepts")
	}
	// The long connection of the removed proxy goes on.
	if got := testutil.RoundTrip(t, long, "after"); got != "after" {
		t.Fatalf("the established connection broke: %q", got)
	}
	if ok, failed := r.Reloads(); ok != 6 || failed != 0 {
		t.Fatalf("reloads ok=%d failed=%d, want 6 and 0", ok, failed)
	}
}

func TestReloadUnchangedIsANoop(t *testing.T) {
	x := testutil.ClosedAddr(t)
	cfg := cfgOf(time.Minute, pjconf.Proxy("web", x, testutil.Identify(t, "a")))
	r := pjtest.Start(t, cfg, server.Options{})
	before := r.Addrs()
	again := cfgOf(time.Minute, pjconf.Proxy("web", x, cfg.Proxies[0].Backends[0].Address))
	what, err := r.Reload(again)
	if err != nil || what != "no changes" {
		t.Fatalf("Reload = %q, %v; want no changes", what, err)
	}
	if after := r.Addrs(); after[0] != before[0] {
		t.Fatalf("listener replaced: %v → %v", before, after)
	}
}

func TestReloadThatCannotBindChangesNothing(t *testing.T) {
	x, fresh := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	busy := testutil.Listen(t, "tcp4").Addr().String()
	r := pjtest.Start(t, cfgOf(time.Minute, pjconf.Proxy("web", x, testutil.Identify(t, "old"))), server.Options{})
	bad := cfgOf(time.Minute,
		pjconf.Proxy("web", x, testutil.Identify(t, "new")),
		pjconf.Proxy("fresh", fresh, testutil.Identify(t, "fresh")),
		pjconf.Proxy("clash", busy, testutil.Identify(t, "clash")))
	if _, err := r.Reload(bad); err == nil || !strings.Contains(err.Error(), busy) || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("Reload = %v; want a failure naming %s", err, busy)
	}
	if got, err := testutil.Ask(x); err != nil || got != "old" {
		t.Fatalf("web answered %q, %v; the old configuration must go on", got, err)
	}
	// The address bound before the failure was released again.
	ln, err := net.Listen("tcp4", fresh)
	if err != nil {
		t.Fatalf("%s is still bound after the failed reload: %v", fresh, err)
	}
	_ = ln.Close()
	if ok, failed := r.Reloads(); ok != 0 || failed != 1 {
		t.Fatalf("reloads ok=%d failed=%d", ok, failed)
	}
}

func TestRemovedProxyIsCutAfterTheGracePeriod(t *testing.T) {
	x, y := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	echo := testutil.StartEcho(t)
	r := pjtest.Start(t, cfgOf(50*time.Millisecond, pjconf.Proxy("stays", x, echo), pjconf.Proxy("goes", y, echo)), server.Options{})
	stays, goes := testutil.Dial(t, x), testutil.Dial(t, y)
	for _, c := range []net.Conn{stays, goes} {
		if got := testutil.RoundTrip(t, c, "hi"); got != "hi" {
			t.Fatal(got)
		}
	}
	if _, err := r.Reload(cfgOf(50*time.Millisecond, pjconf.Proxy("stays", x, echo))); err != nil {
		t.Fatal(err)
	}
	_ = goes.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(goes); err != nil || len(b) != 0 {
		t.Fatalf("read %q, %v: want EOF once the grace period is over", b, err)
	}
	if got := testutil.RoundTrip(t, stays, "still"); got != "still" {
		t.Fatalf("the connection of the proxy that stays broke: %q", got)
	}
}

func TestBackendStateSurvivesReload(t *testing.T) {
	x := testutil.ClosedAddr(t)
	a, b := testutil.Identify(t, "a"), testutil.Identify(t, "b")
	r := pjtest.Start(t, cfgOf(time.Minute, pjconf.Proxy("web", x, a)), server.Options{})
	for range 3 {
		if _, err := testutil.Ask(x); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Reload(cfgOf(time.Minute, pjconf.Proxy("web", x, a, b))); err != nil {
		t.Fatal(err)
	}
	totals := map[string]uint64{}
	for _, be := range r.Proxies()[0].Proxy.Backends() {
		totals[be.Address] = be.Total.Load()
	}
	if totals[a] != 3 || totals[b] != 0 {
		t.Fatalf("totals after reload %v: want %s to keep its 3 connections", totals, a)
	}
}

// A reload while the DNS service is out keeps a kept proxy's backends at
// their last resolved addresses, as a failed refresh does, instead of
// turning them into backends that fail every connection.
func TestReloadDuringADNSOutageKeepsTheLastAddresses(t *testing.T) {
	dns := testutil.StartDNS(t)
	ln := testutil.IdentifyListener(t, "web")
	port := ln.Addr().(*net.TCPAddr).Port
	dns.SetIPs("web.pj.test", "127.0.0.1")
	dns.SetIPs("srv-target.pj.test", "127.0.0.1")
	dns.SetSRV("_web._tcp.pj.test", net.SRV{Target: "srv-target.pj.test", Port: uint16(port), Priority: 1, Weight: 1})

	for _, name := range []string{"web.pj.test:" + itoa(port), "_web._tcp.pj.test"} {
		t.Run(name, func(t *testing.T) {
			x := testutil.ClosedAddr(t)
			p := pjconf.Proxy("web", x, name)
			p.Resolver = dns.Addr
			p.HealthCheck.Interval = 0
			r := pjtest.Start(t, cfgOf(time.Minute, p), server.Options{})
			if got, err := testutil.Ask(x); err != nil || got != "web" {
				t.Fatalf("before the outage: %q, %v", got, err)
			}

			dns.SetFailing(true)
			t.Cleanup(func() { dns.SetFailing(false) })
			p.ConnectTimeout = 3 * time.Second // a change to the proxy: it is rebuilt
			if _, err := r.Reload(cfgOf(time.Minute, p)); err != nil {
				t.Fatal(err)
			}
			bs := r.Proxies()[0].Proxy.Backends()
			if len(bs) != 1 || bs[0].Err != nil || bs[0].Address != "127.0.0.1:"+itoa(port) {
				t.Fatalf("backends after a reload during the outage: %+v, want 127.0.0.1:%d as before", bs, port)
			}
			if got, err := testutil.Ask(x); err != nil || got != "web" {
				t.Fatalf("after a reload during the outage: %q, %v", got, err)
			}
			r.Logs.WaitLines(t, "keeping its last known addresses", 1)
		})
	}
}

// A reload that changes only what no proxy uses (the log level) leaves
// every proxy's runtime alone: same pool, same backend set, no lookup,
// no health check restarted.
func TestReloadOfTheLogLevelTouchesNoPool(t *testing.T) {
	dns := testutil.StartDNS(t)
	ln := testutil.IdentifyListener(t, "web")
	dns.SetIPs("web.pj.test", "127.0.0.1")
	x, y := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	p := pjconf.Proxy("web", x, "web.pj.test:"+itoa(ln.Addr().(*net.TCPAddr).Port))
	p.Resolver = dns.Addr
	other := pjconf.Proxy("other", y, ln.Addr().String())
	cfg := cfgOf(time.Minute, p, other)
	r := pjtest.Start(t, cfg, server.Options{})
	before := map[string]*proxy.Proxy{}
	pools := map[string]*balance.Pool{}
	for _, v := range r.Proxies() {
		before[v.Proxy.Name], pools[v.Proxy.Name] = v.Proxy, v.Proxy.Routes[0].Pool()
	}
	queries := dns.Queries()

	cfg.Log.Level = "debug"
	what, err := r.Reload(cfg)
	if err != nil || !strings.Contains(what, "log changed") {
		t.Fatalf("Reload = %q, %v", what, err)
	}
	// And a change to one proxy leaves the other alone too.
	cfg.Proxies = slices.Clone(cfg.Proxies) // the running configuration shares the array
	cfg.Proxies[1].ConnectTimeout = 3 * time.Second
	if _, err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for _, v := range r.Proxies() {
		if v.Proxy.Name == "other" {
			if v.Proxy == before["other"] {
				t.Errorf("the changed proxy was not rebuilt")
			}
			continue
		}
		if v.Proxy != before[v.Proxy.Name] || v.Proxy.Routes[0].Pool() != pools[v.Proxy.Name] {
			t.Errorf("proxy %s was rebuilt by a reload that did not change it", v.Proxy.Name)
		}
	}
	if n := dns.Queries(); n != queries {
		t.Errorf("%d DNS queries during reloads that changed no name", n-queries)
	}
	if got, err := testutil.Ask(x); err != nil || got != "web" {
		t.Fatalf("after the reloads: %q, %v", got, err)
	}
}

// A reload that changes a proxy's routes serves new connections by the
// new routes at once; a route that keeps its name keeps its backends'
// health and administrative state, and its counters.
func TestReloadOfRoutesKeepsTheStateOfRoutesThatStay(t *testing.T) {
	x := testutil.ClosedAddr(t)
	ssh, rest, web := testutil.StartEcho(t), testutil.StartEcho(t), testutil.StartEcho(t)
	before := pjconf.Routed("edge", x,
		pjconf.Route("ssh", config.Match{Protocol: "ssh"}, ssh),
		pjconf.Route("rest", config.Match{}, rest))
	r := pjtest.Start(t, cfgOf(time.Minute, before), server.Options{})
	if got := testutil.SendAndRead(t, x, "SSH-2.0-x\r\n"); got != "SSH-2.0-x\r\n" {
		t.Fatalf("through route ssh: %q", got)
	}
	if err := r.SetBackendState("edge", ssh, balance.AdminDrain); err != nil {
		t.Fatal(err)
	}
	after := pjconf.Routed("edge", x,
		pjconf.Route("ssh", config.Match{Protocol: "ssh"}, ssh),
		pjconf.Route("web", config.Match{Protocol: "http"}, web),
		pjconf.Route("rest", config.Match{}, rest))
	what, err := r.Reload(cfgOf(time.Minute, after))
	if err != nil || !strings.Contains(what, "edge: routes changed") {
		t.Fatalf("reload: %q, %v", what, err)
	}
	p := r.Proxies()[0].Proxy
	if len(p.Routes) != 3 || p.Routes[1].Name != "web" {
		t.Fatalf("routes after reload: %d", len(p.Routes))
	}
	b := p.Routes[0].Pool().Backends()[0]
	if b.StateName() != "drain" || b.Total.Load() != 1 || p.Routes[0].Taken.Load() != 1 {
		t.Fatalf("route ssh's backend after reload: %s, %d connections, route took %d; want drain, 1, 1",
			b.StateName(), b.Total.Load(), p.Routes[0].Taken.Load())
	}
	// The drained backend takes no new client: route ssh has nothing
	// left, so an SSH client is closed; an HTTP client takes the new route.
	if got := testutil.SendAndRead(t, x, "GET / HTTP/1.0\r\n\r\n"); got != "GET / HTTP/1.0\r\n\r\n" {
		t.Fatalf("through the new route web: %q", got)
	}
	if got := testutil.SendAndRead(t, x, "SSH-2.0-y\r\n"); got != "" {
		t.Fatalf("through route ssh, whose only backend is drained: %q", got)
	}
	r.Logs.WaitLines(t, "route=web", 1)
	r.Logs.WaitLines(t, "[no_backend]", 1)
}

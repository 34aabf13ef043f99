package server_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// checked is a proxy with fast active health checks.
func checked(p config.Proxy, send, expect string) config.Proxy {
	p.HealthCheck = config.HealthCheck{Interval: 40 * time.Millisecond, Timeout: 200 * time.Millisecond,
		Rise: 2, Fall: 3, Send: send, Expect: expect, Explicit: true}
	return p
}

// askMany asks addr n times and counts the answers; any failure fails
// the test.
func askMany(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for i := range n {
		got, err := testutil.Ask(addr)
		if err != nil {
			t.Fatalf("connection %d of %d failed: %v", i+1, n, err)
		}
		counts[got]++
	}
	return counts
}

func stateOf(r *pjtest.Server, proxy, backend string) string {
	for _, v := range r.Proxies() {
		if v.Proxy.Name != proxy {
			continue
		}
		for _, b := range v.Proxy.Backends() {
			if b.Address == backend {
				return b.StateName()
			}
		}
	}
	return "missing"
}

// activeOn is the number of connections the backends of proxy carry.
func activeOn(r *pjtest.Server, proxy string) int64 {
	var n int64
	for _, v := range r.Proxies() {
		if v.Proxy.Name == proxy {
			for _, b := range v.Proxy.Backends() {
				n += b.Active.Load()
			}
		}
	}
	return n
}

func TestHealthChecksTakeABackendOutAndBringItBack(t *testing.T) {
	lnA := testutil.IdentifyListener(t, "a")
	a := lnA.Addr().String()
	b := testutil.Identify(t, "b")
	x := testutil.ClosedAddr(t)
	r := pjtest.Start(t, cfgOf(time.Minute, checked(pjtest.Proxy("web", x, a, b), "", "")), server.Options{})

	if got := askMany(t, x, 4); got["a"] != 2 || got["b"] != 2 {
		t.Fatalf("answers %v, want a and b in turn", got)
	}
	_ = lnA.Close() // a dies
	line := r.Logs.WaitLines(t, "backend "+a+" of web is down", 1)[0]
	if !strings.Contains(line, "connect: connection refused (3 of 3 checks failed)") {
		t.Fatalf("down line %q does not say why", line)
	}
	if got := stateOf(r, "web", a); got != "down" {
		t.Fatalf("API state %q", got)
	}
	if got := askMany(t, x, 6); got["b"] != 6 {
		t.Fatalf("answers %v while a is down, want only b", got)
	}

	// a comes back on the same address: up again after rise (2) checks.
	again, err := net.Listen("tcp4", a)
	if err != nil {
		t.Fatalf("listen again on %s: %v", a, err)
	}
	t.Cleanup(func() { _ = again.Close() })
	testutil.Serve(t, again, func(c net.Conn) { _, _ = io.WriteString(c, "a") })
	line = r.Logs.WaitLines(t, "backend "+a+" of web is up", 1)[0]
	if !strings.Contains(line, "2 of 2 checks passed") {
		t.Fatalf("up line %q", line)
	}
	if got := askMany(t, x, 4); got["a"] != 2 {
		t.Fatalf("answers %v after a came back, want a in turn again", got)
	}
	if n := len(r.Logs.Lines("of web is down")); n != 1 {
		t.Fatalf("%d down lines: a state change is logged once", n)
	}
}

func TestNoClientFailsWhileOneOfThreeBackendsIsDead(t *testing.T) {
	dead := testutil.ClosedAddr(t)
	b, c := testutil.Identify(t, "b"), testutil.Identify(t, "c")
	r, x := startOne(t, "web", func(p *config.Proxy) {
		p.HealthCheck.Interval = 0 // passive checks only
	}, b, dead, c)
	const clients, each = 4, 50
	var wg sync.WaitGroup
	errs := make(chan error, clients*each)
	for range clients {
		wg.Go(func() {
			for range each {
				if _, err := testutil.Ask(x); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a client saw a failure: %v", err)
	}
	// Failed connects counted towards fall: the dead backend is out.
	line := r.Logs.WaitLines(t, "backend "+dead+" of web is down", 1)[0]
	if !strings.Contains(line, "3 connection attempts in a row failed") {
		t.Fatalf("line %q", line)
	}
}

func TestBackupsOnlyWhenNoPrimaryIsHealthy(t *testing.T) {
	lnA := testutil.IdentifyListener(t, "a")
	a := lnA.Addr().String()
	spare := testutil.Identify(t, "spare")
	x := testutil.ClosedAddr(t)
	p := checked(pjtest.Proxy("web", x, a, spare), "", "")
	p.Backends[1].Backup = true
	r := pjtest.Start(t, cfgOf(time.Minute, p), server.Options{})
	failOver(t, r, x, "web", lnA, "a")
}

// failOver has the proxy's address x answered by primary alone (the
// backend behind ln) while it is up, and by the backup "spare" alone once
// ln is closed and the proxy has seen primary go down.
func failOver(t *testing.T, r *pjtest.Server, x, proxy string, ln net.Listener, primary string) {
	t.Helper()
	if got := askMany(t, x, 4); got[primary] != 4 {
		t.Fatalf("answers %v: want only %s while it is up; a backup is not used then", got, primary)
	}
	_ = ln.Close()
	r.Logs.WaitLines(t, "of "+proxy+" is down", 1)
	if got := askMany(t, x, 4); got["spare"] != 4 {
		t.Fatalf("answers %v with %s down, want the backup", got, primary)
	}
}

// redis answers PING with +PONG, like the server the send/expect check
// is modelled on; bad answers -ERR.
func redis(t *testing.T, reply string) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && line == "PING\r\n" {
			_, _ = io.WriteString(c, reply)
		}
	})
	return ln.Addr().String()
}

func TestSendExpectAndTheLastResort(t *testing.T) {
	good, bad := redis(t, "+PONG\r\n"), redis(t, "-ERR not ready\r\n")
	x, y := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	r := pjtest.Start(t, cfgOf(time.Minute,
		checked(pjtest.Proxy("cache", x, good, bad), "PING\r\n", "+PONG"),
		checked(pjtest.Proxy("broken", y, bad), "PING\r\n", "+PONG")), server.Options{})
	line := r.Logs.WaitLines(t, "backend "+bad+" of cache is down", 1)[0]
	if !strings.Contains(line, `expect: the reply "-ERR`) || !strings.Contains(line, `does not start with "+PONG"`) {
		t.Fatalf("down line %q does not say what was wrong", line)
	}
	if got := stateOf(r, "cache", good); got != "up" {
		t.Fatalf("the good backend is %s", got)
	}
	// Every backend of "broken" fails its checks, yet it accepts
	// connections: as a last resort (checks can be wrong) pj still tries
	// it, and the client gets through.
	r.Logs.WaitLines(t, "of broken is down", 1)
	c := testutil.Dial(t, y)
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := bufio.NewReader(c).ReadString('\n'); err != nil || got != "-ERR not ready\r\n" {
		t.Fatalf("last resort: read %q, %v", got, err)
	}
}

func TestDNSChangesMoveConnections(t *testing.T) {
	dns := testutil.StartDNS(t)
	// Two backends on the same port of two loopback addresses.
	one := testutil.Listen(t, "tcp4")
	port := one.Addr().(*net.TCPAddr).Port
	two, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.2", itoa(port)))
	if err != nil {
		t.Skipf("127.0.0.2 is not usable here: %v", err)
	}
	t.Cleanup(func() { _ = two.Close() })
	testutil.Serve(t, one, func(c net.Conn) { _, _ = io.WriteString(c, "one") })
	testutil.Serve(t, two, func(c net.Conn) { _, _ = io.WriteString(c, "two") })

	dns.SetIPs("web.pj.test", "127.0.0.1")
	x := testutil.ClosedAddr(t)
	p := pjtest.Proxy("web", x, "web.pj.test:"+itoa(port))
	p.Resolver = dns.Addr
	p.DNSRefresh = 30 * time.Millisecond
	r := pjtest.Start(t, cfgOf(time.Minute, p), server.Options{})
	if got := askMany(t, x, 3); got["one"] != 3 {
		t.Fatalf("answers %v, want one", got)
	}

	dns.SetIPs("web.pj.test", "127.0.0.2") // the record changes
	testutil.WaitFor(t, 10*time.Second, "connections to move to the new address", func() bool {
		got, err := testutil.Ask(x)
		return err == nil && got == "two"
	})
	r.Logs.WaitLines(t, "backends changed after a DNS lookup", 1)

	dns.SetIPs("web.pj.test", "127.0.0.1", "127.0.0.2") // scaled to two
	testutil.WaitFor(t, 10*time.Second, "both addresses to be backends", func() bool {
		got := askMany(t, x, 4)
		return got["one"] == 2 && got["two"] == 2
	})

	// The DNS server loses the name: the last answer is kept.
	dns.SetIPs("other.pj.test", "127.0.0.9")
	dns.Remove("web.pj.test")
	r.Logs.WaitLines(t, "backend lookup failed; keeping its last known addresses", 1)
	if got := askMany(t, x, 4); got["one"] != 2 || got["two"] != 2 {
		t.Fatalf("answers %v after a failed lookup; the pool must stay", got)
	}
}

func TestSRVRecordsGiveBackendsAndBackups(t *testing.T) {
	dns := testutil.StartDNS(t)
	lnMain := testutil.IdentifyListener(t, "main")
	spare := testutil.Identify(t, "spare")
	mainPort := lnMain.Addr().(*net.TCPAddr).Port
	_, sparePort, _ := net.SplitHostPort(spare)
	dns.SetIPs("main.pj.test", "127.0.0.1")
	dns.SetIPs("spare.pj.test", "127.0.0.1")
	dns.SetSRV("_app._tcp.pj.test",
		net.SRV{Target: "main.pj.test", Port: uint16(mainPort), Priority: 10, Weight: 5},
		net.SRV{Target: "spare.pj.test", Port: uint16(atoi(t, sparePort)), Priority: 20, Weight: 1})
	x := testutil.ClosedAddr(t)
	p := checked(pjtest.Proxy("app", x, "_app._tcp.pj.test"), "", "")
	p.Resolver = dns.Addr
	r := pjtest.Start(t, cfgOf(time.Minute, p), server.Options{})
	bs := r.Proxies()[0].Proxy.Backends()
	if len(bs) != 2 || bs[0].Weight != 5 || bs[0].Backup || !bs[1].Backup {
		t.Fatalf("backends from SRV: %+v", bs)
	}
	// The priority-10 target is the primary; the higher priority number
	// is a backup.
	failOver(t, r, x, "app", lnMain, "main")
}

func itoa(n int) string { return strconv.Itoa(n) }

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// An unknown balance name never reaches a running proxy as some other
// algorithm: configuration validation reports it, and a configuration
// that skipped validation is refused whole.
func TestUnknownBalanceIsRefusedAtStartAndReload(t *testing.T) {
	a := testutil.Identify(t, "a")
	x, y := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	bad := pjtest.Proxy("web", x, a)
	bad.Balance = "fastest"
	cfg := cfgOf(time.Second, bad)
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `balance "fastest"`) {
		t.Fatalf("Validate = %v, want the unknown balance named", err)
	}
	if s, err := server.New(cfg, server.Options{}); !errors.Is(err, balance.ErrUnknownBalance) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("New = %v, want ErrUnknownBalance", err)
	}
	if ln, err := net.Listen("tcp", x); err != nil {
		t.Fatalf("%s still bound after New failed: %v", x, err)
	} else {
		_ = ln.Close()
	}

	// At reload: a kept listener and a new one, both with the bad name.
	r := pjtest.Start(t, cfgOf(time.Second, pjtest.Proxy("web", x, a)), server.Options{})
	bad2 := pjtest.Proxy("api", y, a)
	bad2.Balance = "fastest"
	if _, err := r.Reload(cfgOf(time.Second, bad, bad2)); !errors.Is(err, balance.ErrUnknownBalance) {
		t.Fatalf("Reload = %v, want ErrUnknownBalance", err)
	}
	if got, err := testutil.Ask(x); err != nil || got != "a" {
		t.Fatalf("after the refused reload %s answers %q, %v", x, got, err)
	}
	if c, err := net.DialTimeout("tcp", y, time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("%s listens after a refused reload", y)
	}
}

// Over loopback, the case that showed the defect: with backends dead,
// the survivors share the connections evenly, not the one after the dead
// taking their turns too.
func TestSurvivorsShareEvenlyThroughTheProxy(t *testing.T) {
	for _, algorithm := range []string{config.RoundRobin, config.WeightedRoundRobin, config.LeastConn} {
		for _, down := range [][]int{{1}, {1, 2}, {3, 0}} {
			t.Run(fmt.Sprintf("%s/dead%v", algorithm, down), func(t *testing.T) {
				names := []string{"a", "b", "c", "d"}
				addrs := make([]string, len(names))
				dead := map[string]bool{}
				for i, n := range names {
					addrs[i] = testutil.Identify(t, n)
				}
				for _, i := range down {
					addrs[i] = testutil.ClosedAddr(t)
					dead[names[i]] = true
				}
				// Every connection counts: only the test's may come.
				x := testutil.SecludedAddr(t)
				p := checked(pjtest.Proxy("web", x, addrs...), "", "")
				p.Balance = algorithm
				r := pjtest.Start(t, cfgOf(time.Minute, p), server.Options{})
				for _, i := range down {
					r.Logs.WaitLines(t, "backend "+addrs[i]+" of web is down", 1)
				}
				survivors := len(names) - len(down)
				const rounds = 40
				got := map[string]int{}
				for i := range survivors * rounds {
					a, err := testutil.Ask(x)
					if err != nil {
						t.Fatalf("connection %d failed: %v", i+1, err)
					}
					got[a]++
					// The client has its answer before pj has seen the
					// client's end and released the backend: least-conn
					// would see that connection as load. Each connection
					// starts once pj has released the one before.
					testutil.WaitFor(t, 10*time.Second, "pj to release the backend", func() bool {
						return activeOn(r, "web") == 0
					})
				}
				for _, n := range names {
					want := rounds
					if dead[n] {
						want = 0
					}
					if got[n] != want {
						t.Fatalf("answers %v with %v dead, want %d each from the survivors", got, down, rounds)
					}
				}
			})
		}
	}
}

package admin

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
	tu "github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// startGreeter starts a backend that greets each connection with its
// number, as an SMTP or SSH server greets first, then echoes.
func startGreeter(t *testing.T) *tu.Counted {
	t.Helper()
	return tu.StartCounted(t, func(c net.Conn, n int64) {
		_, _ = io.WriteString(c, greeting(n))
		tu.Echo(c)
	})
}

func greeting(n int64) string { return "220 conn " + string(rune('0'+n%10)) + "\r\n" }

// The pool tests count connections and warm ones: each proxy listens on a
// secluded address, where no stray connection of another process takes a
// warm connection or, through, tells passive health the backend is up.

// TestPoolGreetingFirstAndCounted: a client through a pool gets the
// greeting its warm connection received before it came, then its own
// echo; the take is a hit; warm connections are not active ones; the API
// and the metrics show the pool.
func TestPoolGreetingFirstAndCounted(t *testing.T) {
	g := startGreeter(t)
	p := pjtest.Proxy("mail", tu.SecludedAddr(t), g.Addr)
	p.Balance = "least-conn"
	p.Pool.Size = 2
	pj := start(t, Options{}, p)
	addr := pj.srv.Addr(0)

	waitPool := func(n int) {
		t.Helper()
		tu.WaitFor(t, 10*time.Second, "the pool to fill", func() bool {
			b := pj.proxies(t).Proxies[0].Backends[0]
			return b.Pool != nil && b.Pool.Idle == n
		})
	}
	waitPool(2)
	b := pj.proxies(t).Proxies[0].Backends[0]
	if b.ActiveConnections != 0 || b.Pool.Size != 2 {
		t.Errorf("backend with 2 warm connections: active %d, pool size %d; want 0 and 2", b.ActiveConnections, b.Pool.Size)
	}
	if n := pj.srv.Proxies()[0].Proxy.Routes[0].Pool().Backends()[0].Active.Load(); n != 0 {
		t.Errorf("least-conn sees %d active connections, want 0: warm ones are not load", n)
	}

	c := tu.Dial(t, addr)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(greeting(1)))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if s := string(buf); s != greeting(1) && s != greeting(2) {
		t.Errorf("first bytes %q, want the greeting of a warm connection (1 or 2)", s)
	}
	if got := tu.RoundTrip(t, c, "EHLO x\r\n"); got != "EHLO x\r\n" {
		t.Errorf("echo %q", got)
	}
	waitPool(2) // refilled
	g.WaitAccepted(t, 3)
	fams := pj.metrics(t)
	if v := value(t, fams, "pj_pool_takes_total", map[string]string{"proxy": "mail", "result": "hit"}); v != 1 {
		t.Errorf("hits %v, want 1", v)
	}
	if v := value(t, fams, "pj_pool_takes_total", map[string]string{"proxy": "mail", "result": "miss"}); v != 0 {
		t.Errorf("misses %v, want 0", v)
	}
	if v := value(t, fams, "pj_pool_idle_connections", map[string]string{"proxy": "mail", "backend": g.Addr}); v != 2 {
		t.Errorf("idle %v, want 2", v)
	}
	if v := value(t, fams, "pj_backend_active_connections", map[string]string{"proxy": "mail", "backend": g.Addr}); v != 1 {
		t.Errorf("active %v, want 1: the client's, not the warm ones", v)
	}
}

// TestPoolClosedWarmConnectionNeverReachesAClient: the backend closes
// every warm connection; clients still get a live one (a fresh dial or a
// refilled one), greeting and all.
func TestPoolClosedWarmConnectionNeverReachesAClient(t *testing.T) {
	g := startGreeter(t)
	p := pjtest.Proxy("mail", tu.SecludedAddr(t), g.Addr)
	p.Pool.Size = 3
	pj := start(t, Options{}, p)
	tu.WaitFor(t, 10*time.Second, "the pool to fill", func() bool { return g.Accepted.Load() == 3 })
	tu.WaitFor(t, 10*time.Second, "the backend to hold 3", func() bool {
		return len(g.Conns()) == 3
	})
	for _, c := range g.Conns() {
		_ = c.Close()
	}
	for range 3 {
		c := tu.Dial(t, pj.srv.Addr(0))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, len(greeting(1)))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("a client got a closed warm connection: %v", err)
		}
		if got := tu.RoundTrip(t, c, "x"); got != "x" {
			t.Fatalf("echo %q", got)
		}
		_ = c.Close()
	}
}

// TestPoolMissDials: a backend that health checks marked down keeps no
// warm connection; tried as the last resort, it is dialled (a miss), and
// the client is served all the same.
func TestPoolMissDials(t *testing.T) {
	g := startGreeter(t)
	p := pjtest.Proxy("mail", tu.SecludedAddr(t), g.Addr)
	p.Pool.Size = 1
	pj := start(t, Options{}, p)
	tu.WaitFor(t, 10*time.Second, "the pool to fill", func() bool {
		return pj.proxies(t).Proxies[0].Backends[0].Pool.Idle == 1
	})
	be := pj.srv.Proxies()[0].Proxy.Routes[0].Pool().Backends()[0]
	be.Observe(balance.Result{Err: errors.New("check failed")}, 1, 1)
	tu.WaitFor(t, 10*time.Second, "the down backend's pool to empty", func() bool {
		return pj.proxies(t).Proxies[0].Backends[0].Pool.Idle == 0
	})
	c := tu.Dial(t, pj.srv.Addr(0))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(greeting(1)))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	// A fresh connection's greeting, not the warm one's (conn 1). Its
	// number is not asserted: the backend also counts any warm dial the
	// pool had under way as the backend went down, which the pool closes
	// when it completes.
	if got := string(buf); got == greeting(1) || !strings.HasPrefix(got, "220 conn ") {
		t.Errorf("greeting %q, want a fresh connection's, not the warm %q", got, greeting(1))
	}
	fams := pj.metrics(t)
	hit := value(t, fams, "pj_pool_takes_total", map[string]string{"proxy": "mail", "result": "hit"})
	miss := value(t, fams, "pj_pool_takes_total", map[string]string{"proxy": "mail", "result": "miss"})
	if hit != 0 || miss != 1 {
		t.Errorf("hits %v, misses %v; want 0 and 1", hit, miss)
	}
}

// TestPoolPerRoute: a route's pool serves that route alone; the other
// route of the proxy dials.
func TestPoolPerRoute(t *testing.T) {
	warmB, coldB := startGreeter(t), startGreeter(t)
	p := pjtest.Routed("edge", tu.SecludedAddr(t),
		pjtest.Route("local", config.Match{Source: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, warmB.Addr),
		pjtest.Route("rest", config.Match{}, coldB.Addr))
	p.Routes[0].Settings.Pool.Size = 1
	pj := start(t, Options{}, p)
	tu.WaitFor(t, 10*time.Second, "the route's pool to fill", func() bool {
		rs := pj.proxies(t).Proxies[0].Routes
		return rs[0].Backends[0].Pool != nil && rs[0].Backends[0].Pool.Idle == 1
	})
	if b := pj.proxies(t).Proxies[0].Routes[1].Backends[0]; b.Pool != nil || coldB.Accepted.Load() != 0 {
		t.Errorf("the route without a pool shows %+v and its backend accepted %d, want no pool and 0", b.Pool, coldB.Accepted.Load())
	}
	c := tu.Dial(t, pj.srv.Addr(0))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(greeting(1)))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != greeting(1) {
		t.Fatalf("read %q, %v; want the warm connection's greeting %q", buf, err, greeting(1))
	}
	if v := value(t, pj.metrics(t), "pj_pool_takes_total", map[string]string{"proxy": "edge", "result": "hit"}); v != 1 {
		t.Errorf("hits %v, want 1", v)
	}
}

// TestPoolBackendTLS: with backend_tls, the warm connection is through the
// handshake before the client comes: the client is served by the
// connection the backend greeted after its first handshake, and the
// backend had completed exactly that one when the client connected.
func TestPoolBackendTLS(t *testing.T) {
	ca := tu.NewCA(t, "backend ca")
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.KeyPair(t, tu.Leaf{Names: []string{"localhost"}, IPs: []string{"127.0.0.1"}})}}
	var handshakes atomic.Int64
	ln := tu.Listen(t, "tcp4")
	tu.ServeTLS(t, ln, cfg, func(tc *tls.Conn) {
		_, _ = io.WriteString(tc, greeting(handshakes.Add(1)))
		tu.Echo(tc)
	})
	p := pjtest.Proxy("db", tu.SecludedAddr(t), ln.Addr().String())
	p.BackendTLS = &config.BackendTLS{CA: tu.WriteFile(t, "ca.pem", string(ca.PEM))}
	p.Pool.Size = 1
	pj := start(t, Options{}, p)
	tu.WaitFor(t, 10*time.Second, "the pool to fill", func() bool {
		b := pj.proxies(t).Proxies[0].Backends[0]
		return b.Pool != nil && b.Pool.Idle == 1 && handshakes.Load() == 1
	})
	c := tu.Dial(t, pj.srv.Addr(0))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(greeting(1)))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != greeting(1) {
		t.Fatalf("read %q, %v; want the greeting after the handshake done ahead, %q", buf, err, greeting(1))
	}
	if got := tu.RoundTrip(t, c, "SELECT 1"); got != "SELECT 1" {
		t.Errorf("echo %q", got)
	}
	fams := pj.metrics(t)
	if v := value(t, fams, "pj_pool_takes_total", map[string]string{"proxy": "db", "result": "hit"}); v != 1 {
		t.Errorf("hits %v, want 1", v)
	}
	tu.WaitFor(t, 10*time.Second, "the pool to refill", func() bool {
		return pj.proxies(t).Proxies[0].Backends[0].Pool.Idle == 1 && handshakes.Load() == 2
	})
}

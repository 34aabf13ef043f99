package tlsproxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/certs"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/warm"
)

// greeter is a TLS backend that numbers the handshakes it completes and,
// right after each, greets with the number ("hello 3\n", before the client
// says anything, as an SMTP or MySQL server would), then echoes. It says
// "alpn=P;" first if a protocol was agreed.
type greeter struct {
	addr       string
	handshakes atomic.Int64
	mu         sync.Mutex
	conns      []*tls.Conn
}

func startGreeter(t *testing.T, cfg *tls.Config) *greeter {
	t.Helper()
	g := &greeter{}
	ln := testutil.Listen(t, "tcp4")
	g.addr = ln.Addr().String()
	testutil.ServeTLS(t, ln, cfg, func(tc *tls.Conn) {
		n := g.handshakes.Add(1)
		g.mu.Lock()
		g.conns = append(g.conns, tc)
		g.mu.Unlock()
		if p := tc.ConnectionState().NegotiatedProtocol; p != "" {
			_, _ = io.WriteString(tc, "alpn="+p+";")
		}
		_, _ = fmt.Fprintf(tc, "hello %d\n", n)
		_, _ = io.Copy(tc, tc)
		_ = tc.CloseWrite()
	})
	return g
}

// warmRoute is a route to g with backend TLS and a pool of size warm
// connections, filled before it returns.
func warmRoute(t *testing.T, g *greeter, size int, bp *pki) *Route {
	t.Helper()
	r := route(t, g.addr)
	r.Originate = dialer(t, certs.ClientOptions{CA: bp.caFile()})
	r.Warm = warm.New(r.Backends, warm.Settings{Size: size, MaxAge: time.Minute, ConnectTimeout: 5 * time.Second,
		Handshake: r.Originate.Ahead()}, &r.Stats.PoolHits, &r.Stats.PoolMisses, nil, nil)
	r.Warm.Start()
	t.Cleanup(r.Warm.Stop)
	testutil.WaitFor(t, 10*time.Second, "the pool to fill", func() bool {
		return r.Warm.Idle(g.addr) == size && g.handshakes.Load() == int64(size)
	})
	return r
}

func backendConfig(t *testing.T, bp *pki, alpn ...string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{bp.ca.KeyPair(t, testutil.Leaf{Names: []string{"localhost"}, IPs: []string{"127.0.0.1"}})},
		NextProtos: alpn}
}

// readLine reads up to a newline, within the connection's deadline.
func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	s, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read %q, then %v", s, err)
	}
	return s
}

func TestWarmTLSConnectionIsHandshakenAhead(t *testing.T) {
	bp := newPKI(t, "backend ca")
	g := startGreeter(t, backendConfig(t, bp))
	r := warmRoute(t, g, 1, bp)
	px := startProxy(t, r)

	// One handshake so far, and no client: the warm connection's. The
	// client is given that connection (the backend's first greeting,
	// sent before the client came, reaches it first), and its bytes
	// cross the handshake done ahead.
	c := testutil.Dial(t, px.addr)
	br := bufio.NewReader(c)
	if got := readLine(t, br); got != "hello 1\n" {
		t.Fatalf("the client's first bytes are %q, want the greeting of the connection handshaken ahead", got)
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, br); got != "ping\n" {
		t.Fatalf("echo %q", got)
	}
	if h, m := r.Stats.PoolHits.Load(), r.Stats.PoolMisses.Load(); h != 1 || m != 0 {
		t.Errorf("pool hits %d, misses %d; want 1 and 0", h, m)
	}
	// The pool handshakes a replacement, before any second client.
	testutil.WaitFor(t, 10*time.Second, "the pool to refill", func() bool {
		return r.Warm.Idle(g.addr) == 1 && g.handshakes.Load() == 2
	})
	_ = c.CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Errorf("after the half-close: %q, %v", rest, err)
	}
	wantFields(t, px.line(t, 1), "[ok]", "up=5 down=13")
}

func TestWarmTLSClosedByTheBackendIsNotGiven(t *testing.T) {
	bp := newPKI(t, "backend ca")
	g := startGreeter(t, backendConfig(t, bp))
	r := warmRoute(t, g, 1, bp)
	px := startProxy(t, r)

	// The backend ends the warm connection (close_notify, then FIN).
	g.mu.Lock()
	_ = g.conns[0].Close()
	g.mu.Unlock()
	// Whether the take finds it closed or a refill dropped it first, the
	// client is served by a live connection, never the closed one.
	c := testutil.Dial(t, px.addr)
	br := bufio.NewReader(c)
	if got := readLine(t, br); got == "hello 1\n" || !strings.HasPrefix(got, "hello ") {
		t.Fatalf("the client read %q, want the greeting of a connection after the first", got)
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, br); got != "ping\n" {
		t.Fatalf("echo %q", got)
	}
	_ = c.CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Errorf("after the half-close: %q, %v", rest, err)
	}
	wantFields(t, px.line(t, 1), "[ok]")
}

func TestWarmTLSIsNotUsedForANegotiatedProtocol(t *testing.T) {
	// The client agrees h2 with pj, which must offer it to the backend:
	// the warm connection's handshake offered nothing, so pj dials.
	p := newPKI(t, "ca")
	bp := newPKI(t, "backend ca")
	g := startGreeter(t, backendConfig(t, bp, "h2"))
	r := warmRoute(t, g, 1, bp)
	r.Terminate = p.app(certs.ServerOptions{ALPN: []string{"h2"}})
	px := startProxy(t, r)

	c := tlsDial(t, px.addr, &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool(), NextProtos: []string{"h2"}})
	if got := readLine(t, bufio.NewReader(c)); got != "alpn=h2;hello 2\n" {
		t.Fatalf("the backend said %q, want a new connection that agreed h2", got)
	}
	if n := r.Warm.Idle(g.addr); n != 1 {
		t.Errorf("%d warm connections idle, want the 1 no client could use", n)
	}
	if h, m := r.Stats.PoolHits.Load(), r.Stats.PoolMisses.Load(); h != 0 || m != 0 {
		t.Errorf("pool hits %d, misses %d; want no take at all", h, m)
	}
}

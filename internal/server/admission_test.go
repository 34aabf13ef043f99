package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// from dials addr from the loopback source address src, so that tests can
// play different clients (127.0.0.0/8 is all this machine's).
func from(t *testing.T, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// served reports whether c gets an echo of a byte before its deadline; a
// refused client reads EOF at once.
func served(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "?"); err != nil {
		return false
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err == nil
}

// countingEcho is an echo server that counts the connections it accepted.
func countingEcho(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		n.Add(1)
		testutil.Echo(c)
	})
	return ln.Addr().String(), &n
}

func TestAllowDeny(t *testing.T) {
	echo, reached := countingEcho(t)
	r, x := startOne(t, "web", func(p *config.Proxy) {
		p.Allow = testutil.Prefixes("127.0.0.0/29")
		p.Deny = testutil.Prefixes("127.0.0.3/32")
	}, echo)
	for _, tc := range []struct {
		src  string
		want bool
	}{
		{"127.0.0.2", true},  // allowed
		{"127.0.0.3", false}, // allowed, but denied: deny wins
		{"127.0.0.9", false}, // not allowed
	} {
		if got := served(t, from(t, tc.src, x)); got != tc.want {
			t.Errorf("client %s served = %v, want %v", tc.src, got, tc.want)
		}
	}
	r.Logs.WaitLines(t, "[denied]", 2)
	lines := r.Logs.Lines("] 127.0.0.3:")
	if len(lines) != 1 || !strings.Contains(lines[0], "-> - [denied]") ||
		!strings.Contains(lines[0], "up=0 down=0") || !strings.Contains(lines[0], "allow/deny") {
		t.Fatalf("denied lines %q: want one for 127.0.0.3 with no backend, no bytes, the reason", lines)
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("the backend saw %d connections; a denied client must not reach it", n)
	}
}

func TestDualStackListenerMatchesIPv4Rules(t *testing.T) {
	// An IPv4 client of a [::] listener arrives as ::ffff:127.0.0.4; the
	// IPv4 rule must apply to it.
	echo := testutil.StartEcho(t)
	// A port free on every interface, IPv6 included (ClosedAddr's is only
	// known to be free on 127.0.0.1).
	port := strconv.Itoa(reservedAnyPort(t))
	p := pjtest.Proxy("web", ":"+port, echo)
	p.Deny = testutil.Prefixes("127.0.0.4/32")
	r := pjtest.Start(t, cfgOf(time.Minute, p), server.Options{})
	if served(t, from(t, "127.0.0.4", "127.0.0.1:"+port)) {
		t.Fatal("a denied IPv4 client got through a dual-stack listener")
	}
	if !served(t, from(t, "127.0.0.5", "127.0.0.1:"+port)) {
		t.Fatal("another client was refused")
	}
	if l := r.Logs.WaitLines(t, "[denied]", 1)[0]; !strings.Contains(l, "] 127.0.0.4:") {
		t.Fatalf("line %q shows the client as %s, want plain IPv4", l, "::ffff:")
	}
}

// reservedAnyPort returns a port reserved for the test on every address of
// both families, as ClosedAddr reserves one on 127.0.0.1: a dual-stack
// socket bound to [::] with SO_REUSEADDR and never listening holds it, so
// that no other socket is given it between now and pj's listening (which
// sets SO_REUSEADDR too, and may so bind it).
func reservedAnyPort(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("reserve a port: %v", err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	for _, o := range [][2]int{{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY}, {unix.SOL_SOCKET, unix.SO_REUSEADDR}} {
		v := 1
		if o[1] == unix.IPV6_V6ONLY {
			v = 0
		}
		if err := unix.SetsockoptInt(fd, o[0], o[1], v); err != nil {
			t.Fatalf("reserve a port: %v", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{}); err != nil {
		t.Fatalf("reserve a port: %v", err)
	}
	sa, err := unix.Getsockname(fd)
	in, ok := sa.(*unix.SockaddrInet6)
	if err != nil || !ok {
		t.Fatalf("reserve a port: %v (%T)", err, sa)
	}
	return in.Port
}

func TestRateLimitPerClient(t *testing.T) {
	echo := testutil.StartEcho(t)
	r, x := startOne(t, "web", func(p *config.Proxy) {
		p.RateLimit = config.RateLimit{PerClient: 0.5, Burst: 2} // a token every 2 s
	}, echo)
	got := []bool{
		served(t, from(t, "127.0.0.6", x)),
		served(t, from(t, "127.0.0.6", x)),
		served(t, from(t, "127.0.0.6", x)), // over the burst
		served(t, from(t, "127.0.0.7", x)), // another client
	}
	if fmt.Sprint(got) != "[true true false true]" {
		t.Fatalf("served %v, want the burst of 2, then refused; another client independent", got)
	}
	if l := r.Logs.WaitLines(t, "[rate_limited]", 1)[0]; !strings.Contains(l, "127.0.0.6:") {
		t.Fatalf("line %q", l)
	}
}

func TestConnectionCapPerClient(t *testing.T) {
	echo := testutil.StartEcho(t)
	r, x := startOne(t, "web", func(p *config.Proxy) {
		p.MaxConnectionsPerClient = 2
	}, echo)
	a, b := from(t, "127.0.0.8", x), from(t, "127.0.0.8", x)
	if !served(t, a) || !served(t, b) {
		t.Fatal("the first two connections of a client were refused")
	}
	if served(t, from(t, "127.0.0.8", x)) {
		t.Fatal("a third concurrent connection of the client was served")
	}
	if !served(t, from(t, "127.0.0.9", x)) {
		t.Fatal("another client was refused")
	}
	r.Logs.WaitLines(t, "[limit]", 1)
	_ = a.Close()
	testutil.WaitFor(t, 10*time.Second, "the client's slot to free", func() bool {
		return served(t, from(t, "127.0.0.8", x))
	})
}

func TestMaxConnectionsQueueInTheKernel(t *testing.T) {
	echo := testutil.StartEcho(t)
	r, x := startOne(t, "web", func(p *config.Proxy) {
		p.MaxConnections = 2
	}, echo)
	held := []net.Conn{testutil.Dial(t, x), testutil.Dial(t, x)}
	for _, c := range held {
		if !served(t, c) {
			t.Fatal("a connection under the cap was not served")
		}
	}
	// The third is queued by the kernel, not refused: its connect works,
	// and it is served as soon as a slot frees.
	third := testutil.Dial(t, x)
	if _, err := io.WriteString(third, "q"); err != nil {
		t.Fatal(err)
	}
	r.Logs.WaitLines(t, "connection cap reached", 1)
	_ = third.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := third.Read(make([]byte, 1)); !testutil.IsTimeout(err) {
		t.Fatalf("the third connection was served past the cap (read: %v)", err)
	}
	if n := r.Active(); n != 2 {
		t.Fatalf("%d connections active, want the cap of 2", n)
	}
	_ = held[0].Close()
	_ = third.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(third, make([]byte, 1)); err != nil {
		t.Fatalf("the queued connection was not served once a slot freed: %v", err)
	}
	if n := len(r.Logs.Lines("[limit]")) + len(r.Logs.Lines("[connect_failed]")); n != 0 {
		t.Fatal("pj dropped a connection itself")
	}
}

func TestGlobalMaxConnections(t *testing.T) {
	echo := testutil.StartEcho(t)
	x, y := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	cfg := cfgOf(time.Minute, pjtest.Proxy("a", x, echo), pjtest.Proxy("b", y, echo))
	cfg.MaxConnections = 2
	r := pjtest.Start(t, cfg, server.Options{})
	for _, addr := range []string{x, y} {
		if !served(t, testutil.Dial(t, addr)) {
			t.Fatal("a connection under the cap was not served")
		}
	}
	third := testutil.Dial(t, y)
	_ = third.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = io.WriteString(third, "q")
	if _, err := third.Read(make([]byte, 1)); !testutil.IsTimeout(err) {
		t.Fatalf("served past the process's cap (read: %v)", err)
	}
	if n := r.Active(); n != 2 {
		t.Fatalf("%d active, want 2", n)
	}
}

// headerEcho is a backend that reads a PROXY protocol header and answers
// with the addresses it carries: "src dst".
func headerEcho(t *testing.T) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			_, _ = fmt.Fprintf(c, "no header: %v", err)
			return
		}
		_, _ = fmt.Fprintf(c, "v%d %s %s", h.Version, h.SourceAddr, h.DestinationAddr)
	})
	return ln.Addr().String()
}

func TestProxyProtocolSent(t *testing.T) {
	backend := headerEcho(t)
	x4, _ := testutil.ClosedAddr(t), 0
	_, port6, _ := net.SplitHostPort(testutil.ClosedAddr(t))
	x6 := "[::1]:" + port6
	p1 := pjtest.Proxy("v1", x4, backend)
	p1.ProxyProtocol = "v1"
	p2 := pjtest.Proxy("v2", x6, backend)
	p2.ProxyProtocol = "v2"
	ps := []config.Proxy{p1}
	if ln, err := net.Listen("tcp6", x6); err == nil {
		_ = ln.Close()
		ps = append(ps, p2)
	}
	pjtest.Start(t, cfgOf(time.Minute, ps...), server.Options{})

	c := from(t, "127.0.0.10", x4)
	got, _ := io.ReadAll(c)
	want := fmt.Sprintf("v1 %s %s", c.LocalAddr(), c.RemoteAddr())
	if string(got) != want {
		t.Fatalf("the backend read %q, want %q", got, want)
	}
	if len(ps) == 2 {
		c6 := testutil.Dial(t, x6)
		got, _ := io.ReadAll(c6)
		want := fmt.Sprintf("v2 %s %s", c6.LocalAddr(), c6.RemoteAddr())
		if string(got) != want {
			t.Fatalf("over IPv6 the backend read %q, want %q", got, want)
		}
	}
}

func TestProxyProtocolAccepted(t *testing.T) {
	echo, _ := countingEcho(t)
	trusted, untrusted := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	pt := pjtest.Proxy("trusting", trusted, echo)
	pt.AcceptProxyProtocol = &config.AcceptProxyProtocol{Trusted: testutil.Prefixes("127.0.0.0/8")}
	pt.Deny = testutil.Prefixes("198.51.100.0/24")
	pu := pjtest.Proxy("untrusting", untrusted, echo)
	pu.AcceptProxyProtocol = &config.AcceptProxyProtocol{Trusted: testutil.Prefixes("10.0.0.0/8")}
	r := pjtest.Start(t, cfgOf(time.Minute, pt, pu), server.Options{})

	// A trusted peer's header gives the client address everywhere.
	c := testutil.Dial(t, trusted)
	_, _ = io.WriteString(c, "PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\nhi")
	if got := make([]byte, 2); !readFull(c, got) || string(got) != "hi" {
		t.Fatalf("echo through a PROXY header: %q", got)
	}
	_ = c.Close()
	if l := r.Logs.WaitLines(t, "] 203.0.113.7:51234 -> ", 1)[0]; !strings.Contains(l, "[ok]") || !strings.Contains(l, "up=2 down=2") {
		t.Fatalf("line %q: want the header's client and only the client's bytes counted", l)
	}
	// ...for the ACL too.
	c = testutil.Dial(t, trusted)
	_, _ = io.WriteString(c, "PROXY TCP4 198.51.100.9 127.0.0.1 40000 8080\r\n")
	if served(t, c) {
		t.Fatal("a client denied by the address in its PROXY header got through")
	}
	r.Logs.WaitLines(t, "] 198.51.100.9:40000 -> ", 1)

	before := totalOf(r, "trusting", echo)
	for _, bad := range []struct{ name, send string }{
		{"malformed", "PROXY TCP4 not-an-address\r\n"},
		{"missing", "GET / HTTP/1.0\r\n\r\n"},
	} {
		c := testutil.Dial(t, trusted)
		_, _ = io.WriteString(c, bad.send)
		if served(t, c) {
			t.Fatalf("%s header: served", bad.name)
		}
	}
	if n := len(r.Logs.WaitLines(t, "no valid PROXY protocol header", 2)); n != 2 {
		t.Fatal("want a clear line for each bad header")
	}
	if got := totalOf(r, "trusting", echo); got != before {
		t.Fatalf("%d connections with bad headers reached the backend", got-before)
	}
	// A header from a peer that is not trusted is refused...
	c = testutil.Dial(t, untrusted)
	_, _ = io.WriteString(c, "PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n")
	if served(t, c) {
		t.Fatal("an untrusted peer's header was believed")
	}
	r.Logs.WaitLines(t, "not in accept_proxy_protocol.trusted", 1)
	// ...while its ordinary traffic flows.
	if !served(t, testutil.Dial(t, untrusted)) {
		t.Fatal("an untrusted peer without a header was refused")
	}
}

func readFull(c net.Conn, b []byte) bool {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadFull(c, b)
	return err == nil
}

func TestTwoChainedInstancesKeepTheClientAddress(t *testing.T) {
	backend := headerEcho(t)
	front, inner := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	p2 := pjtest.Proxy("inner", inner, backend)
	p2.AcceptProxyProtocol = &config.AcceptProxyProtocol{Trusted: testutil.Prefixes("127.0.0.1/32")}
	p2.ProxyProtocol = "v1"
	second := pjtest.Start(t, cfgOf(time.Minute, p2), server.Options{})
	p1 := pjtest.Proxy("front", front, inner)
	p1.ProxyProtocol = "v2"
	pjtest.Start(t, cfgOf(time.Minute, p1), server.Options{})

	c := from(t, "127.0.0.11", front)
	got, _ := io.ReadAll(c)
	want := fmt.Sprintf("v1 %s %s", c.LocalAddr(), c.RemoteAddr())
	if string(got) != want {
		t.Fatalf("the backend behind two pj read %q, want %q: the original client and listener", got, want)
	}
	client := c.LocalAddr().String()
	_ = c.Close() // the line is written when the connection ends
	second.Logs.WaitLines(t, "] "+client+" -> ", 1)
}

func TestHealthCheckSendsAProxyHeader(t *testing.T) {
	// A backend that wants a PROXY header before anything (a PROXY-aware
	// server): the check sends one (LOCAL) and passes.
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil || h.Command != proxyproto.LOCAL {
			return
		}
		if line, err := br.ReadString('\n'); err == nil && line == "PING\r\n" {
			_, _ = io.WriteString(c, "+PONG\r\n")
		}
	})
	x := testutil.ClosedAddr(t)
	p := checked(pjtest.Proxy("cache", x, ln.Addr().String(), testutil.StartEcho(t)), "PING\r\n", "+PONG")
	p.ProxyProtocol = "v2"
	p.HealthCheck.SendProxy = true
	r := pjtest.Start(t, cfgOf(time.Minute, p), server.Options{})
	// The echo backend fails the check (it echoes the header, not +PONG);
	// the PROXY-aware one passes: only the echo goes down.
	line := r.Logs.WaitLines(t, "of cache is down", 1)[0]
	if strings.Contains(line, ln.Addr().String()) {
		t.Fatalf("the PROXY-aware backend failed its check: %q", line)
	}
	if got := stateOf(r, "cache", ln.Addr().String()); got != "up" {
		t.Fatalf("the PROXY-aware backend is %s", got)
	}
}

func TestBandwidthCap(t *testing.T) {
	// 200 KiB at 100 KiB/s with a 25 KiB burst cannot take less than
	// (200-25)/100 = 1.75 s, however fast the machine: a lower bound, not
	// a timing race.
	const size, rate = 200 << 10, 100 << 10
	echo := testutil.StartEcho(t)
	r, x := startOne(t, "slow", func(p *config.Proxy) {
		p.Bandwidth.PerConnection = rate
	}, echo)
	c := testutil.Dial(t, x)
	start := time.Now()
	go func() {
		_, _ = io.Copy(c, testutil.NewPattern(3, size))
		_ = c.CloseWrite()
	}()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != size {
		t.Fatalf("echoed %d bytes, %v", n, err)
	}
	if took, least := time.Since(start), 1750*time.Millisecond; took < least {
		t.Fatalf("200 KiB took %s at a cap of 100 KiB/s; it cannot take less than %s", took, least)
	}
	r.Logs.WaitLines(t, "up=204800 down=204800", 1)
}

// totalOf is how many connections pj relayed to backend of proxy.
func totalOf(r *pjtest.Server, proxy, backend string) uint64 {
	for _, v := range r.Proxies() {
		if v.Proxy.Name == proxy {
			for _, b := range v.Proxy.Backends() {
				if b.Address == backend {
					return b.Total.Load()
				}
			}
		}
	}
	return 0
}

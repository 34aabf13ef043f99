package server_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// udpEcho starts a UDP backend on loopback that answers every datagram
// with prefix and the datagram.
func udpEcho(t *testing.T, prefix string) string {
	t.Helper()
	return testutil.ServeUDP(t, func(b []byte) []byte { return append([]byte(prefix), b...) }).String()
}

func udpProxy(name, listen string, idle time.Duration, backends ...string) config.Proxy {
	p := pjconf.Proxy(name, listen, backends...)
	p.IdleTimeout = idle
	p.HealthCheck.Interval = 0
	return p
}

type udpClient struct {
	t *testing.T
	c *net.UDPConn
}

func newUDPClient(t *testing.T) *udpClient {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &udpClient{t: t, c: c}
}

// ask sends msg to addr and returns the reply, or "" if none came in wait.
func (u *udpClient) ask(addr net.Addr, msg string, wait time.Duration) string {
	u.t.Helper()
	if _, err := u.c.WriteTo([]byte(msg), addr); err != nil {
		u.t.Fatal(err)
	}
	_ = u.c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1<<16)
	n, err := u.c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func TestUDPProxyServesAndLists(t *testing.T) {
	echo := udpEcho(t, "")
	tcpEcho := testutil.StartEcho(t)
	r := pjtest.Start(t, cfgOf(100*time.Millisecond, udpProxy("dns", "127.0.0.1:0/udp", time.Minute, echo), pjconf.Proxy("web", "127.0.0.1:0", tcpEcho)), server.Options{Loops: 2})
	addr := r.Addrs()[0]
	c := newUDPClient(t)
	if got := c.ask(addr, "hello", 5*time.Second); got != "hello" {
		t.Fatalf("reply %q", got)
	}
	tc := testutil.Dial(t, r.Addrs()[1].String())
	testutil.RoundTrip(t, tc, "tcp")
	conns := r.Connections("", -1)
	if len(conns) != 2 {
		t.Fatalf("%d connections listed, want a TCP connection and a UDP session", len(conns))
	}
	var session uint64
	for _, ci := range conns {
		if ci.Proxy == "dns" {
			session = ci.ID
			if ci.Listener != addr.String()+"/udp" || ci.Backend != echo || ci.Up != 5 {
				t.Fatalf("session listed as %+v", ci)
			}
		}
	}
	if conns[0].ID == conns[1].ID {
		t.Fatal("a connection and a session share an id")
	}
	if !r.Kill(session) {
		t.Fatal("Kill of the session: not found")
	}
	line := r.Logs.WaitLines(t, "[killed]", 1)[0]
	if !strings.Contains(line, "/udp -> "+echo+" [killed]") || !strings.Contains(line, "datagrams_up=1 datagrams_down=1") {
		t.Fatalf("log line %q", line)
	}
}

// TestUDPReloadKeepsSocketAndSessions: a kept UDP listener keeps its
// socket and its sessions (which keep their backend); new sessions go by
// the new settings.
func TestUDPReloadKeepsSocketAndSessions(t *testing.T) {
	a, b := udpEcho(t, "a:"), udpEcho(t, "b:")
	// A short grace period: the session still open at the end of the
	// test is cut then.
	cfg := cfgOf(100*time.Millisecond, udpProxy("dns", "127.0.0.1:0/udp", time.Minute, a))
	r := pjtest.Start(t, cfg, server.Options{Loops: 2})
	addr := r.Addrs()[0]
	old := newUDPClient(t)
	if got := old.ask(addr, "1", 5*time.Second); got != "a:1" {
		t.Fatal(got)
	}
	if _, err := r.Reload(cfgOf(100*time.Millisecond, udpProxy("dns", "127.0.0.1:0/udp", time.Minute, b))); err != nil {
		t.Fatal(err)
	}
	if got := r.Addrs()[0].String(); got != addr.String() {
		t.Fatalf("the listener moved from %s to %s", addr, got)
	}
	if got := old.ask(addr, "2", 5*time.Second); got != "a:2" {
		t.Fatalf("the established session got %q, want a:2 (its own backend)", got)
	}
	if got := newUDPClient(t).ask(addr, "3", 5*time.Second); got != "b:3" {
		t.Fatalf("a new session got %q, want b:3", got)
	}
	if n := len(r.Logs.Lines("datagrams_up=")); n != 0 {
		t.Fatalf("%d sessions ended by the reload", n)
	}
}

// TestUDPRemovedProxyDrains: a UDP proxy removed by a reload answers its
// sessions until they end, and no new source.
func TestUDPRemovedProxyDrains(t *testing.T) {
	// The session must outlive the reload to show the drain. A machine
	// too loaded to reload within the idle timeout ends it first, as it
	// should (its [timeout] line says so): that says nothing of the
	// drain, and a longer timeout is tried. The last is never excused.
	idles := []time.Duration{400 * time.Millisecond, 3 * time.Second, 15 * time.Second}
	for i, idle := range idles {
		if removedProxyDrains(t, idle, i == len(idles)-1) {
			return
		}
		t.Logf("the session ended by its idle timeout of %s before the reload was done; a longer one", idle)
	}
}

// removedProxyDrains runs TestUDPRemovedProxyDrains with sessions idle
// for idle. It returns false, unless last, if the session timed out
// before it could be asked again.
func removedProxyDrains(t *testing.T, idle time.Duration, last bool) bool {
	t.Helper()
	a := udpEcho(t, "")
	web := testutil.StartEcho(t)
	r := pjtest.Start(t, cfgOf(time.Minute, udpProxy("dns", "127.0.0.1:0/udp", idle, a), pjconf.Proxy("web", "127.0.0.1:0", web)), server.Options{Loops: 2})
	addr := r.Addrs()[0]
	old := newUDPClient(t)
	if got := old.ask(addr, "1", 5*time.Second); got != "1" {
		t.Fatal(got)
	}
	if _, err := r.Reload(cfgOf(time.Minute, pjconf.Proxy("web", "127.0.0.1:0", web))); err != nil {
		t.Fatal(err)
	}
	timedOut := func() bool {
		ended := r.Logs.Lines("[timeout]")
		return !last && len(ended) == 1 && strings.Contains(ended[0], "datagrams_up=1 datagrams_down=1")
	}
	if timedOut() {
		return false
	}
	if got := old.ask(addr, "2", 5*time.Second); got != "2" {
		if timedOut() {
			return false
		}
		t.Fatalf("the session of a removed proxy got %q while it may finish", got)
	}
	if got := newUDPClient(t).ask(addr, "new", 200*time.Millisecond); got != "" {
		t.Fatalf("a removed proxy took a new session: %q", got)
	}
	testutil.WaitFor(t, idle+10*time.Second, "the session's [timeout] line", func() bool {
		return len(r.Logs.Lines("[timeout]")) > 0
	})
	return true
}

// TestUDPShutdownGrace: on shutdown, sessions run on for the grace period
// (a session that ends by itself ends as usual), then are cut.
func TestUDPShutdownGrace(t *testing.T) {
	for _, tc := range []struct {
		name   string
		idle   time.Duration
		grace  time.Duration
		status string
	}{
		{"sessions end within the grace period", 300 * time.Millisecond, time.Minute, "[timeout]"},
		{"the grace period ends first", time.Minute, 300 * time.Millisecond, "[shutdown]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo := udpEcho(t, "")
			r := pjtest.Start(t, cfgOf(tc.grace, udpProxy("dns", "127.0.0.1:0/udp", tc.idle, echo)), server.Options{Loops: 2})
			addr := r.Addrs()[0]
			c := newUDPClient(t)
			if got := c.ask(addr, "1", 5*time.Second); got != "1" {
				t.Fatal(got)
			}
			r.Shutdown()
			if got := c.ask(addr, "2", 5*time.Second); got != "2" && tc.grace > time.Second {
				t.Fatalf("a session was not served during the grace period: %q", got)
			}
			select {
			case <-r.Stopped():
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return")
			}
			if line := r.Logs.WaitLines(t, "datagrams_up=", 1)[0]; !strings.Contains(line, tc.status) {
				t.Fatalf("log line %q, want %s", line, tc.status)
			}
		})
	}
}

// TestTCPAndUDPOnOnePort: DNS listens on a port in both transports.
func TestTCPAndUDPOnOnePort(t *testing.T) {
	tcpEcho, udpBackend := testutil.StartEcho(t), udpEcho(t, "udp:")
	port := netip.MustParseAddrPort(testutil.ClosedAddr(t)).Port()
	at := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
	r := pjtest.Start(t, cfgOf(100*time.Millisecond, pjconf.Proxy(at, at, tcpEcho), udpProxy(at+"/udp", at+"/udp", time.Minute, udpBackend)), server.Options{Loops: 2})
	if got := newUDPClient(t).ask(net.UDPAddrFromAddrPort(netip.MustParseAddrPort(at)), "q", 5*time.Second); got != "udp:q" {
		t.Fatalf("UDP: %q", got)
	}
	if got := testutil.RoundTrip(t, testutil.Dial(t, at), "tcp"); got != "tcp" {
		t.Fatalf("TCP: %q", got)
	}
	names := []string{}
	for _, v := range r.Proxies() {
		names = append(names, v.Proxy.Name+"="+v.Listen)
	}
	if want := at + "=" + at + " " + at + "/udp=" + at + "/udp"; strings.Join(names, " ") != want {
		t.Fatalf("proxies %v, want %s", names, want)
	}
}

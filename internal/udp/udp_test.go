//go:build linux

package udp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pj-proxy/pj/internal/admission"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend is an in-test UDP server on loopback: it answers every datagram
// with name (if set) followed by the datagram, repeat times.
type backend struct {
	conn   *net.UDPConn
	name   string
	repeat int
	mu     sync.Mutex
	got    int
}

func startBackend(t testing.TB, network, name string, repeat int) *backend {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "udp6" {
		addr = "[::1]:0"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{conn: c, name: name, repeat: max(repeat, 1)}
	var wg sync.WaitGroup
	wg.Go(func() {
		// The name goes in front of the datagram in one buffer: the echo
		// allocates nothing, so that tests can count pj's allocations.
		buf := make([]byte, len(name)+1<<16)
		copy(buf, name)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf[len(name):])
			if err != nil {
				return
			}
			b.mu.Lock()
			b.got++
			b.mu.Unlock()
			reply := buf[:len(name)+n]
			for range b.repeat {
				_, _ = c.WriteToUDPAddrPort(reply, from)
			}
		}
	})
	t.Cleanup(func() { _ = c.Close(); wg.Wait() })
	return b
}

func (b *backend) addr() string { return b.conn.LocalAddr().String() }

func (b *backend) received() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.got
}

// closedUDP returns a loopback UDP address nothing listens on: a datagram
// sent there comes back as ICMP port unreachable. A socket bound to it and
// connected elsewhere holds the port until the test ends, so that no other
// socket is given it meanwhile; it takes no datagram of anyone else, so
// the kernel answers those as for a closed port.
func closedUDP(t *testing.T) string {
	t.Helper()
	c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.LocalAddr().String()
}

type harness struct {
	e    *Engine
	ln   *Listener
	p    *proxy.Proxy
	addr netip.AddrPort // where clients send
	log  *testutil.Buffer
}

type opts struct {
	listen    string // default 127.0.0.1:0
	idle      time.Duration
	responses int
	maxConns  int
	fall      int
	allow     []netip.Prefix
	clients   *admission.Clients
	balance   string
}

func newHarness(t testing.TB, o opts, backends ...string) *harness {
	t.Helper()
	logs := new(testutil.Buffer)
	log, err := observe.NewLogger(logs, "text", "debug")
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{Logger: log, Loops: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	h := &harness{e: e, log: logs}
	h.p = buildProxy(t, o, backends...)
	if o.listen == "" {
		o.listen = "127.0.0.1:0"
	}
	socks, err := Bind(context.Background(), o.listen, e.Loops())
	if err != nil {
		t.Fatal(err)
	}
	h.addr = socks.Addr()
	h.ln, err = e.Listen(socks, h.p)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func buildProxy(t testing.TB, o opts, backends ...string) *proxy.Proxy {
	t.Helper()
	pc := pjconf.Proxy("dns", "", backends...)
	pc.IdleTimeout = o.idle
	if pc.IdleTimeout == 0 {
		pc.IdleTimeout = 30 * time.Second
	}
	pc.MaxConnections = o.maxConns
	pc.Allow = o.allow
	if o.fall > 0 {
		pc.HealthCheck.Fall = o.fall
	}
	if o.balance != "" {
		pc.Balance = o.balance
	}
	pc.HealthCheck.Interval = 0
	p, err := proxy.Build(context.Background(), pc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.UDP, p.Responses = true, o.responses
	if o.clients != nil {
		p.Clients = o.clients
	}
	return p
}

// client is a UDP socket bound to a loopback address of its own.
func client(t *testing.T, local string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(local)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ask sends msg to to and returns the first reply and where it came from.
func ask(c *net.UDPConn, to netip.AddrPort, msg []byte, wait time.Duration) ([]byte, netip.AddrPort, error) {
	if _, err := c.WriteToUDPAddrPort(msg, to); err != nil {
		return nil, netip.AddrPort{}, err
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1<<16)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
}

func mustAsk(t *testing.T, c *net.UDPConn, to netip.AddrPort, msg string) string {
	t.Helper()
	got, _, err := ask(c, to, []byte(msg), 5*time.Second)
	if err != nil {
		t.Fatalf("ask %q: %v", msg, err)
	}
	return string(got)
}

func TestRelayAndSessionLine(t *testing.T) {
	// The idle timeout ends the session: long enough that a loaded
	// machine's backend answers within it, short enough for a test.
	const idle = time.Second
	b := startBackend(t, "udp4", "", 1)
	h := newHarness(t, opts{idle: idle}, b.addr())
	c := client(t, "127.0.0.1:0")
	const n = 20
	// One session carries them all, unless the machine kept the test from
	// sending for the idle timeout: then it rightly ended between two.
	var sent time.Time
	var pause time.Duration // the longest time the session had no datagram
	for i := range n {
		if i > 0 {
			pause = max(pause, time.Since(sent))
		}
		sent = time.Now()
		msg := fmt.Sprintf("datagram %d", i)
		if got := mustAsk(t, c, h.addr, msg); got != msg {
			t.Fatalf("echo %d = %q, want %q", i, got, msg)
		}
	}
	got := h.e.Sessions()
	pause = max(pause, time.Since(sent))
	if len(got) != 1 || got[0].DgramsUp != n || got[0].Backend != b.addr() {
		if pause >= idle {
			t.Skipf("the machine kept the test from sending for %s, longer than the %s idle timeout: the session rightly ended, and this run proves nothing", pause, idle)
		}
		t.Fatalf("sessions = %+v, want one with %d datagrams up to %s", got, n, b.addr())
	}
	line := h.log.WaitLines(t, "[timeout]", 1)[0]
	testutil.WantQuiet(t, sent, idle)
	want := fmt.Sprintf("%s -> %s/udp -> %s [timeout]", c.LocalAddr(), h.addr, b.addr())
	if !strings.Contains(line, want) {
		t.Fatalf("log line %q lacks %q", line, want)
	}
	bytesUp := 0
	for i := range n {
		bytesUp += len(fmt.Sprintf("datagram %d", i))
	}
	for _, field := range []string{fmt.Sprintf("up=%d down=%d", bytesUp, bytesUp), "datagrams_up=20 datagrams_down=20", "proxy=dns"} {
		if !strings.Contains(line, field) {
			t.Errorf("log line %q lacks %q", line, field)
		}
	}
	if st := h.p.Stats; st.DatagramsUp.Load() != n || st.DatagramsDown.Load() != n || st.Active.Load() != 0 {
		t.Errorf("stats: up %d down %d active %d; want %d %d 0", st.DatagramsUp.Load(), st.DatagramsDown.Load(), st.Active.Load(), n, n)
	}
}

func TestSessionPerClientPort(t *testing.T) {
	b := startBackend(t, "udp4", "", 1)
	h := newHarness(t, opts{}, b.addr())
	var clients []*net.UDPConn
	for i := range 10 {
		c := client(t, fmt.Sprintf("127.0.0.%d:0", 1+i%3))
		clients = append(clients, c)
		msg := fmt.Sprintf("client %d", i)
		if got := mustAsk(t, c, h.addr, msg); got != msg {
			t.Fatalf("client %d got %q", i, got)
		}
	}
	// A second round: every client's reply comes back to it alone.
	for i, c := range clients {
		msg := fmt.Sprintf("again %d", i)
		if got := mustAsk(t, c, h.addr, msg); got != msg {
			t.Fatalf("client %d got %q", i, got)
		}
	}
	if n := len(h.e.Sessions()); n != 10 {
		t.Fatalf("%d sessions, want 10 (one per client address and port)", n)
	}
}

// TestResponses is a DNS-like exchange: with responses 1 the session ends
// at its first reply (status ok); a second reply of the backend is not
// relayed.
func TestResponses(t *testing.T) {
	b := startBackend(t, "udp4", "", 2) // answers every query twice
	h := newHarness(t, opts{responses: 1}, b.addr())
	c := client(t, "127.0.0.1:0")
	query := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'p', 'j', 0, 0, 1, 0, 1}
	got, _, err := ask(c, h.addr, query, 5*time.Second)
	if err != nil || !bytes.Equal(got, query) {
		t.Fatalf("reply %x, %v; want %x", got, err, query)
	}
	line := h.log.WaitLines(t, "[ok]", 1)[0]
	if !strings.Contains(line, "datagrams_up=1 datagrams_down=1") || !strings.Contains(line, "closed_by=backend") {
		t.Fatalf("log line %q: want one datagram each way, closed by the backend", line)
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 512)); err == nil {
		t.Fatalf("a second reply of %d bytes was relayed after the session ended", n)
	}
	testutil.WaitFor(t, 5*time.Second, "no session left", func() bool { return h.e.Active() == 0 })
	// The next query is a new session.
	if got := mustAsk(t, c, h.addr, "next"); got != "next" {
		t.Fatalf("second query: %q", got)
	}
	h.log.WaitLines(t, "[ok]", 2)
}

// TestRefusedFailsOver: the first backend is a closed port, which answers
// with ICMP port unreachable; the session fails over to the second on the
// client's next datagram, and the refusal counts against the first.
func TestRefusedFailsOver(t *testing.T) {
	dead := closedUDP(t)
	live := startBackend(t, "udp4", "live:", 1)
	h := newHarness(t, opts{fall: 1}, dead, live.addr())
	c := client(t, "127.0.0.1:0")
	var reply string
	for try := 0; try < 20 && reply == ""; try++ {
		got, _, err := ask(c, h.addr, []byte("q"), 200*time.Millisecond)
		if err == nil {
			reply = string(got)
		}
	}
	if reply != "live:q" {
		t.Fatalf("reply %q, want live:q", reply)
	}
	ss := h.e.Sessions()
	if len(ss) != 1 || ss[0].Backend != live.addr() {
		t.Fatalf("sessions %+v: want one, on %s", ss, live.addr())
	}
	bs := h.p.Backends()
	if bs[0].Address != dead || bs[0].StateName() != "down" {
		t.Fatalf("backend %s is %s; a refusal with fall 1 takes it down", bs[0].Address, bs[0].StateName())
	}
	if !strings.Contains(h.log.String(), "backend "+dead+" of dns is down: "+dead+": connection refused") {
		t.Fatalf("no health transition logged:\n%s", h.log)
	}
}

// TestAllRefused: a session whose only backend refuses ends as
// connect_failed.
func TestAllRefused(t *testing.T) {
	dead := closedUDP(t)
	h := newHarness(t, opts{fall: 5}, dead)
	c := client(t, "127.0.0.1:0")
	for try := 0; try < 50 && len(h.log.Lines("[connect_failed]")) == 0; try++ {
		_, _, _ = ask(c, h.addr, []byte("q"), 100*time.Millisecond)
	}
	line := h.log.WaitLines(t, "[connect_failed]", 1)[0]
	if !strings.Contains(line, "-> "+dead+" [connect_failed]") || !strings.Contains(line, "connection refused") {
		t.Fatalf("log line %q", line)
	}
}

func TestLargestDatagram(t *testing.T) {
	b := startBackend(t, "udp4", "", 1)
	h := newHarness(t, opts{}, b.addr())
	c := client(t, "127.0.0.1:0")
	_ = c.SetReadBuffer(1 << 20)
	for _, size := range []int{1, 1400, 9000, 65507} {
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(i*7 + size)
		}
		got, _, err := ask(c, h.addr, msg, 5*time.Second)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("%d bytes came back as %d bytes, altered", size, len(got))
		}
	}
}

// TestBurstKeepsBoundaries sends bursts of datagrams of one size (which pj
// passes on with GSO) and of mixed sizes: each arrives whole, in order.
func TestBurstKeepsBoundaries(t *testing.T) {
	b := startBackend(t, "udp4", "", 1)
	h := newHarness(t, opts{}, b.addr())
	c := client(t, "127.0.0.1:0")
	_ = c.SetReadBuffer(4 << 20)
	for _, tc := range []struct {
		name  string
		sizes func(i int) int
	}{
		{"same size", func(int) int { return 1200 }},
		{"mixed", func(i int) int { return 16 + (i*97)%3000 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Windows of 32: a burst that fits the sockets' buffers (UDP
			// has no flow control: a bigger one could be dropped by the
			// kernel before anyone reads it).
			const n, window = 256, 32
			buf := make([]byte, 1<<16)
			for w := 0; w < n; w += window {
				var want [][]byte
				for i := w; i < w+window; i++ {
					msg := bytes.Repeat([]byte{byte(i)}, tc.sizes(i))
					copy(msg, fmt.Sprintf("%04d", i))
					want = append(want, msg)
					if _, err := c.WriteToUDPAddrPort(msg, h.addr); err != nil {
						t.Fatal(err)
					}
				}
				for i := range window {
					_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
					m, _, err := c.ReadFromUDPAddrPort(buf)
					if err != nil {
						t.Fatalf("datagram %d: %v", w+i, err)
					}
					if !bytes.Equal(buf[:m], want[i]) {
						t.Fatalf("datagram %d: got %d bytes starting %q, want %d starting %q", w+i, m, buf[:4], len(want[i]), want[i][:4])
					}
				}
			}
		})
	}
}

// TestReplyFromAddressSentTo: on a wildcard listener, each reply leaves
// from the address its client sent to.
func TestReplyFromAddressSentTo(t *testing.T) {
	for _, tc := range []struct {
		listen  string
		targets []string
	}{
		{"0.0.0.0:0", []string{"127.0.0.1", "127.0.0.3", "127.0.0.77"}},
		{"[::]:0", []string{"::1", "127.0.0.5"}},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			b := startBackend(t, "udp4", "", 1)
			hw := newHarness(t, opts{listen: tc.listen}, b.addr())
			for _, target := range tc.targets {
				to := netip.AddrPortFrom(netip.MustParseAddr(target), hw.addr.Port())
				local := "127.0.0.1:0"
				if to.Addr().Is6() {
					local = "[::1]:0"
				}
				c := client(t, local)
				got, from, err := ask(c, to, []byte("where"), 5*time.Second)
				if err != nil || string(got) != "where" {
					t.Fatalf("to %s: %q, %v", to, got, err)
				}
				if from != to {
					t.Fatalf("sent to %s, the reply came from %s", to, from)
				}
			}
		})
	}
}

// TestSpoofedSourcesBounded: datagrams from many source addresses and
// ports open no more sessions than the cap; a session in use is never
// evicted; once the others have been quiet for a second, new sources
// take their places.
func TestSpoofedSourcesBounded(t *testing.T) {
	b := startBackend(t, "udp4", "", 1)
	const limit = 40
	h := newHarness(t, opts{maxConns: limit}, b.addr())
	fds := testutil.OpenFDs(t, "self")

	live := client(t, "127.0.0.1:0")
	if got := mustAsk(t, live, h.addr, "live"); got != "live" {
		t.Fatal(got)
	}
	var flood []*net.UDPConn
	floodStart := time.Now()
	for i := range 300 {
		c := client(t, fmt.Sprintf("127.0.0.%d:0", 2+i%50))
		flood = append(flood, c)
		if _, err := c.WriteToUDPAddrPort([]byte("spoof"), h.addr); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			// The live client goes on through the flood.
			if got := mustAsk(t, live, h.addr, "still"); got != "still" {
				t.Fatalf("live client got %q", got)
			}
		}
		if n := h.p.Stats.Active.Load(); n > limit {
			t.Fatalf("%d sessions, over the cap of %d", n, limit)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "drops counted", func() bool {
		return h.ln.Dropped()["limit"] > 0
	})
	// Every session moved a datagram after the flood began, so none may
	// give its place before evictQuiet has passed since: until then the
	// cap is full. (A machine that made the flood itself last longer lets
	// pj evict quiet flood sessions, and a place left by one evicted for
	// another loop stays empty until the next new source.)
	n := h.p.Stats.Active.Load()
	if time.Since(floodStart) < evictQuiet && n != limit {
		t.Fatalf("%d sessions, want the cap of %d", n, limit)
	}
	// Sockets held: at most one per session (plus the client sockets of
	// this test).
	if extra := testutil.OpenFDs(t, "self") - fds - len(flood) - 1; extra > limit {
		t.Fatalf("%d more descriptors than sessions allow", extra)
	}
	// A newcomer gets through once the flood's sessions have been quiet
	// for a second.
	late := client(t, "127.0.0.99:0")
	testutil.WaitFor(t, 10*time.Second, "a new client served", func() bool {
		got, _, err := ask(late, h.addr, []byte("late"), 100*time.Millisecond)
		return err == nil && string(got) == "late"
	})
	if got := mustAsk(t, live, h.addr, "end"); got != "end" {
		t.Fatalf("the live session was evicted: %q", got)
	}
	if len(h.log.Lines("evicted")) == 0 {
		t.Fatal("no eviction logged")
	}
}

// TestEvictionAcrossLoops: the cap counts the sessions of every event
// loop, and a newcomer takes the place of a quiet session wherever it is,
// also when the loop its datagrams reach has no session of its own to
// give.
func TestEvictionAcrossLoops(t *testing.T) {
	b := startBackend(t, "udp4", "", 1)
	h := newHarness(t, opts{maxConns: 1}, b.addr())
	// loopOf opens c's session, finds the loop holding it, and kills it.
	loopOf := func(c *net.UDPConn) int {
		t.Helper()
		if got := mustAsk(t, c, h.addr, "where"); got != "where" {
			t.Fatal(got)
		}
		at := -1
		for i, l := range h.e.loops {
			_ = l.poll.Call(l, func(l *loop) error {
				if len(l.table) == 1 {
					at = i
				}
				return nil
			})
		}
		ss := h.e.Sessions()
		if at < 0 || len(ss) != 1 || !h.e.Kill(ss[0].ID) {
			t.Fatalf("sessions %+v, in loop %d: want one", ss, at)
		}
		testutil.WaitFor(t, 5*time.Second, "the session killed", func() bool { return h.p.Stats.Active.Load() == 0 })
		return at
	}
	held := client(t, "127.0.0.2:0")
	x := loopOf(held)
	var newcomer *net.UDPConn
	for i := 0; newcomer == nil; i++ {
		if i == 64 {
			t.Fatalf("64 sources all reached loop %d", x)
		}
		if c := client(t, fmt.Sprintf("127.0.0.%d:0", 3+i)); loopOf(c) != x {
			newcomer = c
		}
	}
	// held's session fills the cap in loop x; the newcomer's datagrams
	// reach the other loop, which has none.
	if got := mustAsk(t, held, h.addr, "held"); got != "held" {
		t.Fatal(got)
	}
	testutil.WaitFor(t, 10*time.Second, "the newcomer served", func() bool {
		got, _, err := ask(newcomer, h.addr, []byte("new"), 100*time.Millisecond)
		return err == nil && string(got) == "new"
	})
	if l := h.log.Lines("evicted"); len(l) != 1 || !strings.Contains(l[0], held.LocalAddr().String()+" -> ") {
		t.Fatalf("eviction lines %q: want one, of %s", l, held.LocalAddr())
	}
}

func TestAdmission(t *testing.T) {
	b := startBackend(t, "udp4", "", 1)
	t.Run("deny", func(t *testing.T) {
		h := newHarness(t, opts{allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}, b.addr())
		ok := client(t, "127.0.0.2:0")
		if got := mustAsk(t, ok, h.addr, "allowed"); got != "allowed" {
			t.Fatal(got)
		}
		no := client(t, "127.0.0.3:0")
		if _, _, err := ask(no, h.addr, []byte("denied"), 200*time.Millisecond); err == nil {
			t.Fatal("a denied source got an answer")
		}
		testutil.WaitFor(t, 5*time.Second, "a denied datagram counted", func() bool { return h.ln.Dropped()["denied"] == 1 })
	})
	t.Run("rate", func(t *testing.T) {
		clients := admission.NewClients(0.001, 2, 0, 0)
		h := newHarness(t, opts{clients: clients, responses: 1}, b.addr())
		for i := range 2 {
			c := client(t, "127.0.0.4:0")
			if got := mustAsk(t, c, h.addr, "x"); got != "x" {
				t.Fatalf("session %d: %q", i, got)
			}
		}
		c := client(t, "127.0.0.4:0")
		if _, _, err := ask(c, h.addr, []byte("x"), 200*time.Millisecond); err == nil {
			t.Fatal("a third session within the burst of 2 got through")
		}
		testutil.WaitFor(t, 5*time.Second, "rate limit counted", func() bool { return h.ln.Dropped()["rate_limited"] == 1 })
		other := client(t, "127.0.0.5:0")
		if got := mustAsk(t, other, h.addr, "y"); got != "y" {
			t.Fatal(got)
		}
	})
}

func TestKillAndCut(t *testing.T) {
	b := startBackend(t, "udp4", "", 1)
	h := newHarness(t, opts{}, b.addr())
	c1, c2 := client(t, "127.0.0.1:0"), client(t, "127.0.0.1:0")
	mustAsk(t, c1, h.addr, "one")
	mustAsk(t, c2, h.addr, "two")
	ss := h.e.Sessions()
	if len(ss) != 2 {
		t.Fatalf("%d sessions", len(ss))
	}
	if !h.e.Kill(ss[0].ID) || h.e.Kill(ss[0].ID) {
		t.Fatal("Kill: want true once, then false")
	}
	h.log.WaitLines(t, "[killed]", 1)
	h.e.Cut(ErrShutdown)
	h.log.WaitLines(t, "[shutdown]", 1)
	if h.e.Active() != 0 {
		t.Fatalf("%d sessions left", h.e.Active())
	}
	select {
	case <-h.e.Idle():
	case <-time.After(5 * time.Second):
		t.Fatal("Idle not closed")
	}
}

// TestDrain: a draining listener answers its sessions and takes no new
// one; its sockets close when the last session ends.
func TestDrain(t *testing.T) {
	b := startBackend(t, "udp4", "", 1)
	h := newHarness(t, opts{idle: 500 * time.Millisecond}, b.addr())
	old := client(t, "127.0.0.1:0")
	mustAsk(t, old, h.addr, "before")
	h.e.Drain(h.ln)
	if got := mustAsk(t, old, h.addr, "during"); got != "during" {
		t.Fatalf("an established session was not served while draining: %q", got)
	}
	newcomer := client(t, "127.0.0.1:0")
	if _, _, err := ask(newcomer, h.addr, []byte("new"), 200*time.Millisecond); err == nil {
		t.Fatal("a new source was served by a draining listener")
	}
	h.log.WaitLines(t, "[timeout]", 1)
	// Once closed, the port answers with ICMP port unreachable.
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(h.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	testutil.WaitFor(t, 5*time.Second, "the listener's sockets closed", func() bool {
		_, _ = conn.Write([]byte("x"))
		_ = conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := conn.Read(make([]byte, 8))
		return errors.Is(err, syscall.ECONNREFUSED)
	})
}

// TestSetProxy: a new proxy applies to new sessions; established ones
// keep the backend they had.
func TestSetProxy(t *testing.T) {
	b1 := startBackend(t, "udp4", "one:", 1)
	b2 := startBackend(t, "udp4", "two:", 1)
	h := newHarness(t, opts{}, b1.addr())
	old := client(t, "127.0.0.1:0")
	if got := mustAsk(t, old, h.addr, "a"); got != "one:a" {
		t.Fatal(got)
	}
	h.ln.SetProxy(buildProxy(t, opts{}, b2.addr()))
	if got := mustAsk(t, old, h.addr, "b"); got != "one:b" {
		t.Fatalf("established session: %q, want one:b", got)
	}
	if got := mustAsk(t, client(t, "127.0.0.1:0"), h.addr, "c"); got != "two:c" {
		t.Fatalf("new session: %q, want two:c", got)
	}
}

func TestBalancesSessions(t *testing.T) {
	b1 := startBackend(t, "udp4", "", 1)
	b2 := startBackend(t, "udp4", "", 1)
	h := newHarness(t, opts{}, b1.addr(), b2.addr())
	for i := range 10 {
		c := client(t, "127.0.0.1:0")
		for range 3 {
			mustAsk(t, c, h.addr, fmt.Sprint(i))
		}
	}
	if b1.received() != 15 || b2.received() != 15 {
		t.Fatalf("round robin over sessions: %d and %d datagrams, want 15 each", b1.received(), b2.received())
	}
}

func TestIPv6(t *testing.T) {
	b := startBackend(t, "udp6", "", 1)
	h := newHarness(t, opts{listen: "[::1]:0"}, b.addr())
	c := client(t, "[::1]:0")
	if got := mustAsk(t, c, h.addr, "six"); got != "six" {
		t.Fatal(got)
	}
	if ss := h.e.Sessions(); len(ss) != 1 || ss[0].Listener != h.addr.String()+"/udp" {
		t.Fatalf("sessions %+v", ss)
	}
}

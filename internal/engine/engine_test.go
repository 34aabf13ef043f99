//go:build linux

package engine

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/admission"
	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// harness is an engine with one listener relaying to backends, logging to a
// buffer in the text format.
type harness struct {
	e    *Engine
	ln   *Listener
	addr string
	log  *testutil.Buffer
}

type harnessOpt struct {
	idle    time.Duration
	connect time.Duration
	onOpen  func()
	logTo   io.Writer // default: the harness's buffer
	level   string    // default: debug
	clients *admission.Clients
	onPeek  func(buffered int)
	change  func(*config.Proxy) // applied before the proxy is built
	cap     int                 // max_connections of the proxy
	half    time.Duration
	fault   func(point string)
	bw      int64 // bandwidth cap per direction, bytes per second
	perTurn int   // bytes a direction moves per turn; 0: maxPerTurn
}

func newHarness(t testing.TB, o harnessOpt, backends ...string) *harness {
	t.Helper()
	logs := new(testutil.Buffer)
	if o.logTo == nil {
		o.logTo = logs
	}
	if o.level == "" {
		o.level = "debug"
	}
	log, err := observe.NewLogger(o.logTo, "text", o.level)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{Logger: log, Loops: 2, onOpen: o.onOpen, onPeek: o.onPeek,
		fault: o.fault, perTurn: o.perTurn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)

	if o.connect == 0 {
		o.connect = 5 * time.Second
	}
	pc := pjconf.Proxy("test", "", backends...)
	pc.ConnectTimeout, pc.IdleTimeout = o.connect, o.idle
	pc.Bandwidth.PerConnection = o.bw
	pc.HalfCloseTimeout = o.half
	if o.change != nil {
		o.change(&pc)
	}
	p, err := proxy.Build(context.Background(), pc, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.MaxConnections = o.cap
	if o.clients != nil {
		p.Clients = o.clients
	}

	// A secluded address: no stray connection of another process
	// reaches the tests' listeners and takes the place of theirs.
	gln, err := net.Listen("tcp4", testutil.SecludedAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := gln.Addr().String()
	rc, _ := gln.(*net.TCPListener).SyscallConn()
	fd := -1
	_ = rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil {
		t.Fatal(err)
	}
	_ = gln.Close()
	ln, err := e.Listen(fd, addr, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.CloseListener(ln) })
	return &harness{e: e, ln: ln, addr: addr, log: logs}
}

// relayed is a harness with one backend and a connection through it:
// the client's end and the backend's.
func relayed(t *testing.T, o harnessOpt) (h *harness, client, backend *net.TCPConn) {
	t.Helper()
	baddr, conns := backendConns(t)
	h = newHarness(t, o, baddr)
	client = testutil.Dial(t, h.addr)
	return h, client, accepted(t, conns)
}

// exchange sends up (pattern 1 of n bytes, or what is left of it) from
// client and pattern 2 of n bytes from backend, each followed by a FIN,
// and fails the test unless each end received the other's pattern whole,
// in order.
func exchange(t *testing.T, client, backend *net.TCPConn, up io.Reader, n int64) {
	t.Helper()
	var wg sync.WaitGroup
	var upSum [32]byte
	wg.Go(func() {
		_, _ = io.Copy(client, up)
		_ = client.CloseWrite()
	})
	wg.Go(func() {
		_, _ = io.Copy(backend, testutil.NewPattern(2, n))
		_ = backend.CloseWrite()
	})
	wg.Go(func() {
		hash := sha256.New()
		_ = backend.SetReadDeadline(time.Now().Add(60 * time.Second))
		_, _ = io.Copy(hash, backend)
		copy(upSum[:], hash.Sum(nil))
	})
	hash := sha256.New()
	_ = client.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, _ = io.Copy(hash, client)
	wg.Wait()
	if [32]byte(hash.Sum(nil)) != testutil.PatternSum(2, n) || upSum != testutil.PatternSum(1, n) {
		t.Fatal("bytes were altered, lost or reordered in transit")
	}
}

// answerAfterFIN is the rest of an exchange whose client has sent its
// request and half-closed: backend must read want and the end, and its
// answer, sent after that, must reach the client, and then its FIN.
func answerAfterFIN(t *testing.T, client, backend *net.TCPConn, want string) {
	t.Helper()
	if got := testutil.ReadAll(t, backend); got != want {
		t.Fatalf("backend read %q, want %q", got, want)
	}
	if _, err := io.WriteString(backend, "response after EOF"); err != nil {
		t.Fatalf("backend write after the client's FIN: %v", err)
	}
	_ = backend.CloseWrite()
	if got := testutil.ReadAll(t, client); got != "response after EOF" {
		t.Fatalf("client read %q", got)
	}
}

// wantLine waits for the first log line with tag (a status as "[ok]", or
// a message) and fails the test unless it holds every one of wants.
func (h *harness) wantLine(t *testing.T, tag string, wants ...string) string {
	t.Helper()
	line := h.log.WaitLines(t, tag, 1)[0]
	for _, want := range wants {
		if !strings.Contains(line, want) {
			t.Fatalf("log line %q lacks %q", line, want)
		}
	}
	return line
}

// backendConns serves a listener whose accepted connections are handed to
// the test one by one.
func backendConns(t testing.TB) (string, <-chan *net.TCPConn) {
	t.Helper()
	ln := testutil.ListenSecluded(t)
	ch := make(chan *net.TCPConn, 16)
	testutil.Serve(t, ln, func(c net.Conn) {
		ch <- c.(*net.TCPConn)
		// Keep the handler (and so the connection) alive until the test
		// closes the connection or the test ends.
		_, _ = c.Read(make([]byte, 0))
		<-t.Context().Done()
	})
	return ln.Addr().String(), ch
}

func accepted(t testing.TB, ch <-chan *net.TCPConn) *net.TCPConn {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the backend got no connection within 10s")
		return nil
	}
}

func TestHalfCloseAnswerAfterEOF(t *testing.T) {
	// The client sends a request and half-closes; the backend answers
	// only after it has seen EOF. Both directions must survive the first
	// FIN, and the log must count both.
	baddr, conns := backendConns(t)
	h := newHarness(t, harnessOpt{}, baddr)
	client := testutil.Dial(t, h.addr)
	if _, err := io.WriteString(client, "request"); err != nil {
		t.Fatal(err)
	}
	_ = client.CloseWrite()
	answerAfterFIN(t, client, accepted(t, conns), "request")
	h.wantLine(t, "[ok]", "up=7 down=18 ")
}

func TestBackendCloseReachesClient(t *testing.T) {
	h, client, backend := relayed(t, harnessOpt{})
	if _, err := io.WriteString(backend, "bye"); err != nil {
		t.Fatal(err)
	}
	_ = backend.Close()
	if got := testutil.ReadAll(t, client); got != "bye" {
		t.Fatalf("client read %q", got)
	}
	// The client may still send (its direction is open) until it closes.
	_ = client.Close()
	h.log.WaitLines(t, "down=3", 1)
}

func TestBulkBothWaysIsSplicedAndIntact(t *testing.T) {
	const n = 16 << 20
	h, client, backend := relayed(t, harnessOpt{})
	exchange(t, client, backend, testutil.NewPattern(1, n), n)
	line := h.log.WaitLines(t, "[ok]", 1)[0]
	if !strings.Contains(line, "up=16777216 down=16777216 ") || !strings.HasSuffix(line, "relay=splice") {
		t.Fatalf("log line %q: want exact counts and relay=splice", line)
	}
}

func TestSmallMessagesAreCopied(t *testing.T) {
	h := newHarness(t, harnessOpt{}, testutil.StartEcho(t))
	c := testutil.Dial(t, h.addr)
	for range 100 {
		if got := testutil.RoundTrip(t, c, "ping"); got != "ping" {
			t.Fatalf("echo %q", got)
		}
	}
	_ = c.CloseWrite()
	testutil.ReadAll(t, c)
	line := h.log.WaitLines(t, "[ok]", 1)[0]
	if !strings.Contains(line, "up=400 down=400") || !strings.HasSuffix(line, "relay=copy") {
		t.Fatalf("log line %q", line)
	}
}

func TestResetPassesOn(t *testing.T) {
	h, client, backend := relayed(t, harnessOpt{})
	// A byte through proves pj has seen the connect complete: a reset
	// before that would be a failed connect, answered with a plain close.
	if _, err := io.WriteString(client, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(backend, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// The backend aborts: the client must see a reset, not an orderly EOF.
	_ = backend.SetLinger(0)
	_ = backend.Close()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read: %v, want ECONNRESET; log:\n%s", err, h.log)
	}
	if l := h.log.WaitLines(t, "[reset]", 1)[0]; !strings.Contains(l, "connection reset by peer") {
		t.Fatalf("log line %q", l)
	}
}

func TestIdleTimeout(t *testing.T) {
	h := newHarness(t, harnessOpt{idle: 50 * time.Millisecond}, testutil.StartEcho(t))
	c := testutil.Dial(t, h.addr)
	if got := testutil.RoundTrip(t, c, "x"); got != "x" {
		t.Fatal(got)
	}
	if got := testutil.ReadAll(t, c); got != "" {
		t.Fatalf("read %q", got)
	}
	h.log.WaitLines(t, "[timeout]", 1)
}

func TestIdleTimeoutSparedByTraffic(t *testing.T) {
	// Bytes every few milliseconds keep a connection open for several
	// idle periods. pj may time a connection out only after an idle
	// period in which no byte moved, so never sooner than that after a
	// write of this test that it relayed. A loaded machine may hold this
	// test, or the echo behind pj, still for a whole idle period: pj is
	// then right to time the connection out, the attempt proves nothing,
	// and another starts. Passing takes an attempt in which the connection
	// outlived the idle periods and ended as the test ended it.
	const idle = 300 * time.Millisecond
	echo := testutil.StartEcho(t)
	for attempt := 1; ; attempt++ {
		h := newHarness(t, harnessOpt{idle: idle}, echo)
		quiet := echoFor(t, h.addr, 4*idle)
		l := h.log.WaitLines(t, "] duration=", 1)[0]
		if strings.Contains(l, "[ok]") {
			return
		}
		if !strings.Contains(l, "[timeout]") || quiet < idle {
			t.Fatalf("log line %q: timed out %s after a write of this test that it relayed, within the idle timeout of %s", l, quiet, idle)
		}
		if attempt == 10 {
			t.Fatalf("the machine held the bytes still for an idle period in %d attempts in a row; last log line %q", attempt, l)
		}
		t.Logf("attempt %d: %s from the last echo to the end, pj rightly timed out; again", attempt, quiet)
	}
}

// echoFor echoes a byte through addr every 10 ms for span or until the
// connection ends, then ends it and reads to its end. It returns the time
// from the last write that pj surely saw, the last one echoed, to seeing
// the end.
func echoFor(t *testing.T, addr string, span time.Duration) (quiet time.Duration) {
	t.Helper()
	// pj counts an idle period from the connection's start too.
	echoed := time.Now()
	c := testutil.Dial(t, addr)
	_ = c.SetDeadline(time.Now().Add(span + 10*time.Second))
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	ended := func(err error) bool {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
			return true
		}
		if err != nil {
			t.Fatalf("echo: %v", err)
		}
		return false
	}
	for end := time.Now().Add(span); time.Now().Before(end); <-tick.C {
		wrote := time.Now()
		_, err := c.Write([]byte("x"))
		if ended(err) {
			return time.Since(echoed)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); ended(err) {
			return time.Since(echoed)
		}
		if b[0] != 'x' {
			t.Fatalf("echo %q", b[:])
		}
		echoed = wrote
	}
	_ = c.CloseWrite()
	if _, err := io.Copy(io.Discard, c); err != nil && !ended(err) {
		t.Fatalf("read to the end: %v", err)
	}
	return time.Since(echoed)
}

func TestCutEndsEveryConnection(t *testing.T) {
	h := newHarness(t, harnessOpt{}, testutil.StartEcho(t))
	var clients []*net.TCPConn
	for range 5 {
		c := testutil.Dial(t, h.addr)
		if got := testutil.RoundTrip(t, c, "x"); got != "x" {
			t.Fatal(got)
		}
		clients = append(clients, c)
	}
	h.e.Cut(ErrShutdown)
	for _, c := range clients {
		if got := testutil.ReadAll(t, c); got != "" {
			t.Fatalf("read %q", got)
		}
	}
	h.log.WaitLines(t, "[shutdown]", 5)
	select {
	case <-h.e.Idle():
	case <-time.After(10 * time.Second):
		t.Fatal("the engine is not idle after Cut")
	}
}

func TestPanicCostsOneConnectionOnly(t *testing.T) {
	var calls atomic.Int64
	h := newHarness(t, harnessOpt{onOpen: func() {
		if calls.Add(1) == 1 {
			panic("injected fault")
		}
	}}, testutil.StartEcho(t))
	first := testutil.Dial(t, h.addr)
	if got := testutil.ReadAll(t, first); got != "" {
		t.Fatalf("the panicked connection delivered %q", got)
	}
	second := testutil.Dial(t, h.addr)
	if got := testutil.RoundTrip(t, second, "alive"); got != "alive" {
		t.Fatalf("the next connection got %q", got)
	}
	testutil.WaitFor(t, 5*time.Second, "the panic to be counted", func() bool { return h.e.Panics() == 1 })
	// The panic's line carries the stack.
	h.wantLine(t, "panic while handling a connection", "injected fault", "goroutine", "engine.(*loop).openConn")
	h.log.WaitLines(t, "[error]", 1)
}

func TestPipesAreBoundedAfterBulk(t *testing.T) {
	// Many connections move bulk data at once; when they are over, a loop
	// keeps at most maxIdlePipes spare pipes, and no descriptor of theirs
	// is left: nothing waits for a garbage collection.
	const conns = 100
	h := newHarness(t, harnessOpt{}, testutil.StartEcho(t))
	base := testutil.OpenFDs(t, "self")
	msg := strings.Repeat("z", 256<<10)
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			go func() {
				_, _ = io.WriteString(c, msg)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
			if b, err := io.ReadAll(c); err != nil || len(b) != len(msg) {
				t.Errorf("echo: %d bytes, %v", len(b), err)
			}
		})
	}
	wg.Wait()
	h.log.WaitLines(t, "relay=splice", conns)
	testutil.WaitFor(t, 10*time.Second, "descriptors back to the idle level", func() bool {
		return testutil.OpenFDs(t, "self") <= base+2*maxIdlePipes*len(h.e.loops)
	})
}

func TestConnectionsSpreadOverLoops(t *testing.T) {
	// The kernel wakes the first loop for almost every connection; pj
	// must still spread them, or one core does all the work.
	h := newHarness(t, harnessOpt{}, testutil.StartEcho(t))
	const n = 32
	for range n {
		c := testutil.Dial(t, h.addr)
		testutil.RoundTrip(t, c, "x") // connected and relayed before the next
	}
	for _, l := range h.e.loops {
		owned := 0
		_ = l.poll.Call(l, func(l *loop) error { owned = l.open(); return nil })
		if owned < n/len(h.e.loops)-2 {
			t.Errorf("loop %d owns %d of %d connections; want about %d", l.id, owned, n, n/len(h.e.loops))
		}
	}
}

func TestClientTableStaysBoundedUnderAFloodOfSources(t *testing.T) {
	// 1500 clients, each from a source address of its own (127.0.x.y), one
	// connection each, against a table of 100: every one is served and
	// the table never holds more than its bound.
	const sources, capacity = 1500, 100
	clients := admission.NewClients(1000, 10, 5, capacity)
	h := newHarness(t, harnessOpt{clients: clients, logTo: io.Discard}, testutil.StartEcho(t))
	most := 0
	for i := range sources {
		src := net.IPv4(127, 0, byte(1+i/250), byte(1+i%250))
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src}}
		c, err := d.Dial("tcp", h.addr)
		if err != nil {
			t.Fatalf("client %s: %v", src, err)
		}
		if got := testutil.RoundTrip(t, c, "x"); got != "x" {
			t.Fatalf("client %s was not served", src)
		}
		_ = c.Close()
		most = max(most, clients.Stats().Entries)
	}
	if most > capacity {
		t.Fatalf("the table held %d clients, over its bound of %d", most, capacity)
	}
	if st := clients.Stats(); st.Evictions == 0 {
		t.Fatalf("stats %+v: a flood of %d sources must have evicted idle clients", st, sources)
	}
}

func TestNoEligibleBackendSaysWhereToLook(t *testing.T) {
	baddr, _ := backendConns(t)
	h := newHarness(t, harnessOpt{}, baddr)
	h.ln.Proxy().Backends()[0].SetAdmin(balance.AdminDrain)
	testutil.Dial(t, h.addr)
	h.wantLine(t, "[no_backend]", "no backend is eligible", "status page", "GET /api/v1/proxies")
}

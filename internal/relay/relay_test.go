package relay

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tcpPair returns the two ends of one loopback TCP connection.
func tcpPair(t *testing.T) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	dialed = testutil.Dial(t, ln.Addr().String())
	r := <-ch
	_ = ln.Close() // one connection per listener; fewer descriptors to count
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { _ = r.c.Close() })
	return dialed, r.c.(*net.TCPConn)
}

// setup is a relay between two loopback TCP connections: the test talks
// through client (the user's end) and backend (the server's end).
type setup struct {
	client, backend *net.TCPConn
	done            chan Result
	stats           *Stats
	cancel          context.CancelCauseFunc
}

func startRelay(t *testing.T, opt Options) *setup {
	t.Helper()
	client, proxyClient := tcpPair(t)
	proxyBackend, backend := tcpPair(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	t.Cleanup(func() { cancel(nil) })
	if opt.Stats == nil {
		opt.Stats = new(Stats)
	}
	s := &setup{client: client, backend: backend, done: make(chan Result, 1), stats: opt.Stats, cancel: cancel}
	go func() { s.done <- Relay(ctx, proxyClient, proxyBackend, opt) }()
	return s
}

func (s *setup) result(t *testing.T) Result {
	t.Helper()
	select {
	case r := <-s.done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end within 10s")
		return Result{}
	}
}

func readAll(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read to EOF: %v", err)
	}
	return string(b)
}

func TestRelayTCPPairSplices(t *testing.T) {
	// The relay must hand its splice loop the two *net.TCPConn: if a
	// wrapper ever slips in, Mode becomes "copy" and this test fails.
	s := startRelay(t, Options{})
	if _, err := io.WriteString(s.client, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s.backend, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("backend read %q, %v; want ping", buf, err)
	}
	if _, err := io.WriteString(s.backend, "pong"); err != nil {
		t.Fatal(err)
	}
	_ = s.client.CloseWrite()
	_ = s.backend.CloseWrite()
	if got := readAll(t, s.client); got != "pong" {
		t.Fatalf("client read %q, want pong", got)
	}
	r := s.result(t)
	if r.Mode != ModeSplice {
		t.Fatalf("mode = %q, want %q", r.Mode, ModeSplice)
	}
	if r.Up != 4 || r.Down != 4 || r.Err != nil {
		t.Fatalf("result = %+v, want up=4 down=4 err=nil", r)
	}
	if pipes.created.Load() == 0 {
		t.Fatalf("no pipe was ever made: the relay did not splice")
	}
}

func TestPairSplicesOnlyBareTCPConns(t *testing.T) {
	a, b := tcpPair(t)
	type wrapped struct{ net.Conn }
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	tests := []struct {
		name string
		x, y net.Conn
		want bool
	}{
		{"two TCPConns", a, b, true},
		{"wrapped client", wrapped{a}, b, false},
		{"wrapped backend", a, wrapped{b}, false},
		{"net.Pipe", p1, p2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pairSplices(tt.x, tt.y); got != tt.want {
				t.Fatalf("pairSplices = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRelayHalfClose(t *testing.T) {
	// The client sends a request and half-closes; the backend answers only
	// after it has seen EOF. Both directions must survive the first FIN.
	s := startRelay(t, Options{})
	go func() {
		_, _ = io.WriteString(s.client, "request")
		_ = s.client.CloseWrite()
	}()
	if got := readAll(t, s.backend); got != "request" {
		t.Fatalf("backend read %q, want request", got)
	}
	if _, err := io.WriteString(s.backend, "response after EOF"); err != nil {
		t.Fatalf("backend write after client FIN: %v", err)
	}
	_ = s.backend.CloseWrite()
	if got := readAll(t, s.client); got != "response after EOF" {
		t.Fatalf("client read %q", got)
	}
	r := s.result(t)
	if r.Err != nil || r.Up != 7 || r.Down != 18 {
		t.Fatalf("result = %+v, want up=7 down=18 err=nil", r)
	}
}

func TestRelayBackendCloseReachesClient(t *testing.T) {
	s := startRelay(t, Options{})
	if _, err := io.WriteString(s.backend, "bye"); err != nil {
		t.Fatal(err)
	}
	_ = s.backend.Close()
	if got := readAll(t, s.client); got != "bye" {
		t.Fatalf("client read %q, want bye", got)
	}
	// The client still may send; then it closes and the relay ends.
	_ = s.client.Close()
	r := s.result(t)
	if r.Down != 3 {
		t.Fatalf("down = %d, want 3", r.Down)
	}
}

func TestRelayBulkBothWays(t *testing.T) {
	const n = 8 << 20
	s := startRelay(t, Options{})
	var wg sync.WaitGroup
	var upSum, downSum [32]byte
	wg.Go(func() {
		_, _ = io.Copy(s.client, testutil.NewPattern(1, n))
		_ = s.client.CloseWrite()
	})
	wg.Go(func() {
		_, _ = io.Copy(s.backend, testutil.NewPattern(2, n))
		_ = s.backend.CloseWrite()
	})
	wg.Go(func() {
		h := sha256.New()
		_, _ = io.Copy(h, s.backend)
		copy(upSum[:], h.Sum(nil))
	})
	h := sha256.New()
	_, _ = io.Copy(h, s.client)
	copy(downSum[:], h.Sum(nil))
	wg.Wait()
	if upSum != testutil.PatternSum(1, n) || downSum != testutil.PatternSum(2, n) {
		t.Fatal("bytes were altered in transit")
	}
	r := s.result(t)
	if r.Up != n || r.Down != n || r.Err != nil {
		t.Fatalf("result = %+v, want %d each way", r, n)
	}
}

func TestRelayStatsAdvanceWhileOpen(t *testing.T) {
	s := startRelay(t, Options{})
	if _, err := io.WriteString(s.client, "12345"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s.backend, buf); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "live up count of 5", func() bool { return s.stats.Up.Load() == 5 })
	_ = s.client.Close()
	_ = s.backend.Close()
	s.result(t)
}

func TestRelayIdleTimeout(t *testing.T) {
	s := startRelay(t, Options{IdleTimeout: 50 * time.Millisecond})
	// Nothing is sent: the relay must end on its own and close the client.
	if got := readAll(t, s.client); got != "" {
		t.Fatalf("client read %q", got)
	}
	r := s.result(t)
	if !errors.Is(r.Err, ErrIdleTimeout) {
		t.Fatalf("err = %v, want ErrIdleTimeout", r.Err)
	}
}

func TestRelayIdleTimeoutSparedByTraffic(t *testing.T) {
	// Bytes every few milliseconds keep a connection with a much longer
	// idle timeout open for several idle periods.
	const idle = 300 * time.Millisecond
	s := startRelay(t, Options{IdleTimeout: idle})
	go testutil.Echo(s.backend)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(4 * idle)
	for i := 0; time.Now().Before(end); i++ {
		if got := testutil.RoundTrip(t, s.client, "x"); got != "x" {
			t.Fatalf("echo %d: got %q", i, got)
		}
		<-tick.C
	}
	_ = s.client.Close()
	r := s.result(t)
	if errors.Is(r.Err, ErrIdleTimeout) {
		t.Fatalf("relay timed out although bytes kept flowing: %+v", r)
	}
}

func TestRelayCancelCause(t *testing.T) {
	s := startRelay(t, Options{})
	cause := errors.New("grace period over")
	s.cancel(cause)
	if got := readAll(t, s.client); got != "" {
		t.Fatalf("client read %q", got)
	}
	if r := s.result(t); !errors.Is(r.Err, cause) {
		t.Fatalf("err = %v, want the cancellation cause", r.Err)
	}
}

func TestRelayResetPassesOn(t *testing.T) {
	s := startRelay(t, Options{})
	// The backend aborts its connection: the client must see a reset, not
	// an orderly EOF.
	_ = s.backend.SetLinger(0)
	_ = s.backend.Close()
	_ = s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := s.client.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read err = %v, want ECONNRESET", err)
	}
	if r := s.result(t); !IsReset(r.Err) {
		t.Fatalf("relay err = %v, want a reset", r.Err)
	}
}

func TestRelayCopyModeForOtherConns(t *testing.T) {
	c1, c2 := net.Pipe()
	b1, b2 := net.Pipe()
	done := make(chan Result, 1)
	go func() { done <- Relay(context.Background(), c2, b1, Options{}) }()
	go func() {
		buf := make([]byte, 5)
		_, _ = io.ReadFull(b2, buf)
		_, _ = b2.Write(buf)
		_ = b2.Close()
	}()
	if got := testutil.RoundTrip(t, c1, "hello"); got != "hello" {
		t.Fatalf("round trip %q", got)
	}
	r := <-done
	_ = c1.Close()
	if r.Mode != ModeCopy || r.Up != 5 || r.Down != 5 {
		t.Fatalf("result = %+v, want copy mode with 5 bytes each way", r)
	}
}

// panicConn panics on Read, standing in for a bug in a connection wrapper.
type panicConn struct{ net.Conn }

func (panicConn) Read([]byte) (int, error) { panic("boom") }

func TestRelayRecoversPanics(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	b1, b2 := net.Pipe()
	defer b2.Close()
	r := Relay(context.Background(), panicConn{c2}, b1, Options{})
	var pe *PanicError
	if !errors.As(r.Err, &pe) || pe.Value != "boom" || len(pe.Stack) == 0 {
		t.Fatalf("err = %v, want a PanicError with a stack", r.Err)
	}
}

func TestPipesDoNotLinger(t *testing.T) {
	// Hundreds of connections, each moving data, all at once; when they
	// are over, at most maxIdlePipes pipes may remain open: no garbage
	// collection is needed to release them.
	const conns = 200
	base := testutil.OpenFDs(t, "self")
	var wg sync.WaitGroup
	setups := make([]*setup, conns)
	for i := range setups {
		setups[i] = startRelay(t, Options{})
	}
	for i, s := range setups {
		wg.Go(func() {
			msg := "connection " + strconv.Itoa(i)
			_, _ = io.WriteString(s.client, msg)
			_ = s.client.CloseWrite()
			_, _ = io.Copy(io.Discard, s.backend)
			_ = s.backend.Close()
			_, _ = io.Copy(io.Discard, s.client)
			_ = s.client.Close()
		})
	}
	wg.Wait()
	for _, s := range setups {
		s.result(t)
	}
	pipes.mu.Lock()
	idle := len(pipes.free)
	pipes.mu.Unlock()
	if idle > maxIdlePipes {
		t.Fatalf("%d idle pipes kept, want at most %d", idle, maxIdlePipes)
	}
	// Every socket is closed now, the test's and the relay's: what is left
	// beyond base can only be spare pipes.
	if left := testutil.OpenFDs(t, "self") - base; left > 2*maxIdlePipes {
		t.Fatalf("%d descriptors more than before, want at most %d (spare pipes)", left, 2*maxIdlePipes)
	}
}

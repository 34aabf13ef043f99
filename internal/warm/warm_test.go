package warm_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/warm"
)

// startBackend starts a backend that sends each connection greeting and
// then reads it to the end (pj closes it).
func startBackend(t *testing.T, greeting string) *testutil.Counted {
	t.Helper()
	return testutil.StartCounted(t, func(c net.Conn, _ int64) {
		if greeting != "" {
			_, _ = io.WriteString(c, greeting)
		}
		_, _ = io.Copy(io.Discard, c)
	})
}

type pools struct {
	*warm.Pools
	set          *balance.Set
	hits, misses atomic.Uint64
}

func newPools(t *testing.T, s warm.Settings, addrs ...string) *pools {
	t.Helper()
	cs := config.Default().Defaults
	cs.HealthCheck.Interval = 0
	var backends []config.Backend
	for _, a := range addrs {
		backends = append(backends, config.Backend{Address: a, Weight: 1})
	}
	set, err := balance.NewSet(context.Background(), "test", backends, cs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &pools{set: set}
	p.Pools = warm.New(set, s, &p.hits, &p.misses, nil, nil)
	t.Cleanup(p.Stop)
	return p
}

func (p *pools) backend(i int) *balance.Backend { return p.set.Pool().Backends()[i] }

func settings(size int, maxAge time.Duration) warm.Settings {
	return warm.Settings{Size: size, MaxAge: maxAge, ConnectTimeout: 5 * time.Second}
}

func waitIdle(t *testing.T, p *pools, addr string, n int) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, "the pool to hold its connections", func() bool { return p.Idle(addr) == n })
}

// readFD reads what is waiting on a taken descriptor, within 5 s.
func readFD(t *testing.T, fd int, n int) string {
	t.Helper()
	buf := make([]byte, n)
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < n && time.Now().Before(deadline) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, 100); err != nil && !errors.Is(err, unix.EINTR) {
			t.Fatal(err)
		}
		m, err := unix.Read(fd, buf[got:])
		if err == unix.EAGAIN {
			continue
		}
		if err != nil || m == 0 {
			t.Fatalf("read: %d bytes, %v", m, err)
		}
		got += m
	}
	return string(buf[:got])
}

func TestTakeHitAndMiss(t *testing.T) {
	b := startBackend(t, "220 ready\r\n")
	p := newPools(t, settings(2, time.Minute), b.Addr)
	if fd := p.Take(p.backend(0)); fd >= 0 {
		t.Fatalf("Take before Start = %d, want -1 (a miss)", fd)
	}
	p.Start()
	waitIdle(t, p, b.Addr, 2)
	fd := p.Take(p.backend(0))
	if fd < 0 {
		t.Fatal("Take from a full pool missed")
	}
	defer unix.Close(fd)
	// The greeting the backend sent before anyone took the connection
	// is still there, first.
	if got := readFD(t, fd, len("220 ready\r\n")); got != "220 ready\r\n" {
		t.Errorf("read %q from the taken connection, want the greeting", got)
	}
	if h, m := p.hits.Load(), p.misses.Load(); h != 1 || m != 1 {
		t.Errorf("hits %d, misses %d; want 1 and 1", h, m)
	}
	// The pool fills again: 2, then 1 replacing the taken one.
	waitIdle(t, p, b.Addr, 2)
	b.WaitAccepted(t, 3)
}

func TestClosedByBackendIsDiscarded(t *testing.T) {
	b := startBackend(t, "")
	p := newPools(t, settings(3, time.Minute), b.Addr)
	p.SetDialer(func(ctx context.Context, a netip.AddrPort, d time.Duration) (int, error) {
		if b.Accepted.Load() >= 3 {
			return -1, errors.New("no more, for this test")
		}
		return warm.Dial(ctx, a, d)
	})
	p.Start()
	waitIdle(t, p, b.Addr, 3)
	testutil.WaitFor(t, 5*time.Second, "the backend to see 3 connections", func() bool {
		return len(b.Conns()) == 3
	})
	// The backend closes two of them (whichever Take would try first).
	conns := b.Conns()
	survivor := conns[0]
	_ = conns[1].Close()
	_ = conns[2].Close()
	// Take skips the closed ones (or a refill dropped them first) and
	// gives the survivor.
	fd := -1
	testutil.WaitFor(t, 5*time.Second, "a take", func() bool {
		fd = p.Take(p.backend(0))
		return fd >= 0
	})
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	in4 := sa.(*unix.SockaddrInet4)
	if got, want := netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)).String(), survivor.RemoteAddr().String(); got != want {
		t.Errorf("took the connection from %s, want the one the backend left open (%s)", got, want)
	}
	// Those Take did not look at are dropped by the next refill.
	testutil.WaitFor(t, 5*time.Second, "the closed connections to be dropped", func() bool {
		p.Refill()
		return p.Idle(b.Addr) == 0
	})
}

func TestAlive(t *testing.T) {
	tests := []struct {
		name     string
		greeting string
		closed   bool // the backend closes the connection
		want     bool
	}{
		{"quiet", "", false, true},
		{"bytes waiting", "hello", false, true},
		{"closed by the backend", "", true, false},
		{"greeting then closed", "hello", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := startBackend(t, tt.greeting)
			fd, err := warm.Dial(context.Background(), netip.MustParseAddrPort(b.Addr), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			testutil.WaitFor(t, 5*time.Second, "the backend to accept", func() bool {
				return len(b.Conns()) == 1
			})
			if tt.greeting != "" {
				testutil.WaitFor(t, 5*time.Second, "the greeting", func() bool {
					var x [1]byte
					n, _, _ := unix.Recvfrom(fd, x[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
					return n > 0
				})
			}
			if tt.closed {
				_ = b.Conns()[0].Close()
			}
			if tt.want {
				if !warm.Alive(fd) {
					t.Fatal("Alive = false, want true")
				}
				return
			}
			testutil.WaitFor(t, 5*time.Second, "Alive to see the end", func() bool { return !warm.Alive(fd) })
		})
	}
}

func TestMaxAgeReplaces(t *testing.T) {
	b := startBackend(t, "")
	p := newPools(t, settings(2, 50*time.Millisecond), b.Addr)
	p.Start()
	// The first two expire, are closed, and are replaced.
	testutil.WaitFor(t, 10*time.Second, "the first connections to be replaced", func() bool {
		return b.Ended.Load() >= 2 && b.Accepted.Load() >= 4
	})
	waitIdle(t, p, b.Addr, 2)
}

func TestRefillIsBounded(t *testing.T) {
	b := startBackend(t, "")
	p := newPools(t, settings(10, time.Minute), b.Addr)
	var inFlight, peak atomic.Int64
	release := make(chan struct{})
	p.SetDialer(func(ctx context.Context, a netip.AddrPort, d time.Duration) (int, error) {
		n := inFlight.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		defer inFlight.Add(-1)
		select {
		case <-release:
		case <-ctx.Done():
			return -1, ctx.Err()
		}
		return warm.Dial(ctx, a, d)
	})
	p.Start()
	testutil.WaitFor(t, 5*time.Second, "the first dials", func() bool { return inFlight.Load() == warm.MaxDials })
	// More looks at the pool start nothing more while those are in flight.
	for range 5 {
		p.Refill()
	}
	if n := p.Dialing(b.Addr); n != warm.MaxDials {
		t.Fatalf("%d dials in flight, want %d", n, warm.MaxDials)
	}
	close(release)
	waitIdle(t, p, b.Addr, 10)
	if got := peak.Load(); got > warm.MaxDials {
		t.Errorf("at most %d dials were in flight at once, want at most %d", got, warm.MaxDials)
	}
	b.WaitAccepted(t, 10)
}

func TestDownBackendIsNotRefilled(t *testing.T) {
	b := startBackend(t, "")
	p := newPools(t, settings(2, time.Minute), b.Addr)
	p.Start()
	waitIdle(t, p, b.Addr, 2)
	// Health checks mark it down (fall 1).
	be := p.backend(0)
	be.Observe(balance.Result{Err: errors.New("check failed")}, 1, 1)
	p.Refill()
	if n := p.Idle(b.Addr); n != 0 {
		t.Errorf("idle %d for a down backend, want 0 (closed)", n)
	}
	testutil.WaitFor(t, 5*time.Second, "the backend to see its warm connections closed", func() bool { return b.Ended.Load() == 2 })
	for range 5 {
		p.Refill()
		if fd := p.Take(be); fd >= 0 {
			t.Fatal("Take gave a connection to a down backend")
		}
	}
	if n, d := b.Accepted.Load(), p.Dialing(b.Addr); n != 2 || d != 0 {
		t.Errorf("accepted %d, dialling %d while down; want 2 and 0", n, d)
	}
	// Up again: refilled.
	be.Observe(balance.Result{OK: true, Passive: true}, 1, 1)
	waitIdle(t, p, b.Addr, 2)
}

func TestAdoptAndStop(t *testing.T) {
	a, b := startBackend(t, ""), startBackend(t, "")
	old := newPools(t, settings(2, time.Minute), a.Addr, b.Addr)
	old.Start()
	waitIdle(t, old, a.Addr, 2)
	waitIdle(t, old, b.Addr, 2)

	// The successor keeps a, drops b.
	cs := config.Default().Defaults
	cs.HealthCheck.Interval = 0
	set, err := balance.NewSet(context.Background(), "test", []config.Backend{{Address: a.Addr, Weight: 1}}, cs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var h, m atomic.Uint64
	next := warm.New(set, settings(2, time.Minute), &h, &m, nil, old.Pools)
	t.Cleanup(next.Stop)
	next.Start()
	old.Stop()
	if n := next.Idle(a.Addr); n != 2 {
		t.Errorf("the successor holds %d of a's connections, want the 2 it took over", n)
	}
	testutil.WaitFor(t, 5*time.Second, "b's warm connections to be closed", func() bool { return b.Ended.Load() == 2 })
	if n, e := a.Accepted.Load(), a.Ended.Load(); n != 2 || e != 0 {
		t.Errorf("a accepted %d and saw %d closed; want 2 and 0", n, e)
	}
	next.Stop()
	testutil.WaitFor(t, 5*time.Second, "a's warm connections to be closed at stop", func() bool { return a.Ended.Load() == 2 })
}

func TestTakeConnOfAPlainPool(t *testing.T) {
	// The TLS path takes plain warm connections as a net.Conn (a route
	// that terminates TLS and relays plain TCP to its backends).
	b := startBackend(t, "220 ready\r\n")
	p := newPools(t, settings(1, time.Minute), b.Addr)
	p.Start()
	waitIdle(t, p, b.Addr, 1)
	c := p.TakeConn(p.backend(0))
	if c == nil {
		t.Fatal("TakeConn from a full pool missed")
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len("220 ready\r\n"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "220 ready\r\n" {
		t.Fatalf("read %q, %v; want the greeting", buf, err)
	}
	if h, m := p.hits.Load(), p.misses.Load(); h != 1 || m != 0 {
		t.Errorf("hits %d, misses %d; want 1 and 0", h, m)
	}
}

func TestChangedTLSStartsAfresh(t *testing.T) {
	// A reload that changes backend_tls (or turns it on) must not hand
	// out connections made with the old settings.
	b := startBackend(t, "")
	plain := func(raw net.Conn, _ *balance.Backend, _ time.Time) (net.Conn, error) { return raw, nil }
	withTLS := func(name string) warm.Settings {
		s := settings(1, time.Minute)
		s.Handshake = plain
		s.TLS = config.BackendTLS{ServerName: name}
		return s
	}
	tests := []struct {
		name      string
		old, next warm.Settings
		kept      bool
	}{
		{"the same TLS", withTLS("a"), withTLS("a"), true},
		{"another server name", withTLS("a"), withTLS("b"), false},
		{"TLS turned on", settings(1, time.Minute), withTLS("a"), false},
		{"TLS turned off", withTLS("a"), settings(1, time.Minute), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := newPools(t, tt.old, b.Addr)
			old.Start()
			waitIdle(t, old, b.Addr, 1)
			accepted := b.Accepted.Load()
			var h, m atomic.Uint64
			next := warm.New(old.set, tt.next, &h, &m, nil, old.Pools)
			t.Cleanup(next.Stop)
			// The successor dials nothing: what it holds, it took over.
			next.SetDialer(func(context.Context, netip.AddrPort, time.Duration) (int, error) {
				return -1, errors.New("no dial in this test")
			})
			next.Start()
			old.Stop()
			if got := next.Idle(b.Addr) == 1 && b.Accepted.Load() == accepted; got != tt.kept {
				t.Errorf("the successor kept the warm connection: %v, want %v", got, tt.kept)
			}
		})
	}
}

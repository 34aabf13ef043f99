package udp

import (
	"net"
	"runtime"
	"testing"
	"time"
)

// roundTrips sends n datagrams through h from c, each after the echo of
// the one before.
func roundTrips(tb testing.TB, c *net.UDPConn, n int) {
	tb.Helper()
	msg, buf := make([]byte, 64), make([]byte, 128)
	for i := range n {
		if _, err := c.Write(msg); err != nil {
			tb.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			tb.Fatalf("round trip %d: %v", i, err)
		}
	}
}

// mallocs counts the heap allocations of the whole process (the loops'
// goroutines included) while f runs.
func mallocs(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.Mallocs - before.Mallocs
}

func dialTo(tb testing.TB, h *harness) *net.UDPConn {
	tb.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(h.addr))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// TestNoAllocationPerDatagram: relaying datagrams of an established
// session allocates nothing, and neither does a session that a DNS-like
// exchange opens and ends (once the loop has spare sessions to reuse).
func TestNoAllocationPerDatagram(t *testing.T) {
	if testing.Short() {
		t.Skip("counts allocations over thousands of round trips")
	}
	b := startBackend(t, "udp4", "", 1)
	t.Run("datagrams", func(t *testing.T) {
		h := newHarness(t, opts{}, b.addr())
		c := dialTo(t, h)
		roundTrips(t, c, 100) // the session exists, the tables have grown
		const n = 2000
		// The client's and the backend's own reads and writes allocate
		// nothing either; a stray allocation of the runtime may happen.
		if got := mallocs(func() { roundTrips(t, c, n) }); got > n/20 {
			t.Fatalf("%d allocations for %d round trips: the data path allocates per datagram", got, n)
		}
	})
	t.Run("sessions", func(t *testing.T) {
		h := newHarness(t, opts{responses: 1}, b.addr())
		msg, buf := make([]byte, 64), make([]byte, 128)
		// exchange is one query from a new client port, and its answer.
		exchange := func(to *net.UDPAddr) {
			c, err := net.DialUDP("udp", nil, to)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(buf); err != nil {
				t.Fatal(err)
			}
		}
		viaPJ, direct := net.UDPAddrFromAddrPort(h.addr), b.conn.LocalAddr().(*net.UDPAddr)
		for range 200 {
			exchange(viaPJ) // the loops' spare sessions and tables have grown
		}
		const n = 500
		// The same exchanges straight with the backend allocate what the
		// client does (a net.UDPConn, its file); through pj, pj must add
		// next to nothing: a session, its socket, its log line.
		base := mallocs(func() {
			for range n {
				exchange(direct)
			}
		})
		got := mallocs(func() {
			for range n {
				exchange(viaPJ)
			}
		})
		// Under the race detector an occasional allocation of its own shows
		// (about one session in two); one per session would be pj's.
		if per := (float64(got) - float64(base)) / n; per >= 1 {
			t.Fatalf("%.2f allocations per session in pj (%d through pj, %d direct, %d exchanges)", per, got, base, n)
		}
	})
}

// BenchmarkRoundTrip is one 64-byte datagram to the backend and its echo
// back, through an established session: the client, pj's loop and the
// backend take turns, so this is a latency, not a throughput.
func BenchmarkRoundTrip(b *testing.B) {
	be := startBackend(b, "udp4", "", 1)
	h := newHarness(b, opts{}, be.addr())
	c := dialTo(b, h)
	roundTrips(b, c, 100)
	b.ReportAllocs()
	b.ResetTimer()
	roundTrips(b, c, b.N)
}

// BenchmarkSession is a DNS-like exchange: a new client port, one query,
// its answer, and the session's end (responses 1) with its log line.
func BenchmarkSession(b *testing.B) {
	be := startBackend(b, "udp4", "", 1)
	h := newHarness(b, opts{responses: 1}, be.addr())
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c := dialTo(b, h)
		roundTrips(b, c, 1)
		_ = c.Close()
	}
}

//go:build linux

package engine

import (
	"crypto/tls"
	"io"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

// rawEcho is a backend made of raw system calls, so that the benchmarks'
// allocation counts are the engine's own: it accepts one connection at a
// time and echoes until EOF.
func rawEcho(b *testing.B) netip.AddrPort {
	b.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		b.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	port := sa.(*unix.SockaddrInet4).Port
	done := make(chan struct{})
	go func() {
		defer close(done)
		var rsa unix.RawSockaddrAny
		buf := make([]byte, 64<<10)
		for {
			n := uint32(unix.SizeofSockaddrAny)
			c, _, e := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(ptr(&rsa)), uintptr(ptr(&n)), unix.SOCK_CLOEXEC, 0, 0)
			if e != 0 {
				return // the listener was shut down
			}
			for {
				r, err := unix.Read(int(c), buf)
				if r <= 0 || err != nil {
					break
				}
				if _, err := unix.Write(int(c), buf[:r]); err != nil {
					break
				}
			}
			_ = unix.Close(int(c))
		}
	}()
	b.Cleanup(func() {
		_ = unix.Shutdown(fd, unix.SHUT_RDWR) // wakes the blocked accept
		<-done
		_ = unix.Close(fd)
	})
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
}

// rawDial connects to addr with blocking system calls.
func rawDial(b *testing.B, sa *unix.SockaddrInet4) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		b.Fatal(err)
	}
	return fd
}

// rawRoundTrip writes msg to fd and reads as many bytes back into buf.
func rawRoundTrip(b *testing.B, fd int, msg, buf []byte) {
	if _, err := unix.Write(fd, msg); err != nil {
		b.Fatal(err)
	}
	for got := 0; got < len(msg); {
		n, err := unix.Read(fd, buf[got:len(msg)])
		if n <= 0 || err != nil {
			b.Fatal(n, err)
		}
		got += n
	}
}

// rawHangUp half-closes fd, expects the end of the answer, and closes fd.
func rawHangUp(b *testing.B, fd int, buf []byte) {
	_ = unix.Shutdown(fd, unix.SHUT_WR)
	if n, _ := unix.Read(fd, buf); n != 0 {
		b.Fatal("no EOF")
	}
	_ = unix.Close(fd)
}

func sockaddrOf(b *testing.B, addr string) *unix.SockaddrInet4 {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		b.Fatal(err)
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}

// BenchmarkConnection is the whole per-connection path: accept, choose a
// backend, connect, relay one byte each way, half-close both directions,
// close and log (text format, to io.Discard). It reports allocations per
// connection, which are the engine's: client and backend use raw system
// calls.
func BenchmarkConnection(b *testing.B) {
	benchConnections(b, 0)
}

// BenchmarkConnectionIdleTimeout is BenchmarkConnection with an idle
// timeout of an hour: every connection arms and releases timers.
func BenchmarkConnectionIdleTimeout(b *testing.B) {
	benchConnections(b, time.Hour)
}

func benchConnections(b *testing.B, idle time.Duration) {
	backend := rawEcho(b)
	h := newHarness(b, harnessOpt{logTo: io.Discard, level: "info", idle: idle}, backend.String())
	sa := sockaddrOf(b, h.addr)
	one := []byte{'x'}
	buf := make([]byte, 1)
	b.ReportAllocs()
	for b.Loop() {
		fd := rawDial(b, sa)
		rawRoundTrip(b, fd, one, buf)
		rawHangUp(b, fd, buf)
	}
}

// BenchmarkRoundTrip is one 64-byte request and its echo over an open
// connection: the cost pj adds to every message of a chatty protocol.
func BenchmarkRoundTrip(b *testing.B) {
	backend := rawEcho(b)
	h := benchHarness(b, backend.String())
	fd := rawDial(b, sockaddrOf(b, h.addr))
	defer unix.Close(fd)
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		rawRoundTrip(b, fd, msg, buf)
	}
}

func benchHarness(b *testing.B, backend string) *harness {
	b.Helper()
	return newHarness(b, harnessOpt{logTo: io.Discard, level: "info"}, backend)
}

func ptr[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }

// BenchmarkRoutedConnection is BenchmarkConnection through a proxy with
// routes by server name: the client sends a real ClientHello (Go's, with
// its post-quantum key share), which pj reads whole, routes, and relays
// before the echo comes back.
func BenchmarkRoutedConnection(b *testing.B) {
	backend := rawEcho(b)
	h := routed(b, harnessOpt{logTo: io.Discard, level: "info"}, 5*time.Second,
		pjconf.Route("other", config.Match{SNI: []string{"other.example.com"}}, "127.0.0.1:1"),
		pjconf.Route("app", config.Match{SNI: []string{"app.example.com"}}, backend.String()))
	hello := clientHello(b, &tls.Config{ServerName: "app.example.com", NextProtos: []string{"h2", "http/1.1"}})
	sa := sockaddrOf(b, h.addr)
	buf := make([]byte, len(hello))
	b.ReportAllocs()
	for b.Loop() {
		fd := rawDial(b, sa)
		rawRoundTrip(b, fd, hello, buf)
		rawHangUp(b, fd, buf)
	}
}

// BenchmarkBandwidthCap sends 1 MiB in 4 KiB messages through a 2 MiB/s
// cap, over a fresh connection each time, and reports the rate reached
// beyond the first burst as a fraction of the cap (cap-fraction): close to
// 1 on a quiet machine.
func BenchmarkBandwidthCap(b *testing.B) {
	const rate = 2 << 20
	baddr, conns := backendConns(b)
	h := newHarness(b, harnessOpt{bw: rate, logTo: io.Discard, level: "info"}, baddr)
	var sum float64
	for b.Loop() {
		client := testutil.Dial(b, h.addr)
		backend := accepted(b, conns)
		sum += sendCapped(b, client, backend, rate)
		_ = client.Close()
		_ = backend.Close()
	}
	b.ReportMetric(sum/float64(b.N)/rate, "cap-fraction")
}

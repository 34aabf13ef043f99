// Package testutil has the loopback servers and waiting helpers pj's tests
// share. Everything listens on 127.0.0.1 (or ::1) only, and everything it
// starts is stopped by t.Cleanup.
package testutil

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Listen binds a TCP listener on an ephemeral loopback port of network
// ("tcp4" or "tcp6") and closes it at the end of the test.
func Listen(t testing.TB, network string) net.Listener {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "tcp6" {
		addr = "[::1]:0"
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// Serve runs handle for every connection ln accepts, until the test ends;
// Cleanup closes ln and every accepted connection and waits for the handlers.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					_ = c.Close()
				}()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// Counted is a loopback backend that counts and keeps the connections it
// accepts, for tests that count what pj opened and closed (warm pools,
// reloads).
type Counted struct {
	Addr     string
	Accepted atomic.Int64 // connections accepted
	Ended    atomic.Int64 // connections served to their end
	mu       sync.Mutex
	conns    []net.Conn
}

// StartCounted starts a Counted backend on tcp4 loopback. serve serves
// each connection, given its number (from 1); a nil serve reads to the
// end and answers nothing.
func StartCounted(t testing.TB, serve func(c net.Conn, n int64)) *Counted {
	t.Helper()
	if serve == nil {
		serve = func(c net.Conn, _ int64) { _, _ = io.Copy(io.Discard, c) }
	}
	b := &Counted{}
	ln := Listen(t, "tcp4")
	b.Addr = ln.Addr().String()
	Serve(t, ln, func(c net.Conn) {
		n := b.Accepted.Add(1)
		b.mu.Lock()
		b.conns = append(b.conns, c)
		b.mu.Unlock()
		serve(c, n)
		b.Ended.Add(1)
	})
	return b
}

// WaitAccepted waits up to 10 s for n connections to be accepted, and
// fails the test if more were. A client's connect is done before the
// backend's accept returns: a test that saw n connects waits here before
// it counts.
func (b *Counted) WaitAccepted(t testing.TB, n int64) {
	t.Helper()
	WaitFor(t, 10*time.Second, "the backend to accept "+strconv.FormatInt(n, 10)+" connections", func() bool { return b.Accepted.Load() >= n })
	if got := b.Accepted.Load(); got != n {
		t.Errorf("the backend accepted %d connections, want %d", got, n)
	}
}

// Conns returns the connections accepted so far, in order.
func (b *Counted) Conns() []net.Conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.conns)
}

// ServeTLS is Serve for TLS servers with cfg: handle gets each connection
// once its handshake is done (a failed handshake is dropped), with 30 s to
// serve it.
func ServeTLS(t testing.TB, ln net.Listener, cfg *tls.Config, handle func(*tls.Conn)) {
	t.Helper()
	Serve(t, ln, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
		if tc.Handshake() != nil {
			return
		}
		handle(tc)
	})
}

// Accept waits up to 10 s for ln's next connection and closes it at the
// end of the test.
func Accept(t testing.TB, ln net.Listener) net.Conn {
	t.Helper()
	if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
		_ = d.SetDeadline(time.Now().Add(10 * time.Second))
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Echo writes back everything it reads; at the client's end of stream it
// half-closes its side, so the client sees EOF after the echo.
func Echo(c net.Conn) {
	_, _ = io.Copy(c, c)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// StartEcho starts an echo server on tcp4 loopback and returns its address.
func StartEcho(t testing.TB) string {
	t.Helper()
	ln := Listen(t, "tcp4")
	Serve(t, ln, Echo)
	return ln.Addr().String()
}

// ClosedAddr returns a loopback address nothing listens on, reserved for
// the test: connecting to it is refused at once, and no other socket of
// any process is given its port (as an ephemeral port, or as the source
// port of a connection) until the test ends. The test may listen on it:
// the reservation is a socket bound with SO_REUSEADDR and never listening,
// which lets a listener that sets SO_REUSEADDR too (as Go's and pj's do)
// bind the same address.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	return reserve(t, [4]byte{127, 0, 0, 1})
}

// SecludedAddr is ClosedAddr on a loopback address picked at random in
// 127.1.0.0-127.254.255.255 rather than on 127.0.0.1. Processes on a busy
// machine dial 127.0.0.1 ports they think are theirs (a health check of a
// backend long gone, a wait for a server): there one may reach the test's
// listener. A test that counts every connection its listener takes
// listens on a secluded address, where only its own connections come.
func SecludedAddr(t testing.TB) string {
	t.Helper()
	ip := [4]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))}
	return reserve(t, ip)
}

// ListenSecluded listens on tcp4 on a secluded address (see SecludedAddr)
// until the test ends.
func ListenSecluded(t testing.TB) net.Listener {
	t.Helper()
	addr := SecludedAddr(t)
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// SilentAddr returns a loopback address that never answers a connect,
// until the test ends: a socket listening with an accept queue already
// full, so the kernel drops the SYNs that come.
func SilentAddr(t testing.TB) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil { // a queue of one
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	Dial(t, addr) // fills the queue
	return addr
}

// reserve binds a socket to ip and a port the kernel picks, with
// SO_REUSEADDR, never listening, until the test ends (see ClosedAddr).
func reserve(t testing.TB, ip [4]byte) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("reserve a port: %v", err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatalf("reserve a port: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: ip}); err != nil {
		t.Fatalf("reserve a port: %v", err)
	}
	sa, err := unix.Getsockname(fd)
	in, ok := sa.(*unix.SockaddrInet4)
	if err != nil || !ok {
		t.Fatalf("reserve a port: %v (%T)", err, sa)
	}
	return net.JoinHostPort(net.IP(ip[:]).String(), strconv.Itoa(in.Port))
}

// Dial connects to addr with a timeout and closes the connection at the end
// of the test.
func Dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// RoundTrip writes msg to c and reads back as many bytes, within 10 s.
func RoundTrip(t testing.TB, c net.Conn, msg string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read back %d bytes: %v", len(msg), err)
	}
	return string(buf)
}

// Trickle sends a byte from from to to every tenth of timeout, for twice
// timeout, through a connection that a timeout ends once it is quiet:
// the trickle keeps it busy, and it must not end meanwhile. since is a
// moment before the timeout's clock started (before the FIN that starts a
// half-close timeout, say).
//
// If the connection ends less than timeout after since or after the last
// byte through it was sent, the test fails: it was not quiet. If it ends
// later, the machine kept the test from sending for a whole timeout (a
// loaded one can): the connection was quiet and rightly ended, this run
// proves nothing, and the test is skipped.
//
// It returns when the last byte was sent: an end on time comes no sooner
// than timeout after it.
func Trickle(t testing.TB, from, to net.Conn, timeout time.Duration, since time.Time) (last time.Time) {
	t.Helper()
	tick := time.NewTicker(timeout / 10)
	defer tick.Stop()
	buf := make([]byte, 1)
	passed := since // when the last byte through it was sent
	for end := time.Now().Add(2 * timeout); time.Now().Before(end); <-tick.C {
		sent := time.Now()
		_, err := io.WriteString(from, ".")
		if err == nil {
			_ = to.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadFull(to, buf)
		}
		if err != nil {
			trickleEnded(t, passed, timeout, err)
			return passed
		}
		passed = sent
	}
	return passed
}

// WantQuiet fails the test unless timeout has passed since last, when the
// last byte through a connection was sent: a connection whose end was
// just seen ended early if not. (Its clock read the byte no earlier than
// it was sent, and its end is seen no earlier than it happened.)
func WantQuiet(t testing.TB, last time.Time, timeout time.Duration) {
	t.Helper()
	if quiet := time.Since(last); quiet < timeout {
		t.Fatalf("the connection ended %s after its last byte, within its %s timeout", quiet, timeout)
	}
}

// trickleEnded judges the end of a connection that carried a trickle:
// passed is when the last byte through it was sent.
func trickleEnded(t testing.TB, passed time.Time, timeout time.Duration, err error) {
	t.Helper()
	if IsTimeout(err) {
		t.Fatalf("a byte of the trickle did not come through within 10s: %v", err)
	}
	t.Logf("the connection ended while a trickle was sent: %v", err)
	WantQuiet(t, passed, timeout)
	t.Skipf("the machine kept the test from sending for %s, longer than the %s timeout: the end was right, and this run proves nothing",
		time.Since(passed).Round(time.Millisecond), timeout)
}

// Prefixes parses CIDR prefixes, as a test writes them.
func Prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// WaitFor polls cond until it is true, failing the test with what after
// timeout. Tests wait for conditions, never for a fixed time.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// WriteFile writes text to a file named name in a fresh directory of the
// test's and returns its path.
func WriteFile(t testing.TB, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Buffer is a bytes.Buffer safe for concurrent writers, for capturing logs.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns the complete lines written so far that contain substr.
func (b *Buffer) Lines(substr string) []string {
	var out []string
	for line := range strings.Lines(b.String()) {
		if strings.HasSuffix(line, "\n") && strings.Contains(line, substr) {
			out = append(out, strings.TrimSuffix(line, "\n"))
		}
	}
	return out
}

// WaitLines waits until at least n complete lines contain substr and
// returns them.
func (b *Buffer) WaitLines(t testing.TB, substr string, n int) []string {
	t.Helper()
	var lines []string
	WaitFor(t, 10*time.Second, "log lines containing "+substr, func() bool {
		lines = b.Lines(substr)
		return len(lines) >= n
	})
	return lines
}

// OpenFDs counts the open descriptors of process pid ("self" for this one).
func OpenFDs(t testing.TB, pid string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + pid + "/fd")
	if err != nil {
		t.Fatalf("count descriptors: %v", err)
	}
	return len(ents)
}

// Pattern is a deterministic, incompressible-enough byte stream for bulk
// transfer tests: byte i is a function of i and seed.
type Pattern struct {
	seed byte
	off  int64
	n    int64
}

// NewPattern returns a reader of n pattern bytes.
func NewPattern(seed byte, n int64) *Pattern { return &Pattern{seed: seed, n: n} }

func (p *Pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if rem := p.n - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	for i := range b {
		x := uint64(p.off+int64(i)) * 0x9E3779B97F4A7C15
		b[i] = byte(x>>56) ^ p.seed
	}
	p.off += int64(len(b))
	return len(b), nil
}

// PatternSum is the SHA-256 of n pattern bytes of seed.
func PatternSum(seed byte, n int64) [32]byte {
	h := sha256.New()
	_, _ = io.Copy(h, NewPattern(seed, n))
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// IsTimeout reports whether err is a deadline expiry.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Identify starts a backend that tells every client its name, then
// closes; it returns the backend's address.
func Identify(t testing.TB, name string) string {
	t.Helper()
	return IdentifyListener(t, name).Addr().String()
}

// IdentifyListener is Identify returning the backend's listener, for a
// test that closes it to take the backend down.
func IdentifyListener(t testing.TB, name string) net.Listener {
	t.Helper()
	ln := Listen(t, "tcp4")
	Serve(t, ln, func(c net.Conn) { _, _ = io.WriteString(c, name) })
	return ln
}

// Ask connects to addr and returns what the backend says before it
// closes; any failure, or an answer of nothing, is an error.
func Ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", errors.New("closed without a byte")
	}
	return string(b), nil
}

// ServeHTTP starts an HTTP server on tcp4 loopback that answers every
// request with body, until the test ends, and returns its address.
func ServeHTTP(t testing.TB, body string) string {
	t.Helper()
	ln := Listen(t, "tcp4")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, body)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// Get fetches url on a connection of its own, within 10 s, and returns
// the body of a 200 answer.
func Get(t testing.TB, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %q, %v", url, res.Status, body, err)
	}
	return string(body)
}

// SendAndRead sends msg to addr, half-closes, and returns the answer,
// read to its end within 10 s.
func SendAndRead(t testing.TB, addr, msg string) string {
	t.Helper()
	c := Dial(t, addr)
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	return ReadAll(t, c)
}

// ReadAll reads c to its end of stream within 10 s.
func ReadAll(t testing.TB, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read to EOF: %v", err)
	}
	return string(b)
}

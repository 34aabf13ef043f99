package testutil

import (
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Connects reports whether a connection to addr is established within
// 2 s; the connection is closed at once. A proxy that stopped listening
// refuses it.
func Connects(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// Exchange connects to addr, sends msg, half-closes and returns all the
// other end says until its end of stream.
func Exchange(t testing.TB, addr, msg string) string {
	t.Helper()
	c := Dial(t, addr)
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	return ReadAll(t, c)
}

// WriteAtomically replaces the file at path by renaming a new one over
// it, as editors and configuration managers do: a reader sees the old
// content or the new, never a part.
func WriteAtomically(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// CheckDraining checks what a proxy does once it has begun to shut down:
// it refuses a new connection to addr, and still relays c, a connection
// to an echo backend established before ("during" and its echo).
func CheckDraining(t testing.TB, addr string, c net.Conn) {
	t.Helper()
	if Connects(addr) {
		t.Fatal("a new connection was accepted after shutdown began")
	}
	if got := RoundTrip(t, c, "during"); got != "during" {
		t.Fatalf("the established connection broke during the drain: %q", got)
	}
}

// BlackHole returns a loopback address whose SYNs are never answered: a
// listening socket with a backlog of 0 whose accept queue is already full,
// so the kernel drops further SYNs and a connect hangs until its timeout.
func BlackHole(t testing.TB) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	// Fill the accept queue; the connections that get in are never accepted.
	for range 8 {
		c, err := net.DialTimeout("tcp4", addr, 100*time.Millisecond)
		if err != nil {
			if IsTimeout(err) {
				return addr // the queue is full: SYNs are being dropped
			}
			t.Fatalf("fill accept queue: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	t.Fatal("could not fill the accept queue of a backlog-0 listener")
	return ""
}

package testutil

import (
	"net"
	"os"
	"testing"
	"time"
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

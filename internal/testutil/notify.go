package testutil

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// ListenNotify opens a unixgram socket as a service manager opens the one
// it names in NOTIFY_SOCKET, and returns its path and the datagrams sent
// to it until the test ends. Past 1024 the test has not read, datagrams
// are dropped.
func ListenNotify(t testing.TB) (path string, msgs <-chan string) {
	t.Helper()
	// A short directory: a socket path is limited to 107 bytes.
	dir, err := os.MkdirTemp("", "pjn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path = filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			select {
			case ch <- string(buf[:n]):
			default: // the test stopped reading; keep draining
			}
		}
	}()
	t.Cleanup(func() { _ = conn.Close(); <-done })
	return path, ch
}

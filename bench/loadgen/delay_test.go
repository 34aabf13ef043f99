package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestDelayLine(t *testing.T) {
	backend := startBackend(t)
	const d = 20 * time.Millisecond
	port := startServing(t, "delay", "-to", backend, "-delay", d.String())
	start := time.Now()
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// The first exchange waits for the connect's round trip too: nothing
	// reaches the backend before 2 × d after the delay line accepted,
	// which may be before Dial returns here, so its 3 × d count from
	// before the connect. The next takes one round trip.
	for i, least := range []time.Duration{3 * d, 2 * d} {
		t0 := time.Now()
		if i == 0 {
			t0 = start
		}
		msg := []byte{'a' + byte(i), 'z'}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
		if took := time.Since(t0); took < least {
			t.Errorf("exchange %d took %s, want at least %s", i+1, took, least)
		}
	}
	// The end of stream is passed on, after the delay, both ways.
	_ = c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Errorf("after the half-close: %q, %v", rest, err)
	}
}

func TestDelayLineRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"delay", "-to", "127.0.0.1:1", "-delay", "0s"},
		{"delay", "-to", "127.0.0.1:1", "-delay", "2s"},
		{"delay", "-to", "10.0.0.1:80"},
	} {
		if err := Run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// startServing runs the loadgen command args (one that serves until its
// context ends: serve, delay) until the test ends, and returns the port it
// wrote to its -port-file.
func startServing(t *testing.T, args ...string) string {
	t.Helper()
	portFile := filepath.Join(t.TempDir(), "port")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, append(args, "-port-file", portFile), io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", args[0], err)
		}
	})
	var port string
	testutil.WaitFor(t, 10*time.Second, args[0]+"'s port file", func() bool {
		b, _ := os.ReadFile(portFile)
		port = strings.TrimSpace(string(b))
		return port != ""
	})
	return port
}

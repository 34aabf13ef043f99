package testutil

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

func TestClosedAddrIsRefusedReservedAndListenable(t *testing.T) {
	addr := ClosedAddr(t)
	if _, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
	// Nobody else gets the port, as an ephemeral port or as the source
	// port of a connection.
	peer := Listen(t, "tcp4")
	for range 500 {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		got := ln.Addr().String()
		_ = ln.Close()
		c, err := net.Dial("tcp4", peer.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		src := c.LocalAddr().String()
		_ = c.Close()
		if got == addr || src == addr {
			t.Fatalf("the reserved %s was handed out (listen %s, source %s)", addr, got, src)
		}
	}
	// The test itself may listen on it, and again after closing.
	for range 2 {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listen on the reserved address: %v", err)
		}
		_ = ln.Close()
	}
}

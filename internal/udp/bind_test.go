//go:build linux

package udp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// reusePortSocket binds a UDP socket with SO_REUSEPORT to addr, as another
// program of the same user may, and returns its port.
func reusePortSocket(t *testing.T, addr string) uint16 {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

func TestBindRefusesAnAddressInUse(t *testing.T) {
	// Another socket holds the address, with SO_REUSEPORT: pj's sockets
	// must not join its group (the kernel would share the clients between
	// that program and pj), but report the address in use.
	port := reusePortSocket(t, "127.0.0.1:0")
	s, err := Bind(context.Background(), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String(), 2)
	if err == nil {
		s.Close()
		t.Fatalf("bound 127.0.0.1:%d, which another socket holds", port)
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("bind an address in use: %v; want EADDRINUSE", err)
	}
}

func TestBindPortZeroTakesAFreePort(t *testing.T) {
	// Port 0 becomes a port no socket holds. The kernel's choice for a
	// socket with SO_REUSEPORT may be the port of another group of the same
	// user, and pj's sockets then share that program's clients: with a
	// thousand such ports held, a few hundred binds meet one of them all
	// but certainly.
	const others, binds = 1000, 300
	held := map[uint16]bool{}
	for range others {
		held[reusePortSocket(t, "127.0.0.1:0")] = true
	}
	for range binds {
		s, err := Bind(context.Background(), "127.0.0.1:0", 2)
		if err != nil {
			t.Fatal(err)
		}
		port := s.Addr().Port()
		s.Close()
		if held[port] {
			t.Fatalf("port 0 became %d, which another socket holds", port)
		}
	}
}

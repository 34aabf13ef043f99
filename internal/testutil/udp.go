package testutil

import (
	"net"
	"net/netip"
	"sync"
	"testing"
)

// ServeUDP starts a UDP server on udp4 loopback that answers every
// datagram with reply(datagram), sent back to its source; a nil reply
// answers nothing. The datagram's bytes are reused once reply returns.
// The server stops at the end of the test.
func ServeUDP(t testing.TB, reply func([]byte) []byte) netip.AddrPort {
	t.Helper()
	return HandleUDP(t, func(c *net.UDPConn, datagram []byte, from netip.AddrPort) {
		if out := reply(datagram); out != nil {
			_, _ = c.WriteToUDPAddrPort(out, from)
		}
	})
}

// HandleUDP is ServeUDP for a server that answers in its own way: handle
// gets every datagram, its source and the server's socket to answer on.
func HandleUDP(t testing.TB, handle func(c *net.UDPConn, datagram []byte, from netip.AddrPort)) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1<<16)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed
			}
			handle(c, buf[:n], from)
		}
	})
	t.Cleanup(func() { _ = c.Close(); wg.Wait() })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

//go:build linux

package udp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sockets are the bound sockets of one UDP listen address, one per event
// loop. They share the address through SO_REUSEPORT, and the kernel sends
// each client's datagrams to the same socket (it hashes the addresses and
// ports), so each client's session lives in one loop, unshared.
type Sockets struct {
	fds   []int
	local netip.AddrPort
	// wildcard sockets (0.0.0.0, ::) learn from each datagram the address
	// it was sent to, so that the reply leaves from that address.
	wildcard bool
	family   int
}

// Addr is the bound address; port 0 has become the kernel's choice.
func (s *Sockets) Addr() netip.AddrPort { return s.local }

// UDPAddr is the bound address as the net package writes it.
func (s *Sockets) UDPAddr() *net.UDPAddr { return net.UDPAddrFromAddrPort(s.local) }

// Close closes sockets that were never handed to an engine.
func (s *Sockets) Close() {
	for _, fd := range s.fds {
		_ = unix.Close(fd) // never served: nothing to report
	}
	s.fds = nil
}

// Bind binds n sockets (at least one) to addr, a HOST:PORT as the net
// package takes it: an empty host is every address of both families. It is
// all or nothing.
//
// The first socket binds without SO_REUSEPORT and takes it after: bound
// with it, the socket would join the group of any other socket of the
// same user holding that address with SO_REUSEPORT (and port 0 may become
// such a port), and the kernel would share the clients between that
// program and pj. Without it, an address in use is refused, and port 0
// becomes a port no socket holds; the others then join the first.
func Bind(ctx context.Context, addr string, n int) (*Sockets, error) {
	n = max(n, 1)
	s := &Sockets{}
	lc := func(reusePort bool) *net.ListenConfig {
		return &net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = prepare(int(fd), reusePort) }); err != nil {
				return err
			}
			return serr
		}}
	}
	for i := range n {
		at := addr
		if i > 0 {
			// The others join the first's port (it may have been 0).
			at = net.JoinHostPort(s.local.Addr().String(), fmt.Sprint(s.local.Port()))
		}
		pc, err := lc(i > 0).ListenPacket(ctx, "udp", at)
		if err != nil {
			s.Close()
			return nil, err
		}
		fd, err := detach(pc.(*net.UDPConn))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.fds = append(s.fds, fd)
		if i == 0 {
			if err := s.first(fd, n > 1); err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	return s.ready()
}

// first learns the bound address from the first socket, and opens it to
// the others (SO_REUSEPORT) if there are any.
func (s *Sockets) first(fd int, others bool) error {
	if err := s.learn(fd); err != nil {
		return err
	}
	if !others {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return os.NewSyscallError("setsockopt SO_REUSEPORT", err)
	}
	return nil
}

// ready returns s once its sockets of a wildcard address are asked for
// the address each datagram came to (wantPktinfo); on failure, it closes
// them all.
func (s *Sockets) ready() (*Sockets, error) {
	if s.wildcard {
		for _, fd := range s.fds {
			if err := wantPktinfo(fd, s.family); err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	return s, nil
}

// learn reads the family and the bound address of the first socket.
func (s *Sockets) learn(fd int) error {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return os.NewSyscallError("getsockname", err)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		s.family = unix.AF_INET
		s.local = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		s.family = unix.AF_INET6
		s.local = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	default:
		return fmt.Errorf("getsockname: unexpected address %T", sa)
	}
	s.wildcard = s.local.Addr().IsUnspecified()
	return nil
}

// prepare sets the options of a listening socket before it is bound.
func prepare(fd int, reusePort bool) error {
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEPORT", err)
		}
	}
	// UDP GRO: datagrams of one client that arrive together are read in
	// one go (kernels before 5.0 refuse it; then they come one by one).
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	return nil
}

// wantPktinfo asks the kernel to tell, with each datagram, the address it
// was sent to. On a dual-stack socket IPV6_PKTINFO covers IPv4 clients
// too, as mapped addresses.
func wantPktinfo(fd, family int) error {
	if family == unix.AF_INET {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			return os.NewSyscallError("setsockopt IP_PKTINFO", err)
		}
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil {
		return os.NewSyscallError("setsockopt IPV6_RECVPKTINFO", err)
	}
	return nil
}

// detach takes a bound socket away from Go's poller: the engine gets a
// duplicate of its descriptor (non-blocking: the flag belongs to the open
// file, which the duplicate shares) and the original is closed.
func detach(c *net.UDPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	if err := c.Close(); err != nil {
		_ = unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

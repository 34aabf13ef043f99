package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/config"
)

// inherited is a listening socket pj did not bind itself: one a service
// manager passed in (socket activation). It serves the proxy whose listen
// address it has. pj keeps its own descriptor for as long as it runs and
// gives the engine a duplicate, so that a proxy removed by a reload and
// added back by a later one finds the socket again.
type inherited struct {
	file  *os.File
	addr  netip.AddrPort
	inUse bool
	// key is set for a socket an upgrading pj handed over: it serves the
	// listener with that key, and no other.
	key string
}

// adoptInherited keeps the TCP listening sockets among files and closes
// the others, saying why on the log.
func (s *Server) adoptInherited(files []*os.File) {
	for _, f := range files {
		addr, err := listeningTCPAddr(f)
		if err != nil {
			s.log.Warn("ignoring a socket passed by the service manager", "name", f.Name(), "error", err.Error())
			_ = f.Close() // unusable; the manager keeps its own copy
			continue
		}
		s.inherited = append(s.inherited, &inherited{file: f, addr: addr})
	}
}

// listeningTCPAddr returns the local address of f if it is a listening
// TCP socket, else an error that says what it is.
func listeningTCPAddr(f *os.File) (addr netip.AddrPort, err error) {
	// Through SyscallConn: f.Fd() would make the socket blocking.
	rc, err := f.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	cerr := rc.Control(func(fd uintptr) { addr, err = socketTCPAddr(int(fd)) })
	if cerr != nil {
		return netip.AddrPort{}, cerr
	}
	return addr, err
}

func socketTCPAddr(fd int) (netip.AddrPort, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("not a socket: %w", err)
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read the socket's family: %w", err)
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read whether the socket listens: %w", err)
	}
	const want = " (pj takes listening TCP sockets: ListenStream=PORT or ADDRESS:PORT)"
	switch {
	case typ == unix.SOCK_DGRAM && (domain == unix.AF_INET || domain == unix.AF_INET6):
		return netip.AddrPort{}, errors.New("a udp socket" + want)
	case domain != unix.AF_INET && domain != unix.AF_INET6:
		return netip.AddrPort{}, errors.New("not an IP socket (a unix socket?)" + want)
	case typ != unix.SOCK_STREAM:
		return netip.AddrPort{}, errors.New("not a stream socket" + want)
	case listening != 1:
		return netip.AddrPort{}, errors.New("a TCP socket that does not listen" + want)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("read the socket's address: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, errors.New("a socket without an IP address" + want)
}

// takeInherited returns the unused inherited socket whose address is
// listen's, or nil. An address of every interface (an empty host,
// 0.0.0.0 or [::]) takes a socket of every interface with that port,
// whatever its family: systemd's ListenStream=8080 is [::]:8080 and
// accepts IPv4 too. A host name matches the socket of one of its
// addresses. Port 0 matches nothing.
func (s *Server) takeInherited(listen, key string) *inherited {
	if len(s.inherited) == 0 {
		return nil
	}
	for _, in := range s.inherited {
		if in.key != "" && !in.inUse && in.key == key {
			in.inUse = true
			return in
		}
	}
	host, port, err := config.SplitHostPort(listen)
	if err != nil || port == 0 {
		return nil
	}
	var ips []netip.Addr
	anyIP := host == ""
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		anyIP = ip.IsUnspecified()
		ips = []netip.Addr{ip}
	} else if !anyIP {
		ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
		ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		cancel()
		if err != nil {
			return nil // binding will say what is wrong with the name
		}
	}
	for _, in := range s.inherited {
		if in.inUse || in.key != "" || in.addr.Port() != port {
			continue
		}
		if anyIP && in.addr.Addr().IsUnspecified() || containsAddr(ips, in.addr.Addr()) {
			in.inUse = true
			return in
		}
	}
	return nil
}

func containsAddr(ips []netip.Addr, a netip.Addr) bool {
	for _, ip := range ips {
		if ip.Unmap() == a {
			return true
		}
	}
	return false
}

// listen returns a listener for the proxy's listen address: an inherited
// socket with that address, or a newly bound one.
func (s *Server) listen(lc *net.ListenConfig, pc config.Proxy, key string) (*net.TCPListener, *inherited, error) {
	if in := s.takeInherited(pc.Listen, key); in != nil {
		ln, err := net.FileListener(in.file) // a duplicate: pj keeps in.file
		if err == nil {
			err = setListenerOptions(ln.(*net.TCPListener))
		}
		if err != nil {
			in.inUse = false
			if ln != nil {
				_ = ln.Close()
			}
			return nil, nil, fmt.Errorf("use the socket passed by the service manager for %s: %w", in.addr, err)
		}
		return ln.(*net.TCPListener), in, nil
	}
	ln, err := lc.Listen(context.Background(), "tcp", pc.Listen)
	if err != nil {
		return nil, nil, err
	}
	return ln.(*net.TCPListener), nil, nil
}

// setListenerOptions gives an inherited socket the options pj sets on
// the sockets it binds.
func setListenerOptions(ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	return controlListener("tcp", ln.Addr().String(), rc)
}

// releaseInherited makes the inherited socket of a listener that stops
// serving available to a later reload.
func (s *Server) releaseInherited(in *inherited) {
	if in == nil {
		return
	}
	in.inUse = false
	if in.key != "" {
		// A handed-over socket is not kept for later: unserved, its
		// clients must be refused, not left waiting.
		_ = in.file.Close()
		s.inherited = slices.DeleteFunc(s.inherited, func(x *inherited) bool { return x == in })
	}
}

// closeInherited closes pj's descriptors of the inherited sockets.
func (s *Server) closeInherited() {
	var errs []error
	for _, in := range s.inherited {
		errs = append(errs, in.file.Close())
	}
	s.inherited = nil
	if err := errors.Join(errs...); err != nil {
		s.log.Debug("closing the sockets passed by the service manager", "error", err.Error())
	}
}

// logUnusedInherited warns about inherited sockets no proxy took: their
// clients wait in the accept queue until a reload adds a proxy there.
func (s *Server) logUnusedInherited() {
	var unused []string
	for _, in := range s.inherited {
		if !in.inUse && in.key == "" {
			unused = append(unused, in.addr.String())
		}
	}
	if len(unused) > 0 {
		s.log.Warn("sockets passed by the service manager that no proxy listens on: connections to them wait unanswered; add a proxy with that listen address, or remove them from the .socket unit",
			"addresses", strings.Join(unused, ","))
	}
}

package engine

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/admission"
	"github.com/pj-proxy/pj/internal/observe"
)

// Admission happens at accept, before any backend is contacted, in this
// order: the PROXY protocol header of a trusted peer (its address becomes
// the client's), the allow/deny lists, the per-client rate and
// connection cap. A refused client is closed at once, without a byte sent.

var (
	// errDenied ends a connection refused by the allow/deny lists.
	errDenied = errors.New("refused by the allow/deny lists")
	// errRateLimited ends a connection over its client's rate.
	errRateLimited = errors.New("over the client's rate of new connections")
	// errClientLimit ends a connection over its client's connection cap.
	errClientLimit = errors.New("over the client's cap of concurrent connections")
	// errUntrustedHeader ends a connection whose peer sent a PROXY
	// protocol header without being trusted to.
	errUntrustedHeader = errors.New("a PROXY protocol header from a peer not in accept_proxy_protocol.trusted")
	// errNoHeader ends a connection of a trusted peer that sent no
	// (or a malformed) PROXY protocol header.
	errNoHeader = errors.New("no valid PROXY protocol header from a trusted peer")
)

// statusOfRefusal maps an admission error to its log status.
func statusOfRefusal(err error) (observe.Status, bool) {
	switch {
	case errors.Is(err, errDenied), errors.Is(err, errUntrustedHeader), errors.Is(err, errNoHeader):
		return observe.StatusDenied, true
	case errors.Is(err, errRateLimited):
		return observe.StatusRateLimited, true
	case errors.Is(err, errClientLimit):
		return observe.StatusLimit, true
	}
	return "", false
}

// admit applies the lists and the per-client limits to c, then starts
// connecting it.
func (l *loop) admit(c *conn) {
	p := c.proxy
	addr := c.client.Addr()
	if p.ACL != nil && !p.ACL.Allowed(addr) {
		l.refuse(c, errDenied)
		return
	}
	if p.Clients != nil {
		switch p.Clients.Admit(addr, l.wall) {
		case admission.RateLimited:
			l.refuse(c, errRateLimited)
			return
		case admission.OverLimit:
			l.refuse(c, errClientLimit)
			return
		}
		c.clients = p.Clients // Release at close
	}
	c.order = p.Pool().Start(addr)
	c.deadline = l.now + int64(p.ConnectTimeout)
	l.connectNext(c)
}

// refuse closes c at once: nothing was sent to it, no backend contacted.
func (l *loop) refuse(c *conn, err error) {
	c.closedBy = sidePJ
	status, _ := statusOfRefusal(err)
	l.close(c, status, err)
}

// maxHeader bounds a PROXY protocol header: v1 is at most 107 bytes; v2
// is 16 plus its TLVs, which load balancers keep small.
const maxHeader = 4096

// readHeader reads the PROXY protocol header of a trusted peer. It peeks
// first, and consumes exactly the header, so the client's own bytes that
// came in the same segment stay in the socket for the relay.
func (l *loop) readHeader(c *conn) {
	buf := l.buf[:maxHeader]
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(c.cfd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_PEEK, 0, 0)
	switch {
	case e == unix.EAGAIN || e == unix.EINTR:
		return // more will come: edge-triggered epoll reports it
	case e != 0:
		l.abort(c, sideError(sideClient, e))
		return
	case n == 0:
		l.refuse(c, fmt.Errorf("%w: the peer closed before sending one", errNoHeader))
		return
	}
	size, err := headerSize(buf[:n])
	if err != nil {
		l.refuse(c, fmt.Errorf("%w: %v", errNoHeader, err))
		return
	}
	if size == 0 {
		return // incomplete: wait for the rest
	}
	h, err := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(buf[:size]), size))
	if err != nil {
		l.refuse(c, fmt.Errorf("%w: %v", errNoHeader, err))
		return
	}
	if got, err := sysRead(int(c.cfd), buf[:size]); err != nil || got != size {
		l.abort(c, sideError(sideClient, fmt.Errorf("consume the PROXY header: %d bytes, %v", got, err)))
		return
	}
	if h.Command.IsProxy() {
		if src, ok := addrPortOf(h.SourceAddr); ok {
			c.client = src
		}
		if dst, ok := addrPortOf(h.DestinationAddr); ok {
			c.local = dst
		}
	}
	c.state = stateConnecting
	c.timerAt = 0
	l.admit(c)
}

// headerSize returns the size of the PROXY protocol header that b starts
// with, 0 if b holds only the start of one, or an error if b does not
// start with one.
func headerSize(b []byte) (int, error) {
	v1, v2 := []byte("PROXY "), proxyproto.SIGV2
	switch {
	case len(b) < len(v1) && bytes.HasPrefix(v1, b), len(b) < len(v2) && bytes.HasPrefix(v2, b):
		return 0, nil
	case bytes.HasPrefix(b, v1):
		if i := bytes.Index(b, []byte("\r\n")); i >= 0 {
			return i + 2, nil
		}
		if len(b) >= 107 {
			return 0, errors.New("a v1 header longer than 107 bytes")
		}
		return 0, nil
	case bytes.HasPrefix(b, v2):
		if len(b) < 16 {
			return 0, nil
		}
		size := 16 + int(binary.BigEndian.Uint16(b[14:16]))
		if size > maxHeader {
			return 0, fmt.Errorf("a v2 header of %d bytes (at most %d)", size, maxHeader)
		}
		if len(b) < size {
			return 0, nil
		}
		return size, nil
	}
	return 0, errors.New("the connection does not start with one")
}

// looksLikeHeader reports whether a client's first bytes start with a
// PROXY protocol signature. (A shorter first read is not judged: "PRO"
// may as well begin a protocol of the client's own.)
func looksLikeHeader(b []byte) bool {
	return bytes.HasPrefix(b, []byte("PROXY ")) || bytes.HasPrefix(b, proxyproto.SIGV2)
}

func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
}

// proxyHeader formats the header pj sends a backend for c: the client's
// address, and the address it connected to.
func (l *loop) proxyHeader(c *conn) ([]byte, error) {
	if !c.local.IsValid() {
		sa, err := unix.Getsockname(int(c.cfd))
		if err != nil {
			return nil, fmt.Errorf("getsockname: %w", err)
		}
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			c.local = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
		case *unix.SockaddrInet6:
			c.local = netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
		}
	}
	src, dst := net.TCPAddrFromAddrPort(c.client), net.TCPAddrFromAddrPort(c.local)
	if c.client.Addr().Is4() != c.local.Addr().Is4() {
		// A v4 client of a v6 listener (or the reverse): the header needs
		// one family; say it in IPv6, where both fit.
		src = net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(c.client.Addr().As16()), c.client.Port()))
		dst = net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(c.local.Addr().As16()), c.local.Port()))
	}
	return proxyproto.HeaderProxyFromAddrs(c.proxy.ProxyProtocol, src, dst).Format()
}

//go:build linux

package engine

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"unsafe"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
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

// statusOf maps the error that ends a connection early (refused, cut,
// timed out) to its log status; any other error is a reset.
func statusOf(err error) observe.Status {
	switch {
	case errors.Is(err, errDenied), errors.Is(err, errUntrustedHeader), errors.Is(err, errNoHeader):
		return observe.StatusDenied
	case errors.Is(err, errRateLimited):
		return observe.StatusRateLimited
	case errors.Is(err, errClientLimit):
		return observe.StatusLimit
	case errors.Is(err, ErrIdleTimeout), errors.Is(err, ErrHalfCloseTimeout):
		return observe.StatusTimeout
	case errors.Is(err, ErrShutdown):
		return observe.StatusShutdown
	case errors.Is(err, ErrKilled):
		return observe.StatusKilled
	case errors.As(err, new(*PanicError)):
		return observe.StatusError
	}
	return observe.StatusReset
}

// admit applies the lists and the per-client limits to c, then starts
// choosing its route.
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
	l.pickRoute(c)
}

// refuse closes c at once: nothing was sent to it, no backend contacted.
func (l *loop) refuse(c *conn, err error) {
	c.closedBy = observe.SidePJ
	l.close(c, statusOf(err), err)
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
		l.abort(c, sideError(observe.SideClient, e))
		return
	case n == 0:
		l.refuse(c, fmt.Errorf("%w: the peer closed before sending one", errNoHeader))
		return
	}
	size, h, err := parseHeader(buf[:n])
	switch {
	case err != nil:
		l.refuse(c, fmt.Errorf("%w: %v", errNoHeader, err))
		return
	case size == 0:
		return // incomplete: wait for the rest
	}
	if got, err := sysRead(int(c.cfd), buf[:size]); err != nil || got != size {
		l.abort(c, sideError(observe.SideClient, fmt.Errorf("consume the PROXY header: %d bytes, %v", got, err)))
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
	l.disarm(c)
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

// parseHeader reads the PROXY protocol header that b starts with. It
// returns its size and the header, size 0 if b holds only the start of
// one, or an error if b does not start with a valid one. A v2 header's
// TLVs are checked too (see checkTLVs).
func parseHeader(b []byte) (int, *proxyproto.Header, error) {
	size, err := headerSize(b)
	if err != nil || size == 0 {
		return 0, nil, err
	}
	h, err := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(b[:size]), size))
	if err != nil {
		return 0, nil, err
	}
	if h.Version == 2 && h.Command.IsProxy() {
		if err := checkTLVs(h, b[:size]); err != nil {
			return 0, nil, err
		}
	}
	return size, h, nil
}

// checkTLVs validates the TLVs of the v2 header h, raw as received: each
// one's length (go-proxyproto splits them), an SSL TLV's own sub-TLVs
// (go-proxyproto's tlvparse), and the CRC32c of the whole header when a
// CRC32C TLV is present (computed with its value as zeros, as the PROXY
// protocol specifies for PP2_TYPE_CRC32C).
func checkTLVs(h *proxyproto.Header, raw []byte) error {
	tlvs, err := h.TLVs()
	if err != nil {
		return fmt.Errorf("TLVs: %w", err)
	}
	for _, t := range tlvs {
		switch t.Type {
		case proxyproto.PP2_TYPE_CRC32C:
			if len(t.Value) != 4 {
				return fmt.Errorf("a CRC32c TLV of %d bytes (4 expected)", len(t.Value))
			}
			if !crcMatches(raw, t.Value) {
				return errors.New("the CRC32c does not match the header")
			}
		case proxyproto.PP2_TYPE_SSL:
			if _, err := tlvparse.SSL(t); err != nil {
				return fmt.Errorf("SSL TLV: %w", err)
			}
		}
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcMatches reports whether want is the CRC32c of the v2 header raw with
// its CRC32C TLV's value taken as zeros. checkTLVs has split the TLVs, so
// they are well formed; their start is found from the address family.
func crcMatches(raw, want []byte) bool {
	start := 16
	switch raw[13] >> 4 { // the address family
	case 1:
		start += 12
	case 2:
		start += 36
	case 3:
		start += 216
	}
	for i := start; i+3 <= len(raw); {
		n := int(binary.BigEndian.Uint16(raw[i+1 : i+3]))
		if proxyproto.PP2Type(raw[i]) == proxyproto.PP2_TYPE_CRC32C && n == 4 && i+7 <= len(raw) {
			c := crc32.Update(0, castagnoli, raw[:i+3])
			c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
			c = crc32.Update(c, castagnoli, raw[i+7:])
			return c == binary.BigEndian.Uint32(want)
		}
		i += 3 + n
	}
	return false
}

// signature is what a client's first bytes say about a PROXY protocol
// header.
type signature uint8

const (
	notSignature    signature = iota // not a header
	partOfSignature                  // the start of a signature: more bytes decide
	isSignature                      // a header's signature
)

// signatureOf judges a client's first bytes (up to 12 suffice).
func signatureOf(b []byte) signature {
	for _, sig := range [][]byte{[]byte("PROXY "), proxyproto.SIGV2} {
		switch {
		case bytes.HasPrefix(b, sig):
			return isSignature
		case len(b) < len(sig) && bytes.HasPrefix(sig, b):
			return partOfSignature
		}
	}
	return notSignature
}

// judgeSignature refuses a PROXY protocol header from a peer that is not
// trusted to send one, however its first bytes are split across reads: it
// peeks at them and holds the relay (wait) while they are only the start
// of a signature. What it peeks at stays in the socket for the relay.
func (l *loop) judgeSignature(c *conn) (wait bool, err error) {
	var b [12]byte
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(c.cfd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_PEEK, 0, 0)
	switch {
	case e == unix.EAGAIN || e == unix.EINTR:
		c.ready &^= cReadable
		return true, nil
	case e != 0 || n == 0:
		c.checkSig = false // the read reports the error or the end
		return false, nil
	}
	switch signatureOf(b[:n]) {
	case isSignature:
		c.checkSig = false
		return false, errUntrustedHeader // closed by pj: closedBy stays none
	case partOfSignature:
		if c.ready&cHup == 0 {
			// Edge-triggered epoll reports the next bytes, or the FIN.
			c.ready &^= cReadable
			return true, nil
		}
		// The peer has finished: these bytes are all it sends.
	}
	c.checkSig = false
	return false, nil
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
	return proxyproto.HeaderProxyFromAddrs(c.route.ProxyProtocol, src, dst).Format()
}

package udp

import (
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
)

// The data path calls the kernel directly, like the TCP engine's: every
// descriptor is non-blocking, so recvmmsg, sendmmsg and sendto are raw
// system calls (no scheduler hand-off), repeated when a signal interrupts
// them, and their buffers are loop-owned, so a datagram costs no
// allocation.

const (
	// slotSize holds the largest datagram whole (65 507 bytes of payload
	// over IPv4, 65 527 over IPv6), and the segments UDP GRO coalesces
	// into one read (at most 64 KiB). A slot is virtual memory until the
	// kernel writes into it: small datagrams touch one page of each.
	slotSize = 1 << 16
	// ctrlSize is room for the control messages of one datagram: a
	// packet-info message (40 bytes for IPv6) and a UDP segment size (24).
	ctrlSize = 128
	// maxSegments bounds the datagrams pj hands the kernel as one GSO
	// send (UDP_MAX_SEGMENTS was 64 before Linux 6.9).
	maxSegments = 64
	// maxGSOBytes bounds the payload of one GSO send: the datagrams
	// travel as one IP packet until the kernel splits them.
	maxGSOBytes = 65000
)

// msgs is a batch of message headers over fixed slots of one buffer, for
// recvmmsg and sendmmsg. Header i describes slot i.
type msgs struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // room for either family's address
	ctrl  []byte
	buf   []byte
}

func newMsgs(n int) *msgs {
	m := &msgs{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
		ctrl:  make([]byte, n*ctrlSize),
		buf:   make([]byte, n*slotSize),
	}
	for i := range n {
		m.iovs[i].Base = &m.buf[i*slotSize]
		h := &m.hdrs[i].Hdr
		h.Iov = &m.iovs[i]
		h.SetIovlen(1)
	}
	return m
}

// armRecv prepares headers [from, from+n) for a receive: whole slots, room
// for the sender's address if name, room for control messages if ctrl.
func (m *msgs) armRecv(from, n int, name, ctrl bool) {
	for i := from; i < from+n; i++ {
		h := &m.hdrs[i].Hdr
		m.iovs[i].SetLen(slotSize)
		h.Iov = &m.iovs[i]
		h.SetIovlen(1)
		h.Name, h.Namelen = nil, 0
		if name {
			h.Name = (*byte)(unsafe.Pointer(&m.names[i]))
			h.Namelen = unix.SizeofSockaddrInet6
		}
		h.Control = nil
		h.SetControllen(0)
		if ctrl {
			h.Control = &m.ctrl[i*ctrlSize]
			h.SetControllen(ctrlSize)
		}
		h.Flags = 0
		m.hdrs[i].Len = 0
	}
}

// data is what slot i received.
func (m *msgs) data(i int) []byte { return m.buf[i*slotSize : i*slotSize+int(m.hdrs[i].Len)] }

// control is the control data slot i received.
func (m *msgs) control(i int) []byte {
	return m.ctrl[i*ctrlSize : i*ctrlSize+int(m.hdrs[i].Hdr.Controllen)]
}

// recvmmsg receives into the messages of hdrs; it returns how many came.
func recvmmsg(fd int, hdrs []unix.Mmsghdr) (int, error) { return mmsg(unix.SYS_RECVMMSG, fd, hdrs) }

// sendmmsg sends the messages of hdrs; it returns how many went, and the
// error of the first that did not if none went.
func sendmmsg(fd int, hdrs []unix.Mmsghdr) (int, error) { return mmsg(unix.SYS_SENDMMSG, fd, hdrs) }

// mmsg makes the system call trap, recvmmsg or sendmmsg, over hdrs
// without blocking, again when a signal interrupts it.
func mmsg(trap uintptr, fd int, hdrs []unix.Mmsghdr) (int, error) {
	for {
		n, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])),
			uintptr(len(hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if e == 0 {
			return int(n), nil
		}
		if e != unix.EINTR {
			return 0, e
		}
	}
}

// send writes one datagram on a connected socket.
func send(fd int, b []byte) error {
	for {
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			unix.MSG_DONTWAIT, 0, 0)
		if e == 0 {
			return nil
		}
		if e != unix.EINTR {
			return e
		}
	}
}

func closeFD(fd int) { _, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

// --- addresses ---

// key identifies a session in its loop: the listener and the client's
// address and port. The address is in its 16-byte form, an IPv4 client the
// same whether the socket is IPv4 or dual-stack. It holds no pointer, so a
// table of millions costs the garbage collector nothing to scan.
type key struct {
	ln   uint32
	port uint16
	addr [16]byte
}

// keyOf reads the sender's address a receive wrote into name.
func keyOf(ln uint32, name *unix.RawSockaddrInet6) (key, bool) {
	k := key{ln: ln}
	switch name.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		k.addr[10], k.addr[11] = 0xff, 0xff
		copy(k.addr[12:], sa.Addr[:])
		k.port = ntohs(sa.Port)
	case unix.AF_INET6:
		k.addr = name.Addr
		k.port = ntohs(name.Port)
	default:
		return k, false
	}
	return k, true
}

func (k key) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(k.addr).Unmap(), k.port)
}

func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// --- control messages ---

var cmsgHdrLen = unix.CmsgLen(0)

// cmsgs walks the control messages of b, calling f with each one's level,
// type and data; it stops at the first malformed one.
func cmsgs(b []byte, f func(level, typ int32, data []byte)) {
	for len(b) >= cmsgHdrLen {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		n := int(h.Len)
		if n < cmsgHdrLen || n > len(b) {
			return
		}
		f(h.Level, h.Type, b[cmsgHdrLen:n])
		next := unix.CmsgSpace(n - cmsgHdrLen)
		if next >= len(b) {
			return
		}
		b = b[next:]
	}
}

// rxInfo is what the control messages of a received datagram say.
type rxInfo struct {
	dst     [16]byte // the address the datagram was sent to (IPv4 mapped)
	ifindex int32
	hasDst  bool
	segment int // UDP GRO: the size of each coalesced datagram; 0: one datagram
}

func parseRx(b []byte) rxInfo {
	var ri rxInfo
	cmsgs(b, func(level, typ int32, data []byte) {
		switch {
		case level == unix.IPPROTO_IP && typ == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			ri.dst = netip.AddrFrom4(pi.Addr).As16()
			if a := netip.AddrFrom4(pi.Addr); a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
				// A broadcast or multicast address cannot answer:
				// the local address the kernel would pick can.
				ri.dst = netip.AddrFrom4(pi.Spec_dst).As16()
			}
			ri.ifindex, ri.hasDst = pi.Ifindex, true
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			ri.dst, ri.ifindex, ri.hasDst = pi.Addr, int32(pi.Ifindex), true
		case level == unix.IPPROTO_UDP && typ == unix.UDP_GRO && len(data) >= 2:
			if len(data) >= 4 {
				ri.segment = int(*(*int32)(unsafe.Pointer(&data[0])))
			} else {
				ri.segment = int(*(*uint16)(unsafe.Pointer(&data[0])))
			}
		}
	})
	return ri
}

// pktinfo is the control message that makes a reply leave from a given
// local address, ready to copy in front of a send.
type pktinfo struct {
	b [40]byte
	n uint8
}

// setPktinfo builds the message for a socket of family (AF_INET or
// AF_INET6) from what a datagram's own message said.
func (p *pktinfo) set(family int, ri *rxInfo) {
	*p = pktinfo{}
	if !ri.hasDst {
		return
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&p.b[0]))
	if family == unix.AF_INET {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&p.b[cmsgHdrLen]))
		copy(pi.Spec_dst[:], ri.dst[12:])
		p.n = uint8(unix.CmsgSpace(unix.SizeofInet4Pktinfo))
		return
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&p.b[cmsgHdrLen]))
	pi.Addr = ri.dst
	if a := netip.AddrFrom16(ri.dst); a.IsLinkLocalUnicast() {
		pi.Ifindex = uint32(ri.ifindex) // a link-local address means one link
	}
	p.n = uint8(unix.CmsgSpace(unix.SizeofInet6Pktinfo))
}

// putSegment writes a UDP_SEGMENT control message (GSO: the kernel splits
// the payload into datagrams of size bytes) at b and returns its length.
func putSegment(b []byte, size int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b[cmsgHdrLen])) = uint16(size)
	return unix.CmsgSpace(2)
}

// --- sockets ---

// newBackendSocket makes a non-blocking UDP socket connected to ap: the
// kernel then delivers only ap's datagrams to it, and an ICMP port
// unreachable from ap becomes ECONNREFUSED on it. gro asks for UDP GRO.
func newBackendSocket(ap netip.AddrPort, rsa *unix.RawSockaddrAny, gro bool) (int, error) {
	fd, err := evloop.Socket(ap, unix.SOCK_DGRAM)
	if err != nil {
		return -1, err
	}
	if gro {
		one := int32(1)
		// Refused by kernels before 5.0: then datagrams come one by one.
		_, _, _ = unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_UDP, unix.UDP_GRO,
			uintptr(unsafe.Pointer(&one)), 4, 0)
	}
	if err := evloop.Connect(fd, ap, rsa); err != nil {
		closeFD(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

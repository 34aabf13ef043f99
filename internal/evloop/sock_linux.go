package evloop

import (
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket makes a non-blocking socket of typ (SOCK_STREAM, SOCK_DGRAM) in
// ap's family, with a raw system call: the loops own their descriptors,
// Go's poller never sees them.
func Socket(ap netip.AddrPort, typ int) (int, error) {
	family := unix.AF_INET6
	if ap.Addr().Is4() {
		family = unix.AF_INET
	}
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), uintptr(typ)|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, os.NewSyscallError("socket", e)
	}
	return int(r), nil
}

// Connect starts connecting fd to ap (for a non-blocking TCP socket,
// EINPROGRESS says it is under way). rsa is scratch space for the
// address, so that the call allocates nothing.
func Connect(fd int, ap netip.AddrPort, rsa *unix.RawSockaddrAny) error {
	n := Sockaddr(ap, rsa)
	if _, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(rsa)), n); e != 0 {
		return e
	}
	return nil
}

// Sockaddr writes ap into rsa as the kernel takes it (port in network
// order) and returns its length.
func Sockaddr(ap netip.AddrPort, rsa *unix.RawSockaddrAny) uintptr {
	*rsa = unix.RawSockaddrAny{}
	port := ap.Port()
	if ap.Addr().Is4() {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		sa.Family = unix.AF_INET
		sa.Addr = ap.Addr().As4()
		putPort(&sa.Port, port)
		return unix.SizeofSockaddrInet4
	}
	sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
	sa.Family = unix.AF_INET6
	sa.Addr = ap.Addr().As16()
	putPort(&sa.Port, port)
	return unix.SizeofSockaddrInet6
}

// putPort writes port in network order.
func putPort(p *uint16, port uint16) {
	pb := (*[2]byte)(unsafe.Pointer(p))
	pb[0], pb[1] = byte(port>>8), byte(port)
}

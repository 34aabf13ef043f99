package engine

import (
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
)

// The engine calls the kernel directly, without the net package, so that a
// connection costs no allocation and no descriptor in Go's own poller: these
// helpers take loop-owned buffers instead of returning interfaces.

// accept4 accepts one connection as a non-blocking, close-on-exec socket
// and writes the peer's address into rsa.
func accept4(lfd int, rsa *unix.RawSockaddrAny) (int, error) {
	n := uint32(unix.SizeofSockaddrAny)
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(rsa)),
		uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// addrPort converts a raw socket address; an IPv4 client of a dual-stack
// listener (::ffff:a.b.c.d) is shown and matched as plain IPv4.
func addrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// ntohs reads a port stored in network byte order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// KeepAlive is the TCP keepalive of the sockets a listener accepts
// (SetListenerOptions). Backend sockets keep the kernel's timers: see
// newBackendSocket.
type KeepAlive struct {
	Idle, Interval time.Duration
	Count          int
}

// newBackendSocket makes a non-blocking TCP socket for ap with TCP_NODELAY
// and SO_KEEPALIVE on. The keepalive timers are the kernel's
// (net.ipv4.tcp_keepalive_*), as with HAProxy's srvtcpka and nginx's
// proxy_socket_keepalive: three more setsockopt calls per connection would
// cost more than anything else pj does to connect, and backends are
// watched by health checks besides.
func newBackendSocket(ap netip.AddrPort) (int, error) {
	fd, err := evloop.Socket(ap, unix.SOCK_STREAM)
	if err != nil {
		return -1, err
	}
	one := int32(1)
	for _, opt := range [...]struct{ level, name int }{{unix.IPPROTO_TCP, unix.TCP_NODELAY}, {unix.SOL_SOCKET, unix.SO_KEEPALIVE}} {
		if _, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(opt.level), uintptr(opt.name),
			uintptr(unsafe.Pointer(&one)), 4, 0); e != 0 {
			closeFD(fd)
			return -1, os.NewSyscallError("setsockopt", e)
		}
	}
	return fd, nil
}

// SetListenerOptions turns TCP keepalive (with ka's timers) and
// TCP_NODELAY on for a listening socket: Linux copies them to every socket
// accept(2) returns, which saves five setsockopt calls per connection.
func SetListenerOptions(fd int, ka KeepAlive) error {
	opts := [...]struct {
		level, name, value int
		what               string
	}{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1, "TCP_NODELAY"},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(ka.Idle / time.Second), "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(ka.Interval / time.Second), "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, ka.Count, "TCP_KEEPCNT"},
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.name, o.value); err != nil {
			return os.NewSyscallError("setsockopt "+o.what, err)
		}
	}
	return nil
}

// lingerZero makes the next close of fd send a reset.
func lingerZero(fd int) {
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// pipe is a kernel pipe used to splice between two sockets.
type pipe struct{ r, w int32 }

// pipeSize is the capacity asked of every pipe (F_SETPIPE_SZ); bigger
// pipes move more per splice(2) call. The kernel may refuse (pipe-max-size,
// per-user limits); the default 64 KiB still works.
const pipeSize = 1 << 20

func newPipe() (pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return pipe{}, os.NewSyscallError("pipe2", err)
	}
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	return pipe{r: int32(fds[0]), w: int32(fds[1])}, nil
}

func (p pipe) close() {
	closeFD(int(p.r))
	closeFD(int(p.w))
}

const spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK

// The data path's system calls cannot block — every descriptor is
// non-blocking — so they are made as raw system calls, which skip the
// scheduler's entersyscall/exitsyscall (about a tenth of pj's own time per
// connection). They are repeated when a signal interrupts them, which a
// non-blocking call must never report as an error.
//
// Reads and writes use recvfrom and sendto rather than read and write: the
// socket calls skip the file layer (position locking, fsnotify hooks) that
// read(2) and write(2) go through, which shows in a profile of small
// messages; and MSG_NOSIGNAL turns a write to a reset connection into EPIPE
// without a SIGPIPE for the runtime to field.
func sysRead(fd int, b []byte) (int, error) {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
		if e == 0 {
			return int(n), nil
		}
		if e != unix.EINTR {
			return 0, e
		}
	}
}

func sysWrite(fd int, b []byte) (int, error) {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_NOSIGNAL, 0, 0)
		if e == 0 {
			return int(n), nil
		}
		if e != unix.EINTR {
			return 0, e
		}
	}
}

// sysSplice moves up to n bytes from in to out; with SPLICE_F_NONBLOCK
// on non-blocking sockets it never waits, though moving a megabyte of
// page references takes a moment.
func sysSplice(in, out int, n int) (int, error) {
	for {
		m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceFlags)
		if e == 0 {
			return int(m), nil
		}
		if e != unix.EINTR {
			return 0, e
		}
	}
}

// closeFD closes a socket or pipe of the data path. Without SO_LINGER a
// TCP close returns at once (the FIN goes out in the background); with
// SO_LINGER 0 it resets at once. Its error says nothing we could act on.
func closeFD(fd int) {
	_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// shutdownWrite sends a FIN.
func shutdownWrite(fd int) error {
	if _, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0); e != 0 {
		return e
	}
	return nil
}

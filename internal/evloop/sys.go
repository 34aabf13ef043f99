package evloop

import (
	"errors"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// SocketError reads and clears the pending error of a socket.
func SocketError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return os.NewSyscallError("getsockopt SO_ERROR", err)
	}
	if v != 0 {
		return unix.Errno(v)
	}
	return nil
}

// UnwrapOp drops a *net.OpError's wrapping (the operation, the
// addresses), for an error whose message names them already.
func UnwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	return err
}

// IsShortage reports whether err means the process or the kernel ran out
// of a resource (descriptors, socket memory) that frees up by itself as
// connections close: a loop waits and tries again, and it says nothing
// about a backend.
func IsShortage(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) ||
		errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM)
}

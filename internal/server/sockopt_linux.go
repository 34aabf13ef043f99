package server

import (
	"errors"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// setKeepAlive sets SO_KEEPALIVE and its three timers on a socket.
func setKeepAlive(fd int, ka net.KeepAliveConfig) error {
	opts := []struct {
		level, name, value int
		what               string
	}{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(ka.Idle.Seconds()), "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(ka.Interval.Seconds()), "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, ka.Count, "TCP_KEEPCNT"},
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.name, o.value); err != nil {
			return os.NewSyscallError("setsockopt "+o.what, err)
		}
	}
	return nil
}

// acceptHint tells an operator what to do about an accept error.
func acceptHint(err error) string {
	switch {
	case errors.Is(err, syscall.EMFILE):
		return "out of file descriptors for this process: raise the limit (ulimit -n, LimitNOFILE=) or lower the connection load"
	case errors.Is(err, syscall.ENFILE):
		return "the system is out of file descriptors: raise fs.file-max or lower the load"
	case errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.ENOMEM):
		return "the kernel is out of memory for sockets"
	}
	return "none"
}

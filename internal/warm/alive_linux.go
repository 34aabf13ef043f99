package warm

import "golang.org/x/sys/unix"

// Alive reports whether a warm connection can still be given to a client:
// a non-blocking peek finds it neither closed (0 bytes: the backend's FIN)
// nor reset. Bytes waiting (a greeting) are left in the socket, for the
// client; a greeting followed by the backend's FIN is not alive.
func Alive(fd int) bool {
	var b [1]byte
	n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case err == unix.EAGAIN:
		return true
	case err == unix.EINTR:
		return Alive(fd)
	case err != nil || n == 0:
		return false
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	if _, err := unix.Poll(fds, 0); err != nil {
		return false
	}
	return fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) == 0
}

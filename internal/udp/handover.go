//go:build linux

package udp

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Dup returns duplicates of the listener's sockets, one per loop, for a
// process that takes over serving them (an upgrade). The caller owns
// them.
func (ln *Listener) Dup() ([]int, error) {
	var out []int
	for _, ls := range ln.socks {
		fd, err := unix.FcntlInt(uintptr(ls.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			for _, d := range out {
				_ = unix.Close(d)
			}
			return nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
		}
		out = append(out, fd)
	}
	return out, nil
}

// HandOver stops ln from reading datagrams: another process reads its
// sockets now (an upgrade). Its sessions go on until they end, their
// replies sent through its sockets, which close as the last session of
// each ends; a client's next datagram reaches the other process.
func (e *Engine) HandOver(ln *Listener) {
	ln.draining.Store(true)
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error {
			for _, ls := range l.socks {
				if ls.ln == ln && !ls.closed {
					// The descriptor stays open for the replies.
					_ = unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_DEL, ls.fd, nil)
				}
			}
			l.drained(ln)
			return nil
		})
	}
}

// Adopt makes Sockets of the bound UDP sockets fds, handed over by
// another process. They stay as many as they are: each is in the
// address's SO_REUSEPORT group, and one left unread would lose the
// datagrams the kernel sends it. It owns fds, all or nothing.
func Adopt(fds []int) (*Sockets, error) {
	if len(fds) == 0 {
		return nil, fmt.Errorf("adopt UDP sockets: none given")
	}
	s := &Sockets{}
	if err := s.learn(fds[0]); err != nil {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return nil, err
	}
	s.fds = fds
	return s.ready()
}

package relay

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Why pj has its own splice loop instead of io.Copy (which also splices
// between two *net.TCPConn, see net/splice_linux.go):
//
//   - io.Copy takes a pipe from a sync.Pool for the whole life of the copy,
//     idle time included, so every open connection holds two pipes (four
//     descriptors) besides its two sockets; and the pool is emptied only by
//     two garbage collections, so an idle process that has relayed thousands
//     of connections keeps thousands of pipe descriptors open.
//   - Its byte count is known only when the copy returns.
//
// This loop takes a pipe only while bytes are in flight, gives it back before
// waiting for the socket to become readable, keeps at most maxIdlePipes
// spare, and counts bytes as they are delivered.

const (
	// pipeSize is the capacity asked of every pipe (F_SETPIPE_SZ). It bounds
	// the bytes moved per splice pair; 1 MiB is what Go's own splice uses.
	pipeSize = 1 << 20
	// maxIdlePipes bounds the spare pipes kept for reuse. Pipes in use are
	// bounded by the connections moving data at this instant.
	maxIdlePipes = 16

	spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
)

// pairSplices reports whether the relay of this pair can use splice(2).
// Both ends must be the net package's own *net.TCPConn: a wrapper type,
// however thin, hides the socket and turns splice off.
func pairSplices(a, b net.Conn) bool {
	_, okA := a.(*net.TCPConn)
	_, okB := b.(*net.TCPConn)
	return okA && okB
}

type pipe struct{ r, w int }

type pipePool struct {
	mu   sync.Mutex
	free []pipe
	// created counts pipes made since start; tests read it.
	created atomic.Int64
}

var pipes pipePool

func (pp *pipePool) get() (pipe, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()

	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return pipe{}, os.NewSyscallError("pipe2", err)
	}
	// A bigger pipe moves more per system call. The kernel may refuse
	// (pipe-max-size, per-user pipe limits); the default 64 KiB still works.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	pp.created.Add(1)
	return pipe{r: fds[0], w: fds[1]}, nil
}

// put returns an empty pipe for reuse, or closes it when enough are spare.
func (pp *pipePool) put(p pipe) {
	pp.mu.Lock()
	if len(pp.free) < maxIdlePipes {
		pp.free = append(pp.free, p)
		pp.mu.Unlock()
		return
	}
	pp.mu.Unlock()
	p.close()
}

// close releases a pipe that may still hold data: such a pipe is never
// reused, as its bytes would leak into another connection.
func (p pipe) close() {
	_ = unix.Close(p.r) // closing a pipe we own cannot fail in a way we could act on
	_ = unix.Close(p.w)
}

// errNoPipe marks a failure to make a pipe; the caller falls back to copying.
var errNoPipe = errors.New("no pipe")

// spliceStream moves src to dst with splice(2) until src's end of stream
// (nil) or an error. Reads and writes wait through the Go netpoller
// (syscall.RawConn), like the net package's own blocking calls, so the
// goroutine is parked, not spinning, while a socket is not ready.
func spliceStream(dst, src *net.TCPConn, count *atomic.Int64, touch func()) error {
	srcRaw, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dstRaw, err := dst.SyscallConn()
	if err != nil {
		return err
	}

	var (
		p      pipe
		have   bool // p holds a pipe
		inPipe int  // bytes in p
		serr   error
	)
	defer func() {
		if !have {
			return
		}
		if inPipe == 0 {
			pipes.put(p)
		} else {
			p.close()
		}
	}()

	// fill splices what src has into the pipe. It takes a pipe only when
	// called and gives it back before asking to wait (returning false), so
	// a quiet connection holds no pipe.
	fill := func(fd uintptr) bool {
		if !have {
			if p, serr = pipes.get(); serr != nil {
				serr = errNoPipe
				return true
			}
			have = true
		}
		for {
			n, e := unix.Splice(int(fd), nil, p.w, nil, pipeSize, spliceFlags)
			switch e {
			case nil:
				inPipe = int(n)
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				pipes.put(p)
				have = false
				return false
			default:
				serr = os.NewSyscallError("splice", e)
				return true
			}
		}
	}
	// drain splices the pipe's bytes into dst, counting each delivery.
	drain := func(fd uintptr) bool {
		for inPipe > 0 {
			n, e := unix.Splice(p.r, nil, int(fd), nil, inPipe, spliceFlags)
			switch e {
			case nil:
				inPipe -= int(n)
				count.Add(n)
				touch()
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				serr = os.NewSyscallError("splice", e)
				return true
			}
		}
		return true
	}

	for {
		if err := srcRaw.Read(fill); err != nil {
			return err
		}
		if serr == errNoPipe {
			// Out of descriptors for pipes: keep the connection going
			// through user space rather than failing it.
			return copyStream(dst, src, count, touch)
		}
		if serr != nil {
			return serr
		}
		if inPipe == 0 {
			return nil // end of stream
		}
		if err := dstRaw.Write(drain); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
	}
}

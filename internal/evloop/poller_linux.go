package evloop

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Poller is an epoll instance, with an eventfd in its set that other
// goroutines use to wake the loop L for the commands they post. Only the
// loop's goroutine calls Wait and RunCommands; Post and Call are for
// every other goroutine.
type Poller[L any] struct {
	name   string // for errors: "event loop 2"
	fd     int    // the epoll instance
	wake   int    // the eventfd
	events []unix.EpollEvent
	busy   bool  // the last wait returned events
	yield  int64 // when the loop last yielded (its clock, nanoseconds)
	stop   bool  // Stop was called (the loop's goroutine reads it)

	mu       sync.Mutex
	cmds     []func(L)
	signaled bool
	done     bool
	exited   chan struct{}
}

// Open makes the epoll instance and its eventfd; a wait returns at most
// maxEvents events. name says which loop it is in errors.
func (p *Poller[L]) Open(name string, maxEvents int) error {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(fd)
		return os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(fd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		_ = unix.Close(wake)
		_ = unix.Close(fd)
		return os.NewSyscallError("epoll_ctl", err)
	}
	p.name, p.fd, p.wake = name, fd, wake
	p.events = make([]unix.EpollEvent, maxEvents)
	p.exited = make(chan struct{})
	return nil
}

// FD is the epoll instance, to add descriptors to.
func (p *Poller[L]) FD() int { return p.fd }

// IsWake reports whether fd is the eventfd: its event means commands wait
// (RunCommands).
func (p *Poller[L]) IsWake(fd int) bool { return fd == p.wake }

// Busy reports whether the last wait returned events.
func (p *Poller[L]) Busy() bool { return p.busy }

// Wait returns the next batch of events, waiting at most ms milliseconds
// (-1: until one comes).
//
// A busy loop waits with a raw system call, bounded to a millisecond: the
// Go scheduler does not see it, so the loop keeps its processor and its
// thread, and an event wakes it straight from the kernel, as in a C event
// loop. The blocking call the scheduler knows about would let the system
// monitor hand the processor away after 20µs and move the loop between
// threads, which costs context switches on every request. A loop that has
// waited a whole millisecond in vain is idle: it then makes the ordinary
// blocking call, so that an idle pj costs nothing and its processor serves
// other goroutines. (The rest of pj, the admin server and the garbage
// collector, waits at most the 2 ms after which a busy loop yields.)
func (p *Poller[L]) Wait(ms int) ([]unix.EpollEvent, error) {
	if p.busy {
		raw := ms
		if raw < 0 || raw > 1 {
			raw = 1
		}
		n, err := epollWaitRaw(p.fd, p.events, raw)
		if n > 0 || err != nil || raw == ms {
			return p.events[:n], err
		}
		p.busy = false
		if ms > 0 {
			ms--
		}
	}
	n, err := unix.EpollWait(p.fd, p.events, ms)
	if n < 0 {
		n = 0
	}
	p.busy = n > 0
	return p.events[:n], err
}

// yieldEvery is how often a busy loop yields its processor.
const yieldEvery = int64(2 * time.Millisecond)

// Yield lets the Go scheduler run other goroutines if the loop has been
// busy for a while; now is the loop's clock (nanoseconds). A busy loop
// never blocks where the scheduler sees it; yielding now and then spares
// it the forced preemption (a signal) that the runtime sends a goroutine
// running for 10ms, and lets the system monitor sleep.
func (p *Poller[L]) Yield(now int64) {
	if p.busy && now-p.yield > yieldEvery {
		p.yield = now
		runtime.Gosched()
	}
}

// epollWaitRaw is epoll_wait made as a raw system call: the Go scheduler
// is not told, so it must only be used with a short timeout (see Wait). A
// signal (Go preempts goroutines with SIGURG) ends it early with no
// events. It is made as epoll_pwait with no signal mask, which is
// epoll_wait on every architecture; arm64, riscv64 and loong64 have only
// epoll_pwait.
func epollWaitRaw(epfd int, events []unix.EpollEvent, msec int) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		if e == unix.EINTR {
			return 0, nil
		}
		return 0, e
	}
	return int(n), nil
}

// Post queues f to run on the loop; it reports false if the loop is gone.
func (p *Poller[L]) Post(f func(L)) bool {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return false
	}
	p.cmds = append(p.cmds, f)
	wake := !p.signaled
	p.signaled = true
	p.mu.Unlock()
	if wake {
		one := [8]byte{1}
		_, _ = unix.Write(p.wake, one[:]) // cannot fail short of a full counter, which wakes the loop anyway
	}
	return true
}

// Call runs f on the loop l and waits for its result. On a loop that has
// exited, f runs on the caller: nothing else touches the loop any more.
func (p *Poller[L]) Call(l L, f func(L) error) error {
	res := make(chan error, 1)
	if !p.Post(func(l L) { res <- f(l) }) {
		<-p.exited
		return f(l)
	}
	select {
	case err := <-res:
		return err
	case <-p.exited:
		select {
		case err := <-res:
			return err
		default:
			return fmt.Errorf("%s has exited", p.name)
		}
	}
}

// RunCommands runs on l the commands posted since it last ran.
func (p *Poller[L]) RunCommands(l L) {
	var b [8]byte
	_, _ = unix.Read(p.wake, b[:]) // resets the counter; EAGAIN if already read
	p.mu.Lock()
	cmds := p.cmds
	p.cmds = nil
	p.signaled = false
	p.mu.Unlock()
	for _, f := range cmds {
		f(l)
	}
}

// Close ends the poller as its loop exits: commands posted from now on
// are refused, the descriptors closed, and Exited's channel closed.
func (p *Poller[L]) Close() {
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
	_ = unix.Close(p.wake) // the loop is gone: nothing to report to
	_ = unix.Close(p.fd)
	close(p.exited)
}

// Exited returns a channel closed once the loop has exited (Close).
func (p *Poller[L]) Exited() <-chan struct{} { return p.exited }

// Stop tells the loop to exit once it holds nothing (Stopping reports
// true from then on) and waits until it has.
func (p *Poller[L]) Stop() {
	p.Post(func(L) { p.stop = true })
	<-p.exited
}

// Stopping reports whether the loop was told to stop; only the loop's
// goroutine calls it.
func (p *Poller[L]) Stopping() bool { return p.stop }

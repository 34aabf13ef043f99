//go:build linux

package engine

// The in-kernel relay (kernel_relay). Once a connection's backend has
// answered and pj has written what it writes itself (a PROXY header, the
// bytes read to choose a route), its two sockets go into two BPF socket
// hashes, keyed by each socket's cookie:
//
//   - targets: a socket's cookie → the socket its bytes go to;
//   - sources: a socket's cookie → the socket itself. A stream verdict
//     program is attached to this map: it runs for every socket in it,
//     on every chunk of bytes the socket receives, and redirects the
//     chunk to the socket targets names for it.
//
// Inserting a socket into sources is what starts the program on it, so
// both target entries exist before either source entry: no byte can reach
// the program before its peer is known (a failed redirect drops bytes the
// kernel has acknowledged). Bytes that were waiting in a socket before the
// program started are pushed through it by setting SO_RCVLOWAT, which
// makes the kernel run the socket's data-ready callback at once.
//
// pj's loop then watches only for the ends of the streams (EPOLLRDHUP)
// and errors. Its counts come from the kernel (TCP_INFO): a direction has
// moved the bytes its destination socket took since the hand-over; its
// source has ended, and its FIN may follow, once the destination took
// every byte the source received. Closing a socket takes it out of both
// maps.

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/observe"
)

const (
	// kernelMaxConns bounds the connections relayed in the kernel at
	// once (two entries in each map per connection); the others take
	// the plain path.
	kernelMaxConns = 32768
	// modeKernel is a connection line's relay field when the kernel
	// moved its bytes after the hand-over.
	modeKernel = "kernel"
	// kernelWaitFirst and kernelWaitMost bound how often a direction
	// whose source has ended is checked for its last bytes to be passed
	// on (the kernel gives no event for it).
	kernelWaitFirst = time.Millisecond
	kernelWaitMost  = 64 * time.Millisecond
)

// kernelProg is the loaded program and its maps; one per process.
type kernelProg struct {
	targets, sources *ebpf.Map
	prog             *ebpf.Program
}

// loadKernel loads the program and its maps once per process; the error
// says why the kernel relay cannot be used here.
var loadKernel = sync.OnceValues(newKernelProg)

func newKernelProg() (*kernelProg, error) {
	spec := func(name string) *ebpf.MapSpec {
		return &ebpf.MapSpec{Name: name, Type: ebpf.SockHash, KeySize: 8, ValueSize: 4, MaxEntries: 2 * kernelMaxConns}
	}
	targets, err := ebpf.NewMap(spec("pj_targets"))
	if err != nil {
		return nil, fmt.Errorf("create a BPF socket hash: %w", err)
	}
	sources, err := ebpf.NewMap(spec("pj_sources"))
	if err != nil {
		_ = targets.Close()
		return nil, fmt.Errorf("create a BPF socket hash: %w", err)
	}
	// verdict(skb) = bpf_sk_redirect_hash(skb, targets, &cookie(skb), 0):
	// SK_PASS once the bytes are queued for the peer, SK_DROP if it has
	// gone (the connection is being closed). An empty skb (the one that
	// carried a FIN) is dropped: redirected, it would be "sent" on a
	// socket pj may have shut down already, which fails it with EPIPE;
	// the FIN itself is pj's to pass on, once the bytes before it are.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "pj_redirect",
		Type: ebpf.SkSKB,
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // skb->len
			asm.JNE.Imm(asm.R2, 0, "redirect"),
			asm.Mov.Imm(asm.R0, 0), // SK_DROP
			asm.Return(),
			asm.Mov.Reg(asm.R6, asm.R1).WithSymbol("redirect"),
			asm.FnGetSocketCookie.Call(),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.LoadMapPtr(asm.R2, targets.FD()),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -8),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnSkRedirectHash.Call(),
			asm.Return(),
		},
		License: "GPL", // bpf_sk_redirect_hash is for GPL programs only
	})
	if err != nil {
		_ = targets.Close()
		_ = sources.Close()
		return nil, fmt.Errorf("load the redirect program: %w", err)
	}
	err = link.RawAttachProgram(link.RawAttachProgramOptions{Target: sources.FD(), Program: prog, Attach: ebpf.AttachSkSKBStreamVerdict})
	if err != nil {
		_ = prog.Close()
		_ = targets.Close()
		_ = sources.Close()
		return nil, fmt.Errorf("attach the redirect program to its socket hash: %w", err)
	}
	return &kernelProg{targets: targets, sources: sources, prog: prog}, nil
}

// kernelConn is what a connection relayed in the kernel keeps, per
// direction (0: up, client to backend; 1: down).
type kernelConn struct {
	cookie [2]uint64 // the client's and the backend's sockets'
	// base: bytes of the direction's source that pj read itself before
	// the hand-over; out: bytes its destination had taken by then.
	base, out [2]int64
	moved     [2]int64      // bytes the kernel moved, as counted so far
	wait      time.Duration // the next check for a source's last bytes; 0: none pending
}

// sockCounts is what TCP_INFO says of one socket.
type sockCounts struct {
	received int64 // payload bytes received, FIN excluded
	written  int64 // payload bytes written to the socket: sent, or queued to send
	finIn    bool  // the peer's FIN has arrived
	quietMs  int64 // milliseconds since bytes last arrived
	state    uint8 // the TCP state
}

// TCP states (include/net/tcp_states.h) in which the peer's FIN has
// arrived. A socket pj had shut down for writing goes from FIN_WAIT2 to
// CLOSE when the peer's FIN comes (the TIME_WAIT is a separate socket in
// the kernel); a reset also ends in CLOSE, but raises EPOLLERR, which
// ends the connection before its counts are read.
const (
	tcpEstablished = 1
	tcpTimeWait    = 6
	tcpClose       = 7
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpClosing     = 11
)

func sockStats(fd int) (sockCounts, error) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return sockCounts{}, fmt.Errorf("getsockopt TCP_INFO: %w", err)
	}
	s := sockCounts{
		received: int64(ti.Bytes_received),
		written:  int64(ti.Bytes_sent) - int64(ti.Bytes_retrans) + int64(ti.Notsent_bytes),
		quietMs:  int64(ti.Last_data_recv),
		state:    ti.State,
	}
	switch ti.State {
	case tcpCloseWait, tcpLastAck, tcpClosing, tcpTimeWait, tcpClose:
		s.finIn = true
		s.received-- // the FIN takes a sequence number
	}
	return s, nil
}

// consumed is how many of the bytes fd received its owner has read: the
// bytes received less those still queued, read between two TCP_INFOs
// that agree (bytes may be arriving meanwhile).
func consumed(fd int) (int64, error) {
	for range 4 {
		a, err := sockStats(fd)
		if err != nil {
			return 0, err
		}
		inq, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
		if err != nil {
			return 0, fmt.Errorf("ioctl SIOCINQ: %w", err)
		}
		b, err := sockStats(fd)
		if err != nil {
			return 0, err
		}
		if a.received == b.received && a.finIn == b.finIn {
			return a.received - int64(inq), nil
		}
	}
	return 0, errors.New("bytes kept arriving while the socket's counts were read")
}

// kernelUnavailable is logged once per engine: why its connections take
// the plain path although kernel_relay asks for the kernel's.
func (e *Engine) kernelUnavailable(err error) {
	if e.kernelLogged.CompareAndSwap(false, true) {
		e.log.Warn("kernel_relay: the in-kernel relay cannot be used here; connections are relayed by pj (splice) instead",
			"error", err.Error(),
			"hint", "it needs Linux 5.10 or later and CAP_BPF with CAP_NET_ADMIN (or root); `pj check` does not test this")
	}
}

// kernelStart hands c's relay to the kernel. It reports false when c
// stays on the plain path: the program could not be loaded, the maps are
// full, or pj still holds bytes of c's.
func (l *loop) kernelStart(c *conn) bool {
	if len(c.up.spill) > 0 || len(c.down.spill) > 0 || c.up.inPipe > 0 || c.down.inPipe > 0 {
		return false // pj's own bytes must leave first
	}
	k, err := loadKernel()
	if err != nil {
		l.e.kernelUnavailable(err)
		return false
	}
	kc := &kernelConn{}
	fds := [2]int{int(c.cfd), int(c.bfd)}
	for i, fd := range fds {
		if kc.cookie[i], err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
			l.e.kernelUnavailable(fmt.Errorf("getsockopt SO_COOKIE: %w", err))
			return false
		}
		// Direction i's source is fds[i], its destination the other.
		if kc.base[i], err = consumed(fd); err != nil {
			return false
		}
		out, err := sockStats(fds[1-i])
		if err != nil || out.state != tcpEstablished {
			// A side that has ended already (its FIN came before the
			// backend answered): the kernel takes only open sockets,
			// and the rest of such a connection is pj's to relay.
			return false
		}
		kc.out[i] = out.written
	}
	// Targets first: see the top of this file.
	inserted := 0
	undo := func(err error) bool {
		for i := range inserted {
			m := k.targets
			if i >= 2 {
				m = k.sources
			}
			_ = m.Delete(kc.cookie[i%2])
		}
		switch {
		case errors.Is(err, unix.EOPNOTSUPP):
			// A socket left the established state meanwhile (a FIN came):
			// this connection stays with pj.
		case errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOSPC):
			if l.e.kernelFull.CompareAndSwap(false, true) {
				l.e.log.Warn("kernel_relay: the kernel's socket maps are full; new connections are relayed by pj until some end",
					"connections", kernelMaxConns)
			}
		default:
			l.e.kernelUnavailable(err)
		}
		return false
	}
	for _, e := range [...]struct {
		m   *ebpf.Map
		key uint64
		fd  int
	}{
		{k.targets, kc.cookie[0], fds[1]}, {k.targets, kc.cookie[1], fds[0]},
		{k.sources, kc.cookie[0], fds[0]}, {k.sources, kc.cookie[1], fds[1]},
	} {
		if err := e.m.Update(e.key, uint32(e.fd), ebpf.UpdateNoExist); err != nil {
			return undo(fmt.Errorf("add a socket to the kernel's socket map: %w", err))
		}
		inserted++
	}
	// From here on the kernel moves the bytes: the loop wants to hear of
	// the ends of the streams and of errors only, not of every arrival.
	for _, fd := range fds {
		l.ev = unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: int32(c.gen)}
		_ = unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_MOD, fd, &l.ev)
		// Push bytes that arrived before the program started through it.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	}
	c.kern = kc
	l.kernelCheck(c)
	return true
}

// kernelEvent handles readiness of a socket relayed in the kernel: an
// error, or the end of a stream.
func (l *loop) kernelEvent(c *conn, fd int, events uint32) {
	if events&unix.EPOLLERR != 0 {
		s := observe.SideBackend
		if int32(fd) == c.cfd {
			s = observe.SideClient
		}
		l.abort(c, sideError(s, evloop.SocketError(fd)))
		return
	}
	l.kernelCheck(c)
}

// kernelCount brings the directions' byte counts up to what the kernel
// has moved, and the last activity up to the last byte either socket
// received. It reports the sockets' counts (client, backend).
func (l *loop) kernelCount(c *conn) (s [2]sockCounts, err error) {
	kc := c.kern
	for i, fd := range [...]int32{c.cfd, c.bfd} {
		if s[i], err = sockStats(int(fd)); err != nil {
			return s, err
		}
		if quiet := l.now - s[i].quietMs*int64(time.Millisecond); quiet > c.lastActive {
			c.lastActive = quiet
		}
	}
	for i, d := range [...]*dir{&c.up, &c.down} {
		if d.done {
			continue // counted when its FIN was passed on
		}
		if moved := s[1-i].written - kc.out[i]; moved > kc.moved[i] {
			l.delivered(c, d, int(moved-kc.moved[i]))
			kc.moved[i] = moved
		}
	}
	return s, nil
}

// kernelCheck counts what the kernel moved, passes on the FIN of a
// source that ended once the kernel has passed on its last byte, closes
// c when both directions are over, and arms c's timer for what is left.
func (l *loop) kernelCheck(c *conn) {
	s, err := l.kernelCount(c)
	if err != nil {
		l.abort(c, err)
		return
	}
	kc := c.kern
	pending := false
	for i, d := range [...]*dir{&c.up, &c.down} {
		if d.done || !s[i].finIn {
			continue
		}
		if s[i].received-kc.base[i] > kc.moved[i] {
			pending = true // the kernel has not passed every byte on yet
			continue
		}
		other, srcSide, dst := &c.down, observe.SideClient, c.bfd
		if i == 1 {
			other, srcSide, dst = &c.up, observe.SideBackend, c.cfd
		}
		if !other.done {
			if err := shutdownWrite(int(dst)); err != nil {
				l.abort(c, sideError(srcSide.Other(), err))
				return
			}
			c.halfAt = l.now
		}
		d.done = true
		if c.closedBy == observe.SideNone {
			c.closedBy = srcSide
		}
	}
	if c.up.done && c.down.done {
		l.close(c, observe.StatusOK, nil)
		return
	}
	kc.wait = 0
	if pending {
		kc.wait = kernelWaitFirst
	}
	l.kernelArm(c)
}

// kernelArm sets c's timer: the idle and half-close timeouts as armRelay
// sets them, or sooner a check for a source's last bytes.
func (l *loop) kernelArm(c *conn) {
	at := c.relayDeadline()
	if w := c.kern.wait; w > 0 {
		if t := l.now + int64(w); at < 0 || t < at {
			at = t
		}
	}
	if at < 0 {
		l.disarm(c)
		return
	}
	l.arm(c, at)
}

// kernelTimer is the timer of a connection relayed in the kernel: the
// idle and half-close timeouts, measured from the last byte either socket
// received, and the checks for a source's last bytes.
func (l *loop) kernelTimer(c *conn) {
	wait := c.kern.wait
	if _, err := l.kernelCount(c); err != nil {
		l.abort(c, err)
		return
	}
	if l.relayTimedOut(c) {
		return
	}
	l.kernelCheck(c)
	if c.state == stateRelay && c.kern.wait > 0 && wait > 0 {
		// Still waiting: back off, up to a bound.
		c.kern.wait = min(2*wait, kernelWaitMost)
		l.kernelArm(c)
	}
}

// kernelDone counts the kernel's last bytes of a connection being closed,
// before its sockets (and their counts) go.
func (l *loop) kernelDone(c *conn) {
	_, _ = l.kernelCount(c)
}

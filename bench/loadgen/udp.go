package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// The UDP modes. The backend echoes every datagram on the UDP port of
// its TCP port's number; the generator keeps a fixed number of datagrams
// in flight (UDP has no flow control: a proxy sent more than its socket
// buffers hold would drop them) and sends a new one for each echo:
//
//	udp-SIZE-SESSIONS  datagrams of SIZE bytes over SESSIONS client sockets
//	                   (each a session: its own source port), for DURATION
//	udp-lat            64-byte ping-pong over one session
//
// With one session all datagrams in flight are its; with many, each
// session has at most one in flight, and each echo sends the next
// datagram on the next idle session, so that every session is used in
// turn.

const (
	udpInflight   = 64                     // datagrams in flight
	udpLossWait   = 100 * time.Millisecond // silence after which the datagrams in flight count as lost
	udpWarmMax    = 15 * time.Second       // bound on the warm-up (socat forks a process per session)
	udpMinWarm    = 300 * time.Millisecond
	udpMaxSession = 10000
)

// udpMode parses "udp-SIZE-SESSIONS".
func udpMode(mode string) (size, sessions int, ok bool) {
	f := strings.Split(mode, "-")
	if len(f) != 3 || f[0] != "udp" {
		return 0, 0, false
	}
	size, err1 := strconv.Atoi(f[1])
	sessions, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || size < 16 || size > 65507 || sessions < 1 || sessions > udpMaxSession {
		return 0, 0, false
	}
	return size, sessions, true
}

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2) on 64-bit
// Linux; the syscall package has Msghdr but not this.
type mmsghdr struct {
	hdr syscall.Msghdr
	n   uint32
	_   [4]byte
}

func mmsg(trap uintptr, fd int, h []mmsghdr, flags int) (int, error) {
	for {
		n, _, e := syscall.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&h[0])), uintptr(len(h)), uintptr(flags), 0, 0)
		if e == 0 {
			return int(n), nil
		}
		if e != syscall.EINTR {
			return 0, e
		}
	}
}

// batch is message headers over slots of one buffer.
type batch struct {
	h     []mmsghdr
	iov   []syscall.Iovec
	names []syscall.RawSockaddrInet6
	buf   []byte
	slot  int
}

func newBatch(n, slot int, names bool) *batch {
	b := &batch{h: make([]mmsghdr, n), iov: make([]syscall.Iovec, n), buf: make([]byte, n*slot), slot: slot}
	if names {
		b.names = make([]syscall.RawSockaddrInet6, n)
	}
	for i := range n {
		b.iov[i].Base = &b.buf[i*slot]
		b.iov[i].SetLen(slot)
		b.h[i].hdr.Iov = &b.iov[i]
		b.h[i].hdr.Iovlen = 1
	}
	return b
}

// arm resets the headers for a receive of whole slots.
func (b *batch) arm() {
	for i := range b.h {
		b.iov[i].SetLen(b.slot)
		if b.names != nil {
			b.h[i].hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			b.h[i].hdr.Namelen = syscall.SizeofSockaddrInet6
		}
	}
}

// udpSocket opens a non-blocking UDP socket on 127.0.0.1, connected to
// addr if it is valid, else bound to bind.
func udpSocket(connect, bind netip.AddrPort, block bool) (int, error) {
	flags := syscall.SOCK_DGRAM | syscall.SOCK_CLOEXEC
	if !block {
		flags |= syscall.SOCK_NONBLOCK
	}
	fd, err := syscall.Socket(syscall.AF_INET, flags, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	// Room for the datagrams in flight, as far as net.core.rmem_max lets.
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<20)
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4<<20)
	if bind.IsValid() {
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: int(bind.Port()), Addr: bind.Addr().As4()}); err != nil {
			syscall.Close(fd)
			return -1, fmt.Errorf("bind %s: %w", bind, err)
		}
	}
	if connect.IsValid() {
		if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(connect.Port()), Addr: connect.Addr().As4()}); err != nil {
			syscall.Close(fd)
			return -1, fmt.Errorf("connect %s: %w", connect, err)
		}
	}
	return fd, nil
}

// openUDPEcho binds the backend's UDP socket on 127.0.0.1:port (0: the
// kernel chooses) and returns it with its port.
func openUDPEcho(port int) (int, int, error) {
	fd, err := udpSocket(netip.AddrPort{}, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port)), true)
	if err != nil {
		return -1, 0, fmt.Errorf("udp backend: %w", err)
	}
	// A blocking socket that wakes every 100ms to see whether ctx ended.
	tv := syscall.NsecToTimeval(int64(100 * time.Millisecond))
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return -1, 0, fmt.Errorf("udp backend: SO_RCVTIMEO: %w", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return -1, 0, fmt.Errorf("udp backend: getsockname: %w", err)
	}
	return fd, sa.(*syscall.SockaddrInet4).Port, nil
}

// serveUDPEcho echoes every datagram to fd back to its sender until ctx
// ends, then closes fd: recvmmsg and sendmmsg, up to 64 at a time.
func serveUDPEcho(ctx context.Context, fd int) error {
	defer syscall.Close(fd)
	b := newBatch(64, 65536, true)
	for ctx.Err() == nil {
		b.arm()
		n, err := mmsg(syscall.SYS_RECVMMSG, fd, b.h, 0x10000) // MSG_WAITFORONE
		if err != nil {
			if err == syscall.EAGAIN {
				continue
			}
			return fmt.Errorf("udp backend: recvmmsg: %w", err)
		}
		for i := range n {
			b.iov[i].SetLen(int(b.h[i].n))
		}
		for sent := 0; sent < n; {
			k, err := mmsg(sysSendmmsg, fd, b.h[sent:n], 0)
			if err != nil {
				sent++ // that one is lost, as on a network
				continue
			}
			sent += k
		}
	}
	return nil
}

// runUDP measures datagrams per second through the target: size-byte
// datagrams over sessions client sockets, udpInflight in flight.
func runUDP(ctx context.Context, cfg *runConfig, r *result, size, sessions int) error {
	target, err := netip.ParseAddrPort(cfg.addr)
	if err != nil {
		return err
	}
	g, err := newUDPGen(target.Addr().Unmap(), target.Port(), size, sessions)
	if err != nil {
		return err
	}
	defer g.close()

	// Warm up until every session has had an echo: the target has made
	// all its sessions (socat forks a process for each) before the clock
	// starts.
	warmEnd := time.Now().Add(udpWarmMax)
	minEnd := time.Now().Add(udpMinWarm)
	g.start()
	err = g.run(ctx, func() bool {
		return time.Now().Before(warmEnd) && (g.answered < sessions || time.Now().Before(minEnd))
	})
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if g.answered < sessions {
		return fmt.Errorf("warm-up: only %d of %d sessions answered within %s", g.answered, sessions, udpWarmMax)
	}
	g.echoes, g.lost, g.sent = 0, 0, 0
	w, err := cfg.measure(func(deadline time.Time) error {
		return g.run(ctx, func() bool { return time.Now().Before(deadline) })
	})
	if err != nil {
		return err
	}
	if g.echoes == 0 {
		return errors.New("no echo came back")
	}
	relayed := float64(2 * g.echoes) // each echo is a datagram each way
	r.set("dgrams_per_s", relayed/w.seconds())
	r.setCPU("cpu_s_per_mdgram", w.cpu*1e6/relayed, cfg.measured())
	r.set("loss_pct", 100*float64(g.lost)/float64(max(g.sent, 1)))
	r.set("echoes", g.echoes)
	r.set("sessions", sessions)
	r.set("dgram_bytes", size)
	r.setWindow(cfg, w)
	return nil
}

// udpGen is the client side of a UDP run: one epoll set over its sockets.
type udpGen struct {
	fds      []int
	ep       int
	size     int
	events   []syscall.EpollEvent
	rx, tx   *batch
	out      []bool      // session i has a datagram in flight (many sessions)
	sentAt   []time.Time // when it was sent
	inflight int
	checked  time.Time // the last look for lost datagrams
	next     int       // the next session to send on
	lastRx   time.Time

	answered int // sessions that have had an echo
	seen     []bool
	echoes   int
	sent     int
	lost     int
}

func newUDPGen(addr netip.Addr, port uint16, size, sessions int) (*udpGen, error) {
	if !addr.Is4() {
		return nil, fmt.Errorf("UDP modes take an IPv4 address, not %s", addr)
	}
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	g := &udpGen{ep: ep, size: size, events: make([]syscall.EpollEvent, 256),
		rx: newBatch(udpInflight, size+1, false), tx: newBatch(udpInflight, size, false),
		out: make([]bool, sessions), sentAt: make([]time.Time, sessions), seen: make([]bool, sessions)}
	to := netip.AddrPortFrom(addr, port)
	for i := range sessions {
		fd, err := udpSocket(to, netip.AddrPort{}, false)
		if err != nil {
			g.close()
			return nil, fmt.Errorf("session %d: %w", i, err)
		}
		g.fds = append(g.fds, fd)
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(i)}
		if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			g.close()
			return nil, fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	for i := range udpInflight {
		// Bytes that start with neither of the backend's TCP header
		// bytes; the rest does not matter.
		for j := range size {
			g.tx.buf[i*size+j] = byte('u' + j%7)
		}
	}
	return g, nil
}

func (g *udpGen) close() {
	for _, fd := range g.fds {
		syscall.Close(fd)
	}
	syscall.Close(g.ep)
}

// start puts udpInflight datagrams in flight.
func (g *udpGen) start() {
	g.inflight = 0
	clear(g.out)
	if len(g.fds) == 1 {
		g.send(0, udpInflight)
	} else {
		for range min(udpInflight, len(g.fds)) {
			g.sendNext()
		}
	}
	g.lastRx = time.Now()
}

// send sends n datagrams on session i.
func (g *udpGen) send(i, n int) {
	for k := range n {
		g.tx.iov[k].SetLen(g.size)
	}
	for done := 0; done < n; {
		m, err := mmsg(sysSendmmsg, g.fds[i], g.tx.h[done:n], 0)
		if err != nil {
			// A full buffer or an ICMP error: that one counts as lost
			// when the silence comes.
			m = 1
		}
		done += m
	}
	g.sent += n
	g.inflight += n
}

// sendNext sends one datagram on the next session without one in flight.
func (g *udpGen) sendNext() {
	for range len(g.fds) {
		i := g.next
		g.next = (g.next + 1) % len(g.fds)
		if !g.out[i] {
			g.out[i] = true
			g.sentAt[i] = time.Now()
			g.send(i, 1)
			return
		}
	}
}

// run steps while more says so, or until ctx ends.
func (g *udpGen) run(ctx context.Context, more func() bool) error {
	for more() {
		if err := g.step(); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// step waits for echoes and answers each with a new datagram; after a
// silence the datagrams in flight count as lost and are sent anew.
func (g *udpGen) step() error {
	n, err := syscall.EpollWait(g.ep, g.events, 10)
	if err != nil && err != syscall.EINTR {
		return fmt.Errorf("epoll_wait: %w", err)
	}
	for _, ev := range g.events[:max(n, 0)] {
		i := int(ev.Fd)
		g.rx.arm()
		k, err := mmsg(syscall.SYS_RECVMMSG, g.fds[i], g.rx.h, syscall.MSG_DONTWAIT)
		if err != nil {
			if err == syscall.EAGAIN || err == syscall.ECONNREFUSED {
				continue
			}
			return fmt.Errorf("recvmmsg: %w", err)
		}
		for j := range k {
			if int(g.rx.h[j].n) != g.size {
				return fmt.Errorf("an echo of %d bytes for a datagram of %d", g.rx.h[j].n, g.size)
			}
		}
		g.lastRx = time.Now()
		if !g.seen[i] {
			g.seen[i] = true
			g.answered++
		}
		g.echoes += k
		g.inflight = max(g.inflight-k, 0)
		if len(g.fds) == 1 {
			g.send(0, k)
			continue
		}
		if g.out[i] {
			g.out[i] = false
			g.sendNext()
		}
	}
	if len(g.fds) == 1 {
		if g.inflight > 0 && time.Since(g.lastRx) > udpLossWait {
			g.lost += g.inflight
			g.start()
		}
		return nil
	}
	// With many sessions, a datagram lost on one of them is found by its
	// age: the others go on answering meanwhile.
	if now := time.Now(); now.Sub(g.checked) > udpLossWait/4 {
		g.checked = now
		for i, out := range g.out {
			if out && now.Sub(g.sentAt[i]) > udpLossWait {
				g.out[i] = false
				g.inflight--
				g.lost++
				g.sendNext()
			}
		}
	}
	return nil
}

// runUDPLat measures request/response latency: 64-byte ping-pong over one
// session, one datagram at a time.
func runUDPLat(ctx context.Context, cfg *runConfig, r *result) error {
	c, err := net.Dial("udp", cfg.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	size := cfg.msgSize
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = 'l'
	}
	got := make([]byte, size+1)
	var lost int
	round := func(seq uint64) (time.Duration, bool, error) {
		binary.BigEndian.PutUint64(msg[size-8:], seq)
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, false, err
		}
		_ = c.SetReadDeadline(t0.Add(udpLossWait))
		for {
			n, err := c.Read(got)
			if err != nil {
				if isTimeout(err) {
					return 0, false, nil
				}
				return 0, false, err
			}
			if n == size && binary.BigEndian.Uint64(got[size-8:n]) == seq {
				return time.Since(t0), true, nil
			}
			// A late echo of an earlier datagram: skip it.
		}
	}
	// Warm up until warmRounds echoes have come back: a datagram lost, or
	// held past udpLossWait by a target still making its session or by a
	// loaded machine, is followed by the next.
	warmEnd := time.Now().Add(udpWarmMax)
	var seq uint64
	for echoed := 0; echoed < warmRounds; seq++ {
		if time.Now().After(warmEnd) || ctx.Err() != nil {
			return fmt.Errorf("warm-up: %d of %d echoes came back within %s", echoed, warmRounds, udpWarmMax)
		}
		_, ok, err := round(seq)
		if err != nil {
			return fmt.Errorf("warm-up echo %d: %w", seq, err)
		}
		if ok {
			echoed++
		}
	}
	samples := make([]time.Duration, 0, 1<<16)
	w, err := cfg.measure(func(deadline time.Time) error {
		for ; time.Now().Before(deadline) && ctx.Err() == nil; seq++ {
			rtt, ok, err := round(seq)
			if err != nil {
				return fmt.Errorf("echo %d: %w", seq, err)
			}
			if !ok {
				lost++
				continue
			}
			samples = append(samples, rtt)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(samples) == 0 {
		return errors.New("no echo came back")
	}
	r.setLatency(cfg, samples, w)
	r.set("lost", lost)
	r.set("msg_bytes", size)
	r.setWindow(cfg, w)
	return nil
}

// udpEchoOnce sends one datagram to addr and waits for its echo.
func udpEchoOnce(addr string, wait time.Duration) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("wait")); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "wait" {
		return fmt.Errorf("echo %q, want \"wait\"", buf[:n])
	}
	return nil
}

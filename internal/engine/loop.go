//go:build linux

package engine

import (
	"fmt"
	"net/netip"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/ilist"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/route"
)

const (
	// maxEvents is how many readiness events one epoll_wait returns.
	maxEvents = 256
	// acceptBatch bounds the connections accepted per event. One: the
	// listener is level-triggered, so a loop with more waiting is told
	// again at once, and a lone connection costs no accept4 that fails
	// with EAGAIN. A flood cannot starve the connections already open.
	acceptBatch = 1
	// bufSize is the loop's copy buffer. A read that fills it marks the
	// direction as bulk: it switches to splice(2).
	bufSize = 64 << 10
	// maxIdlePipes bounds the spare pipes a loop keeps for reuse; pipes in
	// use are bounded by the directions moving bulk data at this instant.
	maxIdlePipes = 8

	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// loop is one event loop: an epoll instance, the connections it owns and
// their timers. Everything in it is touched only by its own goroutine,
// except the command queue.
type loop struct {
	e    *Engine
	id   int
	poll evloop.Poller[*loop]

	// scratch space, reused so the data path allocates nothing
	ev  unix.EpollEvent
	rsa unix.RawSockaddrAny
	buf []byte

	conns     []*conn                 // by descriptor; both sockets of a connection point to it
	byAge     ilist.List[conn, *conn] // the connections the loop owns, in the order it opened them (of their IDs)
	listeners map[int]*lnState        // by descriptor
	paused    int                     // listeners in lnPaused
	resuming  atomic.Bool             // a resumeCapped command is queued
	load      atomic.Int64            // connections owned, and handed over but not yet opened
	gen       uint32
	wall      time.Time // time of the current iteration
	now       int64     // monotonic nanoseconds of the current iteration
	timers    evloop.Timers[*conn]
	pipes     []pipe
	peeks     []*peek       // spare buffers of connections choosing a route
	dec       route.Decider // the first call of every connection's decision
	pending   []*conn       // connections with work left after their budget
}

// lnMode is what a loop does with a listener. A listener is in one mode
// per loop, and setMode is the only way from one to another, so it is in
// the loop's epoll set exactly when it is lnWatched.
type lnMode uint8

const (
	// lnWatched: in the epoll set, accepted from when readable.
	lnWatched lnMode = iota
	// lnPaused: out of the set until a time (accept failed for want of
	// descriptors or memory); clients wait in the kernel's accept queue.
	lnPaused
	// lnCapped: out of the set until a connection closes (a connection
	// cap is reached). The socket is level-triggered and stays readable
	// while clients wait: watching it would spin.
	lnCapped
	// lnRemoved: forgotten (CloseListener).
	lnRemoved
)

// lnState is one listener as one loop serves it.
type lnState struct {
	ln      *Listener
	mode    lnMode
	until   int64         // lnPaused: when to watch again (loop clock)
	backoff time.Duration // the last pause; it doubles while accept keeps failing
}

func newLoop(e *Engine, id int) (*loop, error) {
	l := &loop{
		e: e, id: id,
		buf:       make([]byte, bufSize),
		listeners: map[int]*lnState{},
	}
	if err := l.poll.Open(fmt.Sprintf("event loop %d", id), maxEvents); err != nil {
		return nil, err
	}
	l.tick()
	return l, nil
}

// run is the loop's goroutine.
func (l *loop) run() {
	defer func() {
		for _, p := range l.pipes {
			p.close()
		}
		l.poll.Close()
	}()
	for !l.iterate() {
	}
}

// iterate waits for events once and handles them; it reports whether the
// loop is over.
func (l *loop) iterate() (over bool) {
	defer l.recoverLoop()
	events, err := l.poll.Wait(l.waitMillis())
	l.tick()
	if err != nil && err != unix.EINTR {
		l.e.log.Error("event loop failed; its connections are lost", "loop", l.id, "error", err.Error())
		return true
	}
	for i := range events {
		l.dispatch(&events[i])
	}
	l.runPending()
	l.runTimers()
	l.poll.Yield(l.now)
	return l.poll.Stopping() && l.open() == 0
}

// recoverLoop is the last guard: a panic outside any one connection's
// handling (accepting, a command, closing a connection that panicked) is
// logged and counted, and the loop goes on.
func (l *loop) recoverLoop() {
	v := recover()
	if v == nil {
		return
	}
	l.e.panics.Add(1)
	pe := &PanicError{Value: v, Stack: debug.Stack()}
	l.e.log.Error("panic in an event loop; it goes on", "loop", l.id, "error", pe.Error(), "stack", string(pe.Stack))
}

func (l *loop) tick() {
	t := time.Now()
	l.wall = t
	l.now = int64(t.Sub(l.e.start))
}

// waitMillis is how long epoll_wait may sleep: not past the next timer,
// not at all while connections have work left.
func (l *loop) waitMillis() int {
	if len(l.pending) > 0 {
		return 0
	}
	next := int64(-1)
	if _, at, ok := l.timers.First(); ok {
		next = at
	}
	if l.paused > 0 {
		for _, st := range l.listeners {
			if st.mode == lnPaused && (next < 0 || st.until < next) {
				next = st.until
			}
		}
	}
	if next < 0 {
		return -1
	}
	return evloop.WaitMillis(next, l.e.now())
}

func (l *loop) dispatch(ev *unix.EpollEvent) {
	fd, gen := int(ev.Fd), uint32(ev.Pad)
	if gen == 0 {
		if l.poll.IsWake(fd) {
			l.poll.RunCommands(l)
		} else if st := l.listeners[fd]; st != nil {
			l.accept(st)
		}
		return
	}
	if fd >= len(l.conns) {
		return
	}
	c := l.conns[fd]
	if c == nil || c.gen != gen {
		return // an event of a connection closed earlier in this batch
	}
	l.handle(c, fd, ev.Events)
}

// register adds a connection's socket to the loop's epoll, edge-triggered
// for both directions: readiness is remembered in the connection, so the
// registration never has to change.
func (l *loop) register(fd int, gen uint32) error {
	l.ev = unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
		Fd:     int32(fd),
		Pad:    int32(gen),
	}
	// A raw call, like the data path's: epoll_ctl cannot block.
	if _, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(l.poll.FD()), unix.EPOLL_CTL_ADD, uintptr(fd),
		uintptr(unsafe.Pointer(&l.ev)), 0, 0); e != 0 {
		return os.NewSyscallError("epoll_ctl", e)
	}
	return nil
}

func (l *loop) setConn(fd int, c *conn) {
	if fd >= len(l.conns) {
		n := max(2*len(l.conns), fd+1, 1024)
		grown := make([]*conn, n)
		copy(grown, l.conns)
		l.conns = grown
	}
	l.conns[fd] = c
}

func (l *loop) clearConn(fd int) {
	if fd >= 0 && fd < len(l.conns) {
		l.conns[fd] = nil
	}
}

func (l *loop) nextGen() uint32 {
	l.gen++
	if l.gen == 0 { // 0 marks listeners and the eventfd
		l.gen = 1
	}
	return l.gen
}

// forget drops what the loop keeps about a connection it no longer owns
// (closed, or handed to the TLS path): its timers and its place in the
// list. Its descriptors are the caller's business.
func (l *loop) forget(c *conn) {
	l.byAge.Remove(c)
	l.timers.Stop(&c.timer[timerDeadline])
	l.timers.Stop(&c.timer[timerThrottle])
}

// open counts the connections the loop owns.
func (l *loop) open() int {
	n := 0
	for fd, c := range l.conns {
		if c != nil && c.cfd == int32(fd) {
			n++
		}
	}
	return n
}

// --- listeners ---

func (l *loop) addListener(ln *Listener) error {
	if err := l.watchListener(ln); err != nil {
		return err
	}
	l.listeners[ln.fd] = &lnState{ln: ln, mode: lnWatched}
	return nil
}

// watchListener registers a listening socket level-triggered with
// EPOLLEXCLUSIVE: one loop, not all, is woken per pending connection.
func (l *loop) watchListener(ln *Listener) error {
	l.ev = unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ln.fd)}
	if err := unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_ADD, ln.fd, &l.ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// setMode moves st to mode; until is the end of a pause. It is the one
// place that adds a listener to the epoll set or takes it out.
func (l *loop) setMode(st *lnState, mode lnMode, until int64) {
	from := st.mode
	st.until = until
	if from == mode {
		return
	}
	if from == lnWatched {
		// Cannot fail: the socket is in the set, and open.
		_ = unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_DEL, st.ln.fd, nil)
	}
	if mode == lnWatched {
		if err := l.watchListener(st.ln); err != nil {
			// Try again later rather than lose the listener.
			l.e.log.Error("cannot watch a listener again; retrying", "address", st.ln.addr, "error", err.Error(),
				"retry_in", maxAcceptDelay.String())
			mode, st.until = lnPaused, l.now+int64(maxAcceptDelay)
		}
	}
	switch from {
	case lnPaused:
		l.paused--
	case lnCapped:
		l.e.capped.Add(-1)
	}
	switch mode {
	case lnPaused:
		l.paused++
	case lnCapped:
		l.e.capped.Add(1)
	}
	st.mode = mode
}

func (l *loop) removeListener(ln *Listener) {
	st := l.listeners[ln.fd]
	if st == nil || st.ln != ln {
		return
	}
	l.setMode(st, lnRemoved, 0)
	delete(l.listeners, ln.fd)
}

// accept takes up to acceptBatch connections from a watched listener.
func (l *loop) accept(st *lnState) {
	ln := st.ln
	for range acceptBatch {
		if st.mode != lnWatched {
			return // paused by the connection just accepted (no descriptors)
		}
		p := ln.Proxy()
		if ok, global := l.e.reserve(p); !ok {
			l.capPause(st, p, global)
			return
		}
		fd, err := accept4(ln.fd, &l.rsa)
		if err != nil {
			l.e.unreserve(p)
		}
		switch {
		case err == nil:
		case err == unix.EAGAIN:
			return
		case acceptSkipped(err):
			continue
		default:
			// EMFILE, ENFILE, ENOBUFS, ENOMEM and the unexpected: stop
			// accepting on this loop for a while and retry, so pj recovers
			// as soon as the condition clears. Clients wait in the
			// kernel's accept queue meanwhile.
			l.pause(st, os.NewSyscallError("accept4", err))
			return
		}
		if st.backoff > 0 {
			st.backoff = 0
			l.e.logAcceptingAgain(ln)
		}
		l.place(fd, ln, p, addrPort(&l.rsa))
	}
}

// pauseListeners stops accepting for a while on every listener the loop
// watches: a connection found no descriptor for its backend.
func (l *loop) pauseListeners(err error) {
	for _, st := range l.listeners {
		if st.mode == lnWatched {
			l.pause(st, err)
		}
	}
}

// place gives an accepted connection to the loop that owns the fewest.
//
// The kernel wakes the same loop for almost every connection: with
// EPOLLEXCLUSIVE it wakes the first epoll instance registered on the
// listener, and queues the event there even when that loop is busy. Left
// alone, one loop would serve nearly everything while the others idle (30
// of 32 connections, measured). HAProxy's answer is the same: accept
// anywhere, then hand the connection to the least loaded thread. The hand-
// off costs one command to the other loop; it happens only when this loop
// owns more connections than another.
func (l *loop) place(fd int, ln *Listener, p *proxy.Proxy, client netip.AddrPort) {
	target := l
	for _, o := range l.e.loops {
		if o.load.Load() < target.load.Load()-1 {
			target = o
		}
	}
	target.load.Add(1)
	if target != l && target.poll.Post(func(t *loop) { t.openConn(fd, ln, p, client) }) {
		return
	}
	if target != l { // that loop has exited: keep the connection here
		target.load.Add(-1)
		l.load.Add(1)
	}
	l.openConn(fd, ln, p, client)
}

// capPause stops watching a listener because a connection cap is
// reached: new clients wait in the kernel's accept queue, as with
// HAProxy's maxconn, until a connection ends (resumeCapped).
func (l *loop) capPause(st *lnState, p *proxy.Proxy, global bool) {
	l.setMode(st, lnCapped, 0)
	what, limit := "max_connections of the proxy", int64(p.MaxConnections)
	if global {
		what, limit = "max_connections of pj", l.e.maxConns.Load()
	}
	l.e.logCapped(st.ln, what, limit)
}

// resumeCapped watches the capped listeners again; accept caps them anew
// if the cap is still reached.
func (l *loop) resumeCapped() {
	l.resuming.Store(false)
	for _, st := range l.listeners {
		if st.mode == lnCapped {
			l.setMode(st, lnWatched, 0)
			l.accept(st)
		}
	}
}

// pause stops accepting on a listener for a back-off that doubles while
// accepting keeps failing.
func (l *loop) pause(st *lnState, err error) {
	d := min(max(2*st.backoff, minAcceptDelay), maxAcceptDelay)
	st.backoff = d
	l.setMode(st, lnPaused, l.now+int64(d))
	l.e.logAcceptError(st.ln, err, d)
}

// resumeListeners watches again the listeners whose pause is over.
func (l *loop) resumeListeners() {
	for _, st := range l.listeners {
		if st.mode == lnPaused && st.until <= l.now {
			l.setMode(st, lnWatched, 0)
			l.accept(st)
		}
	}
}

// --- timers and deferred work ---

// A connection has a timer of each kind.
type timerKind uint8

const (
	timerDeadline timerKind = iota // connect, header, idle and half-close timeouts
	timerThrottle                  // the bandwidth wake-up
	timerKinds
)

// setTimer arms c's timer of kind at at, or moves it there.
func (l *loop) setTimer(c *conn, kind timerKind, at int64) {
	l.timers.Set(&c.timer[kind], c, at)
}

// arm sets c's deadline (connect, header, idle or half-close timeout).
func (l *loop) arm(c *conn, at int64) { l.setTimer(c, timerDeadline, at) }

// disarm cancels c's deadline.
func (l *loop) disarm(c *conn) { l.timers.Stop(&c.timer[timerDeadline]) }

// throttle wakes c at when, after its bandwidth budget ran out.
func (l *loop) throttle(c *conn, when int64) {
	if at, ok := l.timers.Armed(&c.timer[timerThrottle]); ok && at <= when {
		return // an earlier wake-up is armed
	}
	l.setTimer(c, timerThrottle, when)
}

func (l *loop) runTimers() {
	if l.paused > 0 {
		l.resumeListeners()
	}
	for {
		c, slot, ok := l.timers.PopDue(l.now)
		if !ok {
			return
		}
		kind := timerDeadline // which of c's timers: the slot says
		if slot == &c.timer[timerThrottle] {
			kind = timerThrottle
		}
		l.fire(c, kind)
	}
}

// fire runs a connection's timer; a panic costs that connection only.
func (l *loop) fire(c *conn, kind timerKind) {
	defer l.recoverConn(c)
	if c.state == stateClosed {
		return // forget stops its timers; this is a guard
	}
	if kind == timerThrottle {
		l.e.faultAt("throttle")
		l.relay(c) // its bandwidth budget has refilled
		return
	}
	l.timerFired(c)
}

func (l *loop) queue(c *conn) {
	if !c.queued {
		c.queued = true
		l.pending = append(l.pending, c)
	}
}

func (l *loop) runPending() {
	if len(l.pending) == 0 {
		return
	}
	work := l.pending
	l.pending = nil
	for i, c := range work {
		work[i] = nil
		c.queued = false
		if c.state == stateRelay {
			l.resume(c)
		}
	}
}

// resume relays a connection that had work left; a panic costs that
// connection only.
func (l *loop) resume(c *conn) {
	defer l.recoverConn(c)
	l.e.faultAt("pending")
	l.relay(c)
}

// --- commands from other goroutines ---

// cut ends the loop's connections accepted by ln (every connection if ln
// is nil) with cause.
func (l *loop) cut(ln *Listener, cause error) {
	for fd, c := range l.conns {
		if c != nil && c.cfd == int32(fd) && c.state != stateClosed && (ln == nil || c.ln == ln) {
			l.abort(c, cause)
		}
	}
}

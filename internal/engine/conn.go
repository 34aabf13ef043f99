//go:build linux

package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/admission"
	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/ilist"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
)

type connState uint8

const (
	stateConnecting connState = iota // dialling a backend
	stateRelay                       // both sockets open, bytes flowing
	stateClosed
	stateHeader // reading a trusted peer's PROXY protocol header
	statePeek   // reading the client's first bytes to choose its route
	stateAnswer // connected; waiting for the backend's answer to a prelude
)

// Readiness bits, remembered between edge-triggered events.
const (
	cReadable uint8 = 1 << iota // the client socket has data or EOF to read
	cWritable                   // the client socket can take more bytes
	cHup                        // the client has sent its FIN (EPOLLRDHUP)
	bReadable
	bWritable
	bHup
)

// conn is one client connection. It is small on purpose: an idle
// connection costs this struct and its two sockets, nothing else.
type conn struct {
	id       uint64
	gen      uint32
	cfd, bfd int32
	state    connState
	ready    uint8
	queued   bool // in the loop's pending list
	spliced  bool // some bytes moved with splice(2)
	closedBy observe.Side

	ln       *Listener
	proxy    *proxy.Proxy
	route    *proxy.Route   // where the connection goes, once chosen
	peek     *peek          // the first bytes read to choose the route, until the backend has them
	sni      string         // the server name of the client's TLS hello, if one was read
	client   netip.AddrPort // from the PROXY header, if a trusted peer sent one
	local    netip.AddrPort // the address the client connected to; found when needed
	accepted time.Time
	clients  *admission.Clients // admitted here: Release at close
	checkSig bool               // refuse a PROXY header in the first bytes (untrusted peer)

	// connecting
	order    balance.Order
	deadline int64 // end of the whole connect attempt (loop clock)
	backend  *balance.Backend
	err      error // last connect error

	counted    bool                    // backend.Active includes this connection
	reached    bool                    // the backend answered
	connectDur int64                   // nanoseconds from accept to connected
	lastActive int64                   // loop clock of the last byte moved
	halfAt     int64                   // loop clock when the first direction ended; 0: both open
	byAge      ilist.Links[conn]       // its place in the loop's list, by age
	timer      [timerKinds]evloop.Slot // each timer's place in the loop's heap

	up, down dir
}

func (c *conn) Links() *ilist.Links[conn] { return &c.byAge }

// ErrConnectTimeout ends a connect attempt that got no answer in time.
var ErrConnectTimeout = errors.New("connect timeout")

// openConn starts the life of an accepted connection; accept has counted
// it in the engine's and the proxy's active connections already.
func (l *loop) openConn(fd int, ln *Listener, p *proxy.Proxy, client netip.AddrPort) {
	c := &conn{
		id: l.e.nextID.Add(1), gen: l.nextGen(), cfd: int32(fd), bfd: -1,
		ln: ln, proxy: p, client: client, accepted: l.wall,
	}
	l.byAge.PushBack(c)
	if err := l.register(fd, c.gen); err != nil {
		// Not in the table yet: close's bookkeeping applies all the same.
		c.closedBy = observe.SidePJ
		l.close(c, observe.StatusError, err)
		return
	}
	l.setConn(fd, c)
	defer l.recoverConn(c)
	if l.e.onOpen != nil {
		l.e.onOpen()
	}
	if t := p.TrustedProxies; t != nil {
		if t.Contains(client.Addr()) {
			// The header must come first, and soon.
			c.state = stateHeader
			l.arm(c, l.now+int64(p.HeaderTimeout))
			return // readable: handle reads it
		}
		c.checkSig = true
	}
	l.admit(c)
}

// connectNext dials the next backend of the connection's order.
func (l *loop) connectNext(c *conn) {
	if c.err != nil {
		l.e.faultAt("failover")
	}
	for {
		b := c.order.Next()
		if b == nil {
			l.connectFailed(c)
			return
		}
		c.backend = b
		if b.Err != nil {
			c.err = b.Err
			continue
		}
		if l.takeWarm(c) || l.dial(c) {
			return
		}
	}
}

// takeWarm gives c a warm connection to c.backend from its route's pool,
// if the pool has one: connected already, it goes straight on as a dial
// that succeeded at once. Bytes the backend sent first (a greeting) wait
// in the socket and reach the client with the relay's first read.
func (l *loop) takeWarm(c *conn) bool {
	w := c.route.Warm
	if w == nil {
		return false
	}
	fd := w.Take(c.backend)
	if fd < 0 {
		return false
	}
	if err := l.register(fd, c.gen); err != nil {
		closeFD(fd)
		return false // dial as without a pool
	}
	c.bfd = int32(fd)
	l.setConn(fd, c)
	// Counted as active from now: a warm connection no client holds is
	// not load, for least-conn or anyone.
	c.backend.Active.Add(1)
	c.counted = true
	l.connected(c)
	return true
}

// dial starts connecting c to c.backend. It reports false when that
// backend failed at once and the next should be tried. Each try gets an
// equal share of the connect time left, so a backend that swallows SYNs
// cannot starve the others, and one that refuses costs nothing.
func (l *loop) dial(c *conn) bool {
	b := c.backend
	left := c.deadline - l.now
	if left <= 0 {
		if c.err == nil {
			c.err = fmt.Errorf("connect to %s: %w", b.Address, ErrConnectTimeout)
		}
		l.connectFailed(c)
		return true
	}
	fd, err := newBackendSocket(b.Addr)
	if err != nil {
		c.err = fmt.Errorf("connect to %s: %w", b.Address, err)
		if evloop.IsShortage(err) {
			// Out of descriptors (or socket memory): this client waits,
			// and no new client is accepted, until some are free again
			// or the connect time is spent.
			l.pauseListeners(err)
			c.state = stateConnecting
			l.arm(c, min(l.now+int64(shortageRetry), c.deadline))
			return true
		}
		return false
	}
	err = evloop.Connect(fd, b.Addr, &l.rsa)
	if err != nil && err != unix.EINPROGRESS {
		closeFD(fd)
		c.err = fmt.Errorf("connect to %s: %w", b.Address, err)
		l.observe(c, balance.Result{Err: c.err, Passive: true})
		return false
	}
	if rerr := l.register(fd, c.gen); rerr != nil {
		closeFD(fd)
		c.err = fmt.Errorf("connect to %s: %w", b.Address, rerr)
		return false
	}
	c.bfd = int32(fd)
	l.setConn(fd, c)
	// A connection counts as active on its backend from the start of the
	// attempt, so that least-conn sees connections still being opened.
	b.Active.Add(1)
	c.counted = true
	if err == nil {
		l.connected(c)
		return true
	}
	c.state = stateConnecting
	l.arm(c, l.now+left/int64(c.order.Remaining()+1))
	return true
}

// shortageRetry is how soon a connection that found no free descriptor
// tries again.
const shortageRetry = 20 * time.Millisecond

// connectEvent handles readiness of a backend socket being connected.
func (l *loop) connectEvent(c *conn, events uint32) {
	if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return
	}
	if events&unix.EPOLLERR == 0 && events&unix.EPOLLOUT != 0 {
		// Writable without an error: the handshake completed. (A failed
		// connect always raises EPOLLERR, so SO_ERROR need not be read.
		// A backend that answered and closed at once is connected too:
		// what it sent is relayed.)
		l.connected(c)
		return
	}
	err := evloop.SocketError(int(c.bfd))
	if err == nil {
		err = unix.ECONNRESET
	}
	c.err = fmt.Errorf("connect to %s: %w", c.backend.Address, err)
	l.dropBackend(c)
	l.connectNext(c)
}

// dropBackend abandons a failed connect attempt: its socket is closed and
// the failure counts towards the backend's fall (passive health check).
func (l *loop) dropBackend(c *conn) {
	l.clearConn(int(c.bfd))
	closeFD(int(c.bfd)) // a failed attempt: nothing was sent on it
	c.bfd = -1
	c.ready &^= bReadable | bWritable | bHup
	if c.counted {
		c.backend.Active.Add(-1)
		c.counted = false
	}
	l.observe(c, balance.Result{Err: c.err, Passive: true})
}

// observe records a passive health observation of c's backend.
func (l *loop) observe(c *conn, r balance.Result) {
	h := c.route.HealthCheck
	if tr, changed := c.backend.Observe(r, h.Rise, h.Fall); changed {
		log := l.e.log
		if c.proxy.Routed() {
			log = log.With("route", c.route.Name)
		}
		balance.LogTransition(log, c.proxy.Name, c.backend, tr)
	}
}

// connected goes on with a backend that accepted the connection: a
// prelude the route needs first, then the relay.
func (l *loop) connected(c *conn) {
	if c.peek != nil && c.peek.dec.Prelude > 0 {
		l.sendPrelude(c)
		return
	}
	l.established(c)
}

// established starts relaying to a backend that is ready for the
// client's bytes.
func (l *loop) established(c *conn) {
	c.state = stateRelay
	c.err = nil
	c.order = balance.Order{}
	c.ready |= bWritable
	c.backend.Total.Add(1)
	c.reached = true
	c.connectDur = int64(l.wall.Sub(c.accepted))
	l.observe(c, balance.Result{OK: true, Passive: true})
	c.backend.Connect.Observe(time.Duration(c.connectDur))
	c.lastActive = l.now
	l.disarm(c)
	if c.route.ProxyProtocol != 0 && (c.peek == nil || c.peek.dec.Prelude == 0) {
		if err := l.sendHeader(c); err != nil {
			l.abort(c, err)
			return
		}
	}
	if c.peek != nil {
		if err := l.sendPeeked(c); err != nil {
			l.abort(c, err)
			return
		}
	}
	l.armRelay(c)
	if bw := c.route.Bandwidth; bw > 0 {
		c.up.budget, c.down.budget = newBucket(bw, l.now), newBucket(bw, l.now)
	}
	l.relay(c)
}

func (l *loop) connectFailed(c *conn) {
	status := observe.StatusConnectFailed
	if c.backend == nil {
		status = observe.StatusNoBackend
		c.err = balance.ErrNoBackend
	}
	l.close(c, status, c.err)
}

// handle applies one readiness event to a connection.
func (l *loop) handle(c *conn, fd int, events uint32) {
	defer l.recoverConn(c)
	isClient := int32(fd) == c.cfd
	var r, w, h uint8 = bReadable, bWritable, bHup
	if isClient {
		r, w, h = cReadable, cWritable, cHup
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.ready |= r
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.ready |= w
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		c.ready |= h
	}
	if c.state == stateHeader || c.state == statePeek {
		switch {
		case events&unix.EPOLLERR != 0:
			l.abort(c, sideError(observe.SideClient, evloop.SocketError(fd)))
		case c.state == stateHeader:
			l.readHeader(c)
		default:
			l.peekRead(c)
		}
		return
	}
	if c.state == stateConnecting || c.state == stateAnswer {
		switch {
		case !isClient && c.state == stateAnswer:
			l.answerEvent(c, events)
		case !isClient:
			l.connectEvent(c, events)
		case events&unix.EPOLLERR != 0:
			// The client gave up (reset) before a backend answered.
			l.abort(c, sideError(observe.SideClient, evloop.SocketError(fd)))
		}
		return
	}
	if events&unix.EPOLLERR != 0 {
		l.abort(c, l.deliverBeforeError(c, isClient))
		return
	}
	l.relay(c)
}

// deliverBeforeError passes on what a socket with a pending error (a
// reset, most often) received before it: the kernel keeps those bytes
// readable ahead of the error. It returns the error to end c with.
func (l *loop) deliverBeforeError(c *conn, isClient bool) error {
	// Read on to the error itself: a short read must not be taken for the
	// end of the stream (as EPOLLHUP would have it), or a FIN would go out
	// ahead of the reset.
	c.ready &^= cHup | bHup
	f := c.downstream()
	if isClient {
		f = c.upstream()
	}
	if !f.d.done {
		if err := l.pump(c, &f); err != nil {
			return err
		}
	}
	return sideError(f.from, evloop.SocketError(f.src))
}

func (l *loop) timerFired(c *conn) {
	switch c.state {
	case stateHeader:
		l.refuse(c, fmt.Errorf("%w: none within %s", errNoHeader, c.proxy.HeaderTimeout))
	case statePeek:
		l.peekDecide(c, true)
	case stateAnswer:
		l.answerFailed(c, fmt.Errorf("%w: no answer to the %s", ErrConnectTimeout, preludeName))
	case stateConnecting:
		if c.bfd < 0 {
			// Waiting out a descriptor shortage: try the same backend.
			if !l.dial(c) {
				l.connectNext(c)
			}
			return
		}
		l.e.faultAt("connect_timeout")
		c.err = fmt.Errorf("connect to %s: %w", c.backend.Address, ErrConnectTimeout)
		l.dropBackend(c)
		l.connectNext(c)
	case stateRelay:
		l.e.faultAt("idle")
		if !l.relayTimedOut(c) {
			l.armRelay(c)
		}
	}
}

// relayTimedOut ends c if its idle or its half-close timeout is over, and
// reports whether it did.
func (l *loop) relayTimedOut(c *conn) bool {
	if idle := int64(c.route.IdleTimeout); idle > 0 && l.now-c.lastActive >= idle {
		l.abort(c, ErrIdleTimeout)
		return true
	}
	if half := int64(c.route.HalfCloseTimeout); half > 0 && c.halfAt > 0 && l.now-max(c.lastActive, c.halfAt) >= half {
		l.abort(c, fmt.Errorf("%w: the %s sent nothing for %s after the %s finished",
			ErrHalfCloseTimeout, c.openSide(), c.route.HalfCloseTimeout, c.openSide().Other()))
		return true
	}
	return false
}

// armRelay sets a relaying connection's deadline: the idle timeout from
// its last byte, and once one direction has ended, the half-close timeout
// from the later of that end and the last byte. Bytes moved meanwhile
// push the deadline back when it fires, so the data path never touches
// the timer.
func (l *loop) armRelay(c *conn) {
	at := int64(-1)
	if idle := int64(c.route.IdleTimeout); idle > 0 {
		at = c.lastActive + idle
	}
	if half := int64(c.route.HalfCloseTimeout); half > 0 && c.halfAt > 0 {
		if h := max(c.lastActive, c.halfAt) + half; at < 0 || h < at {
			at = h
		}
	}
	if at < 0 {
		l.disarm(c)
		return
	}
	l.arm(c, at)
}

// openSide names the side whose direction is still open.
func (c *conn) openSide() observe.Side {
	if c.up.done {
		return observe.SideBackend
	}
	return observe.SideClient
}

// abort ends a connection before both directions finished.
func (l *loop) abort(c *conn, err error) {
	if c.state == stateClosed {
		return
	}
	status := statusOf(err)
	var se *observe.SideError
	if errors.As(err, &se) && c.closedBy == observe.SideNone {
		c.closedBy = se.Side
	}
	if c.closedBy == observe.SideNone {
		c.closedBy = observe.SidePJ
	}
	if status == observe.StatusReset && IsReset(err) || l.inFlight(c) {
		// Pass a reset on as a reset; and cut with a reset whenever
		// bytes are abandoned in flight: a FIN would tell the peer the
		// transfer ended where it was cut.
		lingerZero(int(c.cfd))
		if c.bfd >= 0 {
			lingerZero(int(c.bfd))
		}
	}
	l.close(c, status, err)
}

// inFlight reports whether closing c now abandons bytes: held by pj (a
// spill, a pipe), unread in a socket, or written but not yet taken by a
// peer (a socket's send queue).
func (l *loop) inFlight(c *conn) bool {
	if c.state != stateRelay {
		return false // nothing was relayed yet
	}
	for _, d := range [...]*dir{&c.up, &c.down} {
		if len(d.spill) > 0 || d.inPipe > 0 {
			return true
		}
	}
	for _, fd := range [...]int32{c.cfd, c.bfd} {
		if fd < 0 {
			continue
		}
		for _, req := range [...]uint{unix.SIOCINQ, unix.SIOCOUTQ} {
			if n, err := unix.IoctlGetInt(int(fd), req); err == nil && n > 0 {
				return true
			}
		}
	}
	return false
}

// close releases everything a connection holds and logs it.
func (l *loop) close(c *conn, status observe.Status, err error) {
	if c.state == stateClosed {
		return
	}
	c.state = stateClosed
	l.forget(c)
	l.load.Add(-1)
	l.clearConn(int(c.cfd))
	closeFD(int(c.cfd))
	if c.bfd >= 0 {
		l.clearConn(int(c.bfd))
		closeFD(int(c.bfd))
	}
	for _, d := range []*dir{&c.up, &c.down} {
		if d.hasPipe {
			l.putPipe(d)
		}
		d.spill = nil
	}
	if c.peek != nil {
		l.putPeek(c.peek)
		c.peek = nil
	}
	if c.counted {
		c.backend.Active.Add(-1)
	}
	if c.clients != nil {
		c.clients.Release(c.client.Addr())
	}
	st := c.proxy.Stats
	st.Conns[observe.StatusIndex(status)].Add(1)
	st.Duration.Observe(l.wall.Sub(c.accepted))
	l.logConn(c, status, err)
	// Last: it may tell a draining server that the last connection ended.
	l.e.release(c.proxy)
}

func (l *loop) logConn(c *conn, status observe.Status, err error) {
	rec := observe.Conn{
		ID:         c.id,
		Proxy:      c.proxy.Name,
		ClientAddr: c.client,
		Listener:   c.ln.addr,
		Accepted:   c.accepted,
		Duration:   l.wall.Sub(c.accepted),
		Up:         c.up.bytes.Load(),
		Down:       c.down.bytes.Load(),
		Status:     status,
		Err:        err,
		Relay:      modeCopy,
		ClosedBy:   c.closedBy.String(),
		SNI:        c.sni,
	}
	if c.route != nil && c.proxy.Routed() {
		rec.Route = c.route.Name
	}
	if c.reached {
		rec.Connect = time.Duration(c.connectDur)
	}
	if rec.ClosedBy == "" {
		rec.ClosedBy = observe.SidePJ.String() // it never got as far as a side ending
	}
	if c.spliced {
		rec.Relay = modeSplice
	}
	// The backend field names the backend reached, or for a failed
	// connect the last one tried.
	if c.backend != nil && (c.reached || status == observe.StatusConnectFailed) {
		rec.Backend = c.backend.Address
	}
	if status == observe.StatusOK || status == observe.StatusShutdown || errors.Is(err, ErrIdleTimeout) {
		rec.Err = nil // the status says it all; a half-close timeout says which side hung
	}
	l.e.logConn(&rec)
}

// recoverConn turns a panic while handling c into the end of c alone.
// Every path that handles a connection defers it: events, timers, work
// left for a later turn, a newly accepted connection.
func (l *loop) recoverConn(c *conn) {
	v := recover()
	if v == nil {
		return
	}
	l.e.panics.Add(1)
	pe := &PanicError{Value: v, Stack: debug.Stack()}
	l.e.log.Error("panic while handling a connection; the connection was closed and pj goes on",
		"conn", c.id, "client", c.client.String(), "error", pe.Error(), "stack", string(pe.Stack))
	if c.state != stateClosed {
		defer l.recoverLoop() // a connection too broken to close
		l.abort(c, pe)
	}
}

func sideError(s observe.Side, err error) error {
	if err == nil {
		err = unix.ECONNRESET
	}
	return &observe.SideError{Side: s, Err: err}
}

// sendHeader writes the PROXY protocol header to the backend that just
// answered, before any byte of the client's. The socket's buffer is empty,
// so the write is whole; if it is not, the rest waits in spill.
func (l *loop) sendHeader(c *conn) error {
	hdr, err := l.proxyHeader(c)
	if err != nil {
		return fmt.Errorf("format the PROXY protocol header: %w", err)
	}
	n, err := sysWrite(int(c.bfd), hdr)
	if err != nil && err != unix.EAGAIN {
		return sideError(observe.SideBackend, os.NewSyscallError("write", err))
	}
	if n < len(hdr) {
		c.up.spill = append([]byte(nil), hdr[max(n, 0):]...)
		c.up.uncounted = len(c.up.spill)
	}
	return nil
}

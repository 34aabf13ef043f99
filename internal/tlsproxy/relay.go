package tlsproxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/observe"
)

// bufSize is the relay buffer of one direction: a TLS record holds at most
// 16 KiB of plaintext, so two records' worth per read.
const bufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// direction is one half of a relay.
type direction struct {
	src, dst         net.Conn
	srcSide, dstSide observe.Side
	bytes            *atomic.Int64  // delivered to dst, for the record and the API
	total            *atomic.Uint64 // the proxy's counter of this direction
}

// relay copies both directions until both have ended, or one fails, or
// the idle timeout or an abort ends the connection.
func (ss *session) relay() (observe.Status, error) {
	ss.mu.Lock()
	front, back := ss.front, ss.back
	ss.mu.Unlock()
	ss.touch()
	if idle := ss.r.IdleTimeout; idle > 0 {
		ss.arm(idle)
	}
	defer ss.disarm()
	up := &direction{src: front, dst: back, srcSide: observe.SideClient, dstSide: observe.SideBackend, bytes: &ss.up, total: &ss.r.Stats.BytesUp}
	down := &direction{src: back, dst: front, srcSide: observe.SideBackend, dstSide: observe.SideClient, bytes: &ss.down, total: &ss.r.Stats.BytesDown}

	errs := make(chan error, 2)
	var ended atomic.Int32
	first := func(s observe.Side) (last bool) {
		n := ended.Add(1)
		if n == 1 {
			ss.firstEnd.Store(int32(s))
			// Half-closed: the half-close timeout starts.
			if ss.r.HalfCloseTimeout > 0 {
				ss.halfAt.Store(int64(time.Since(ss.start)))
				ss.timerCheck()
			}
		}
		return n == 2
	}
	go func() { errs <- ss.copyUp(up, first) }()
	err := ss.copyDown(down, first)
	if err != nil {
		ss.fail(err)
	}
	err2 := <-errs
	if err == nil {
		err = err2
	}
	if c := ss.causeErr(); c != nil {
		return statusOf(c), c
	}
	ss.closedBy = observe.Side(ss.firstEnd.Load())
	if err != nil {
		var se *observe.SideError
		if errors.As(err, &se) {
			ss.closedBy = se.Side
		}
		return observe.StatusReset, err
	}
	return observe.StatusOK, nil
}

// copyUp and copyDown are the two directions, named so that a goroutine
// dump says which is which.
func (ss *session) copyUp(d *direction, ended func(observe.Side) bool) error {
	err := ss.pump(d, ended)
	if err != nil {
		ss.fail(err)
	}
	return err
}

func (ss *session) copyDown(d *direction, ended func(observe.Side) bool) error {
	return ss.pump(d, ended)
}

// pump moves bytes from d.src to d.dst until the source ends, then passes
// the end on (half-close: a TLS close_notify and a FIN) and returns nil;
// or returns the error that stopped it.
func (ss *session) pump(d *direction, ended func(observe.Side) bool) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := d.src.Read(buf)
		if n > 0 {
			if !ss.arrived() {
				// A timeout ended the connection as these bytes came:
				// they go nowhere.
				return ss.causeErr()
			}
			w, werr := d.dst.Write(buf[:n])
			d.bytes.Add(int64(w))
			d.total.Add(uint64(w))
			if werr != nil {
				return &observe.SideError{Side: d.dstSide, Err: werr}
			}
			ss.touch()
		}
		if rerr == io.EOF {
			last := ended(d.srcSide)
			// When both directions have ended, the peer may be gone
			// already (a client that closes once it has its answer):
			// the end it is told of is a courtesy, and failing to tell
			// it is no failure of the connection.
			if err := closeWrite(d.dst); err != nil && !errors.Is(err, net.ErrClosed) && !last {
				return &observe.SideError{Side: d.dstSide, Err: err}
			}
			return nil
		}
		if rerr != nil {
			return &observe.SideError{Side: d.srcSide, Err: rerr}
		}
	}
}

// fail ends the other direction of a relay whose one direction failed: a
// reset is passed on as a reset, anything else as a close.
func (ss *session) fail(err error) {
	ss.mu.Lock()
	front, back := ss.front, ss.back
	ss.mu.Unlock()
	if isReset(err) {
		lingerZero(front)
		lingerZero(back)
	}
	_ = front.Close()
	_ = back.Close()
}

// testHookIdleFired, set by tests only, runs when the idle timeout has
// found a connection quiet, before the connection ends.
var testHookIdleFired atomic.Pointer[func()]

// touch notes that bytes moved, for the idle timeout.
func (ss *session) touch() { ss.lastActive.Store(int64(time.Since(ss.start))) }

// timerCheck runs when the relay's timer fires, and when one direction
// ends: it ends a connection quiet for the whole idle timeout, or
// half-closed and quiet for the whole half-close timeout (from the later
// of the end and the last byte), or sets the timer for the earlier of the
// two deadlines. Bytes moving never touch the timer; they push the
// deadline back when it fires.
func (ss *session) timerCheck() {
	ended, next := ss.judge()
	switch {
	case ended:
		ss.shut()
	case next >= 0:
		ss.arm(next)
	}
}

// judge decides whether a timeout ends the connection now (then it records
// the cause, and no byte that arrives later is passed on) or in how long
// to look again (-1: never). It holds quietMu, so that a byte arriving
// meanwhile is either counted before the verdict or dropped after it:
// pj never passes a byte on and then ends the connection as quiet.
func (ss *session) judge() (ended bool, next time.Duration) {
	ss.quietMu.Lock()
	defer ss.quietMu.Unlock()
	now := time.Since(ss.start)
	last := time.Duration(ss.lastActive.Load())
	next = -1
	if idle := ss.r.IdleTimeout; idle > 0 {
		if now-last >= idle {
			if hook := testHookIdleFired.Load(); hook != nil {
				(*hook)()
			}
			return ss.timedOut(ErrIdleTimeout), -1
		}
		next = idle - (now - last)
	}
	if half := ss.r.HalfCloseTimeout; half > 0 {
		if at := time.Duration(ss.halfAt.Load()); at > 0 {
			quiet := now - max(last, at)
			if quiet >= half {
				open := observe.SideBackend
				if observe.Side(ss.firstEnd.Load()) == observe.SideBackend {
					open = observe.SideClient
				}
				return ss.timedOut(fmt.Errorf("%w: the %s sent nothing for %s after the %s finished",
					ErrHalfCloseTimeout, open, half, observe.Side(ss.firstEnd.Load()))), -1
			}
			if next < 0 || half-quiet < next {
				next = half - quiet
			}
		}
	}
	return false, next
}

// timedOut marks the connection ended by a timeout, with quietMu held: no
// byte is passed on from now. It reports whether cause is the
// connection's (not when it has one already, or is finished).
func (ss *session) timedOut(cause error) bool {
	ss.quiet = true
	return ss.blame(cause)
}

// arrived notes that bytes came in, for the timeouts, and reports whether
// they may be passed on: not once a timeout has ended the connection.
func (ss *session) arrived() bool {
	ss.quietMu.Lock()
	defer ss.quietMu.Unlock()
	if ss.quiet {
		return false
	}
	ss.touch()
	return true
}

// arm sets the relay's timer to fire in d, unless the relay is over.
func (ss *session) arm(d time.Duration) {
	ss.timerMu.Lock()
	defer ss.timerMu.Unlock()
	switch {
	case ss.timerOff:
	case ss.timer == nil:
		ss.timer = time.AfterFunc(d, ss.timerCheck)
	default:
		ss.timer.Reset(d)
	}
}

// disarm stops the relay's timer for good.
func (ss *session) disarm() {
	ss.timerMu.Lock()
	defer ss.timerMu.Unlock()
	ss.timerOff = true
	if ss.timer != nil {
		ss.timer.Stop()
	}
}

// closeWrite half-closes c: for TLS a close_notify alert, then a FIN on
// the socket below it (crypto/tls does not send one), so that a peer that
// waits for either sees the end.
func closeWrite(c net.Conn) error {
	type closeWriter interface{ CloseWrite() error }
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		c = tc.NetConn()
	}
	if cw, ok := c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

// lingerZero makes the next close of c send a reset.
func lingerZero(c net.Conn) {
	if c == nil {
		return
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if cc, ok := c.(*clientConn); ok {
		c = cc.Conn
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
}

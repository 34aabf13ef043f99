//go:build linux

package engine

import (
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/observe"
)

// maxPerTurn bounds the bytes one direction moves before the loop turns
// to other connections; the rest waits in the pending list.
const maxPerTurn = 4 << 20

// dir is one direction of a relay.
type dir struct {
	bytes     atomic.Int64 // delivered to the destination
	spill     []byte       // read but not yet written (destination was full)
	uncounted int          // leading bytes of spill that pj wrote itself (a PROXY header)
	budget    *bucket      // the bandwidth cap; nil: none
	pipe      pipe
	inPipe    int32 // bytes in pipe
	hasPipe   bool
	bulk      bool // the last read filled the buffer: splice
	eof       bool // the source has ended
	done      bool // the FIN has been passed on
}

// flow is one direction of a connection as the relay sees it: where its
// bytes come from and go to, and which of the connection's readiness
// bits say that each end can move.
type flow struct {
	d        *dir
	src, dst int          // descriptors: bytes are read from src, written to dst
	readable uint8        // src has data or its end to read
	hup      uint8        // src has sent its FIN
	writable uint8        // dst can take more bytes
	from, to observe.Side // who src and dst are, for closed_by and errors
}

// upstream is c's direction from the client to the backend.
func (c *conn) upstream() flow {
	return flow{d: &c.up, src: int(c.cfd), dst: int(c.bfd),
		readable: cReadable, hup: cHup, writable: bWritable, from: observe.SideClient, to: observe.SideBackend}
}

// downstream is c's direction from the backend to the client.
func (c *conn) downstream() flow {
	return flow{d: &c.down, src: int(c.bfd), dst: int(c.cfd),
		readable: bReadable, hup: bHup, writable: cWritable, from: observe.SideBackend, to: observe.SideClient}
}

// relay moves whatever both directions can move now.
func (l *loop) relay(c *conn) {
	if !c.up.done {
		up := c.upstream()
		if err := l.pump(c, &up); err != nil {
			l.abort(c, err)
			return
		}
	}
	if !c.down.done {
		down := c.downstream()
		if err := l.pump(c, &down); err != nil {
			l.abort(c, err)
			return
		}
	}
	if c.up.done && c.down.done {
		l.close(c, observe.StatusOK, nil)
	}
}

// pump moves one direction until one of its ends would block, the source
// ends (its FIN is passed on) or the turn's budget is spent.
//
// Small messages go through the loop's buffer: one read, one write. A
// direction that moves a buffer's worth at once is bulk (see
// dir.learnBulk), and bulk moves with splice(2) through a pipe, which is
// given back as soon as it is empty.
func (l *loop) pump(c *conn, f *flow) error {
	moved, err := l.turn(c, f)
	if moved > 0 {
		// A direction that moved a buffer's worth in one turn starts the
		// next with splice; one that moved less starts with a read.
		f.d.learnBulk(moved)
	}
	return err
}

// learnBulk decides, from n bytes moved at once (by a read, or by a whole
// turn), whether the direction goes on with splice (bulk) or with reads.
func (d *dir) learnBulk(n int) { d.bulk = n >= bufSize }

// turn is one turn of a direction: bytes already taken from the source
// leave first, in order (spill, then pipe); then the source's FIN is
// passed on, or new bytes are taken from the source.
func (l *loop) turn(c *conn, f *flow) (moved int, err error) {
	d := f.d
	for {
		var goOn bool
		switch {
		case len(d.spill) > 0:
			goOn, err = l.flushSpill(c, f)
		case d.inPipe > 0:
			goOn, err = l.drainPipe(c, f)
		default:
			if d.hasPipe {
				l.putPipe(d)
			}
			if d.eof {
				return moved, l.passFIN(c, f)
			}
			if goOn, err = l.mayFill(c, f, moved); goOn {
				var n int
				n, goOn, err = l.fill(c, f)
				moved += n
			}
		}
		if !goOn || err != nil {
			return moved, err
		}
	}
}

// flushSpill writes the bytes a full destination left in d.spill. It
// reports whether the spill is gone.
func (l *loop) flushSpill(c *conn, f *flow) (bool, error) {
	d := f.d
	if c.ready&f.writable == 0 {
		return false, nil
	}
	n, err := sysWrite(f.dst, d.spill)
	if err == unix.EAGAIN {
		c.ready &^= f.writable
		return false, nil
	}
	if err != nil {
		return false, sideError(f.to, os.NewSyscallError("write", err))
	}
	own := min(n, d.uncounted) // pj's own header is not the client's bytes
	d.uncounted -= own
	l.delivered(c, d, n-own)
	if d.spill = d.spill[n:]; len(d.spill) > 0 {
		c.ready &^= f.writable // a short write: the socket is full
		return false, nil
	}
	d.spill = nil
	return true, nil
}

// drainPipe splices what d's pipe holds to the destination. It reports
// whether the destination took some and the direction should go on.
func (l *loop) drainPipe(c *conn, f *flow) (bool, error) {
	d := f.d
	if c.ready&f.writable == 0 {
		return false, nil
	}
	n, err := sysSplice(int(d.pipe.r), f.dst, int(d.inPipe))
	if err == unix.EAGAIN {
		c.ready &^= f.writable
		return false, nil
	}
	if err != nil {
		return false, sideError(f.to, os.NewSyscallError("splice", err))
	}
	l.delivered(c, d, n)
	d.inPipe -= int32(n)
	return true, nil
}

// passFIN passes the source's end of stream on to the destination, and
// starts the half-close timeout if the other direction is still open.
func (l *loop) passFIN(c *conn, f *flow) error {
	// When the other direction is over already, the close that follows
	// sends the FIN: no shutdown needed (and nothing is left unread that
	// would turn the close into a reset: the other direction has read its
	// end of stream).
	other := &c.down
	if f.d == &c.down {
		other = &c.up
	}
	if !other.done {
		if err := shutdownWrite(f.dst); err != nil {
			return sideError(f.to, os.NewSyscallError("shutdown", err))
		}
	}
	f.d.done = true
	if c.closedBy == observe.SideNone {
		c.closedBy = f.from
	}
	if !other.done {
		// Half-closed: the half-close timeout starts.
		c.halfAt = l.now
		if c.route.HalfCloseTimeout > 0 {
			l.armRelay(c)
		}
	}
	return nil
}

// mayFill reports whether the direction may take new bytes from its
// source now: the source has some, a PROXY header from an untrusted
// client is ruled out, the turn's budget is not spent, and the
// destination is not known to be full.
func (l *loop) mayFill(c *conn, f *flow, moved int) (bool, error) {
	if c.ready&f.readable == 0 {
		return false, nil
	}
	if c.checkSig && f.d == &c.up {
		if wait, err := l.judgeSignature(c); wait || err != nil {
			return false, err
		}
	}
	if moved >= l.e.perTurn {
		l.queue(c)
		return false, nil
	}
	// With the destination full, leave the bytes in the source's socket
	// (its readiness is remembered) rather than read them into a spill;
	// the destination's EPOLLOUT resumes the direction.
	return c.ready&f.writable != 0, nil
}

// fill takes new bytes from the source, within the bandwidth cap: a bulk
// direction splices them into its pipe; another reads them into the
// loop's buffer and writes them on at once, keeping what the destination
// does not take in d.spill. It reports the bytes taken and whether the
// direction should go on.
func (l *loop) fill(c *conn, f *flow) (n int, goOn bool, err error) {
	d := f.d
	splice := d.bulk && l.getPipe(d)
	// Take only as much budget as this path can use: a read fills at
	// most the buffer, a splice at most the pipe.
	want := len(l.buf)
	if splice {
		want = pipeSize
	}
	if d.budget != nil {
		if want = d.budget.take(l.now, want); want == 0 {
			if splice {
				l.putPipe(d) // empty: a throttled direction holds none
			}
			l.throttle(c, d.budget.ready(l.now))
			return 0, false, nil
		}
	}
	if splice {
		n, err = l.fillPipe(c, f, want)
	} else {
		n, err = l.fillBuffer(c, f, want)
	}
	return n, err == nil, err
}

// fillPipe splices up to want bytes from the source into d's pipe.
func (l *loop) fillPipe(c *conn, f *flow, want int) (int, error) {
	d := f.d
	n, err := sysSplice(f.src, int(d.pipe.w), want)
	if d.budget != nil {
		d.budget.giveBack(want - max(n, 0))
	}
	switch {
	case err == unix.EAGAIN:
		c.ready &^= f.readable
	case err != nil:
		return 0, sideError(f.from, os.NewSyscallError("splice", err))
	case n == 0:
		d.eof = true
	default:
		d.inPipe = int32(n)
		c.spliced = true
		return n, nil
	}
	return 0, nil
}

// fillBuffer reads up to want bytes from the source into the loop's
// buffer and writes them to the destination; what it does not take waits
// in d.spill.
func (l *loop) fillBuffer(c *conn, f *flow, want int) (int, error) {
	d := f.d
	buf := l.buf[:want]
	n, err := sysRead(f.src, buf)
	if d.budget != nil {
		d.budget.giveBack(len(buf) - max(n, 0))
	}
	switch {
	case err == unix.EAGAIN:
		c.ready &^= f.readable
		return 0, nil
	case err != nil:
		return 0, sideError(f.from, os.NewSyscallError("read", err))
	case n == 0:
		d.eof = true
		return 0, nil
	}
	if n == len(buf) {
		d.learnBulk(n)
	} else {
		// A short read drained the socket: ET will report new data.
		// If the peer's FIN had arrived too, this was the last of it.
		c.ready &^= f.readable
		if c.ready&f.hup != 0 {
			d.eof = true
		}
	}
	w := 0
	if c.ready&f.writable != 0 {
		w, err = sysWrite(f.dst, l.buf[:n])
		if err == unix.EAGAIN {
			w, err = 0, nil
		}
		if err != nil {
			return n, sideError(f.to, os.NewSyscallError("write", err))
		}
		l.delivered(c, d, w)
	}
	if w < n {
		d.spill = append([]byte(nil), l.buf[w:n]...)
		c.ready &^= f.writable
	}
	return n, nil
}

func (l *loop) delivered(c *conn, d *dir, n int) {
	d.bytes.Add(int64(n))
	if d == &c.up {
		c.proxy.Stats.BytesUp.Add(uint64(n))
	} else {
		c.proxy.Stats.BytesDown.Add(uint64(n))
	}
	c.lastActive = l.now
}

// getPipe gives d a pipe, from the loop's spares or new. Without one (out
// of descriptors) the direction carries on through the buffer.
func (l *loop) getPipe(d *dir) bool {
	if d.hasPipe {
		return true
	}
	if n := len(l.pipes); n > 0 {
		d.pipe = l.pipes[n-1]
		l.pipes = l.pipes[:n-1]
	} else {
		p, err := newPipe()
		if err != nil {
			d.bulk = false
			return false
		}
		d.pipe = p
	}
	d.hasPipe = true
	return true
}

// putPipe takes d's pipe back: kept as a spare if empty and spares are
// few, closed otherwise (a pipe holding bytes must never serve another
// connection).
func (l *loop) putPipe(d *dir) {
	if d.inPipe == 0 && len(l.pipes) < maxIdlePipes {
		l.pipes = append(l.pipes, d.pipe)
	} else {
		d.pipe.close()
	}
	d.hasPipe = false
	d.inPipe = 0
}

// Package relay pumps bytes between a client connection and a backend
// connection: both directions at once, each ending on its own (half-close),
// the whole ending when both have, on an error, on the idle timeout or when
// the caller cancels.
//
// Two plain TCP connections are relayed with splice(2) through pipes this
// package owns (see splice_linux.go); any other pair is copied through a
// pooled buffer. Byte counts are kept by the relay's own loops, so they are
// exact and can be read while the connection is open.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrIdleTimeout ends a relay in which neither direction moved a byte for the
// idle timeout.
var ErrIdleTimeout = errors.New("idle timeout")

// Mode names the data path a relay used.
type Mode string

// Data paths.
const (
	ModeSplice Mode = "splice" // splice(2) between two TCP sockets, no copy through user space
	ModeCopy   Mode = "copy"   // read/write through a user-space buffer
)

// Stats are a relay's byte counts; they advance while the relay runs, so a
// caller may read them from another goroutine at any time.
type Stats struct {
	Up   atomic.Int64 // client → backend
	Down atomic.Int64 // backend → client

	// lastActive is the monotonic time (nanoseconds since the relay began)
	// of the last transfer in either direction; the idle timer reads it.
	lastActive atomic.Int64
}

// Options tune one relay.
type Options struct {
	// IdleTimeout closes the connection when no byte has moved in either
	// direction for this long. Zero means never.
	IdleTimeout time.Duration
	// Stats, if not nil, receives the live byte counts.
	Stats *Stats
}

// Result is how a relay ended.
type Result struct {
	Up, Down int64
	Mode     Mode
	// Err is what ended the relay before both directions reached their end
	// of stream: a socket error, ErrIdleTimeout, or the cause the caller's
	// context was cancelled with. It is nil when both sides finished sending.
	Err error
}

// Relay copies client → backend and backend → client until both directions
// have ended, then closes both connections. When a side finishes sending, its
// peer is told with CloseWrite and the other direction keeps flowing. An
// error in either direction, the idle timeout or the cancellation of ctx ends
// both at once; a reset is passed on as a reset.
//
// Relay takes ownership of both connections.
func Relay(ctx context.Context, client, backend net.Conn, opt Options) Result {
	st := opt.Stats
	if st == nil {
		st = new(Stats)
	}
	r := &relay{client: client, backend: backend, stats: st, start: time.Now()}
	r.mode = ModeCopy
	if pairSplices(client, backend) {
		r.mode = ModeSplice
	}

	stop := context.AfterFunc(ctx, func() { r.abort(context.Cause(ctx)) })
	defer stop()
	if opt.IdleTimeout > 0 {
		r.idle = opt.IdleTimeout
		// Armed only after r.timer is set: checkIdle reads it.
		r.timer = time.AfterFunc(time.Duration(math.MaxInt64), r.checkIdle)
		r.timer.Reset(opt.IdleTimeout)
		defer r.timer.Stop()
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		r.copyBackendToClient()
	}()
	r.copyClientToBackend()
	<-done

	r.abort(nil) // both directions ended: close whatever is still open
	return Result{Up: st.Up.Load(), Down: st.Down.Load(), Mode: r.mode, Err: r.err}
}

type relay struct {
	client, backend net.Conn
	stats           *Stats
	mode            Mode
	start           time.Time

	idle  time.Duration
	timer *time.Timer

	once sync.Once
	err  error // set once, by the first abort
}

// copyClientToBackend is the "up" direction. Named, like its twin, so that a
// goroutine dump shows which way a stuck connection was flowing.
func (r *relay) copyClientToBackend() {
	r.pump(r.backend, r.client, &r.stats.Up)
}

// copyBackendToClient is the "down" direction.
func (r *relay) copyBackendToClient() {
	r.pump(r.client, r.backend, &r.stats.Down)
}

// pump moves one direction to its end. A clean end of stream is passed on as
// a FIN; anything else ends the whole relay.
func (r *relay) pump(dst, src net.Conn, count *atomic.Int64) {
	defer func() {
		if v := recover(); v != nil {
			r.abort(&PanicError{Value: v, Stack: debug.Stack()})
		}
	}()
	var err error
	if r.mode == ModeSplice {
		err = spliceStream(dst.(*net.TCPConn), src.(*net.TCPConn), count, r.touch)
	} else {
		err = copyStream(dst, src, count, r.touch)
	}
	if err != nil {
		r.abort(err)
		return
	}
	cw, ok := dst.(interface{ CloseWrite() error })
	if !ok {
		// No half-close on this kind of connection (net.Pipe): the end of
		// one direction is the end of the connection.
		r.abort(nil)
		return
	}
	if err := cw.CloseWrite(); err != nil {
		r.abort(err)
	}
}

// touch records that bytes moved, for the idle timer.
func (r *relay) touch() {
	if r.idle > 0 {
		r.stats.lastActive.Store(int64(time.Since(r.start)))
	}
}

func (r *relay) checkIdle() {
	quiet := time.Since(r.start) - time.Duration(r.stats.lastActive.Load())
	if quiet >= r.idle {
		r.abort(ErrIdleTimeout)
		return
	}
	r.timer.Reset(r.idle - quiet)
}

// abort ends the relay: the first caller's err is the result, and both
// connections are closed, which makes any blocked read or write return. A
// reset on one side is passed on to the other as a reset (SO_LINGER 0).
func (r *relay) abort(err error) {
	r.once.Do(func() {
		r.err = err
		if IsReset(err) {
			setLingerZero(r.client)
			setLingerZero(r.backend)
		}
		_ = r.client.Close()  // the error of closing a finished socket says nothing new
		_ = r.backend.Close() // likewise
	})
}

// PanicError is the result of a relay in which pj itself panicked; the
// connection is closed and the process goes on.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// IsReset reports whether err means the peer reset or vanished, as opposed to
// an orderly close.
func IsReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ETIMEDOUT) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

func setLingerZero(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // best effort: the socket may already be gone
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyStream copies src to dst through a pooled buffer, counting as it goes.
// It returns nil at src's end of stream.
func copyStream(dst, src io.ReadWriter, count *atomic.Int64, touch func()) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			count.Add(int64(w))
			touch()
			if werr != nil {
				return werr
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

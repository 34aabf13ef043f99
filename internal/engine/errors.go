//go:build linux

package engine

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrIdleTimeout ends a connection on which no byte moved in either
// direction for the idle timeout; it is logged with status "timeout".
var ErrIdleTimeout = errors.New("idle timeout")

// ErrHalfCloseTimeout ends a connection whose one direction had ended
// and whose other one was then silent for the half-close timeout; it is
// logged with status "timeout".
var ErrHalfCloseTimeout = errors.New("half-close timeout")

// ErrKilled ends a connection closed through the admin API; it is logged
// with status "killed".
var ErrKilled = errors.New("closed by an operator")

// PanicError is the end of a connection whose handling panicked: the
// connection is closed, the stack logged, and pj goes on.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// acceptSkipped reports whether an accept failed for that one connection
// only (it was gone before it was taken, or a signal interrupted): the
// next may be fine.
func acceptSkipped(err error) bool {
	return err == unix.EINTR || err == unix.ECONNABORTED || err == unix.EPROTO
}

// IsReset reports whether err means a peer reset or vanished, as opposed to
// an orderly close.
func IsReset(err error) bool {
	return errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE) ||
		errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ETIMEDOUT) ||
		errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH)
}

// Data paths, as --log-level debug shows them (relay=...).
const (
	modeSplice = "splice" // some bytes moved with splice(2)
	modeCopy   = "copy"   // every byte went through the loop's buffer
)

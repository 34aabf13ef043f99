//go:build linux

package engine

import (
	"errors"
	"fmt"
	"syscall"
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

// IsReset reports whether err means a peer reset or vanished, as opposed to
// an orderly close.
func IsReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ETIMEDOUT) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// Data paths, as --log-level debug shows them (relay=...).
const (
	modeSplice = "splice" // some bytes moved with splice(2)
	modeCopy   = "copy"   // every byte went through the loop's buffer
)

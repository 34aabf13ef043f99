package observe

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
)

// Swappable is a slog.Handler whose target can be replaced while loggers
// built on it are in use, so that a reload can change the log format or
// level of a running pj.
type Swappable struct {
	h atomic.Pointer[slog.Handler]
}

// NewSwappable returns a Swappable that writes through h.
func NewSwappable(h slog.Handler) *Swappable {
	s := &Swappable{}
	s.h.Store(&h)
	return s
}

// Set makes every later record go to h.
func (s *Swappable) Set(h slog.Handler) { s.h.Store(&h) }

func (s *Swappable) load() slog.Handler { return *s.h.Load() }

// Enabled reports whether the current handler takes records at l.
func (s *Swappable) Enabled(ctx context.Context, l slog.Level) bool {
	return s.load().Enabled(ctx, l)
}

// Handle passes r to the current handler.
func (s *Swappable) Handle(ctx context.Context, r slog.Record) error {
	return s.load().Handle(ctx, r)
}

// WithAttrs returns a handler of the current target with attrs; it does not
// follow later swaps (pj's loggers do not use With).
func (s *Swappable) WithAttrs(attrs []slog.Attr) slog.Handler {
	return s.load().WithAttrs(attrs)
}

// WithGroup is like WithAttrs for a group.
func (s *Swappable) WithGroup(name string) slog.Handler {
	return s.load().WithGroup(name)
}

// NewHandler returns the handler NewLogger would put in its logger.
func NewHandler(w io.Writer, format, level string) (slog.Handler, error) {
	l, err := NewLogger(w, format, level)
	if err != nil {
		return nil, err
	}
	return l.Handler(), nil
}

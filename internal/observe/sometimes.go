package observe

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Sometimes lets a repeating condition be logged at most once per
// interval, and counts the occurrences it held back, so that the next line
// can say how many there were. Every repeating condition pj logs (accept
// errors, descriptor shortages, caps, the admin server's errors) goes
// through one. It is safe for concurrent use; the zero value logs every
// time.
type Sometimes struct {
	Every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// Allow reports whether an occurrence at now may be logged, and if so how
// many occurrences were held back since the last one logged.
func (s *Sometimes) Allow(now time.Time) (ok bool, suppressed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.last.IsZero() && now.Sub(s.last) < s.Every {
		s.suppressed++
		return false, 0
	}
	n := s.suppressed
	s.last, s.suppressed = now, 0
	return true, n
}

// NewThrottledLogger returns a standard library logger (what net/http
// takes as ErrorLog) that writes each line to to as msg at level, with the
// line as "error", at most once every interval, and the count of lines held
// back as "suppressed".
func NewThrottledLogger(to *slog.Logger, level slog.Level, msg string, every time.Duration) *log.Logger {
	return log.New(&throttledWriter{to: to, level: level, msg: msg, s: Sometimes{Every: every}}, "", 0)
}

type throttledWriter struct {
	to    *slog.Logger
	level slog.Level
	msg   string
	s     Sometimes
}

func (w *throttledWriter) Write(p []byte) (int, error) {
	if ok, suppressed := w.s.Allow(time.Now()); ok {
		w.to.Log(context.Background(), w.level, w.msg, "error", strings.TrimSpace(string(p)), "suppressed", suppressed)
	}
	return len(p), nil
}

package admin

import (
	"log/slog"
	"sync"
	"time"
)

// sometimes logs a repeating condition at most once per interval, saying
// how many occurrences it left out since the last line.
type sometimes struct {
	every time.Duration
	to    *slog.Logger

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func newSometimes(every time.Duration, log *slog.Logger) *sometimes {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &sometimes{every: every, to: log}
}

// log calls write, with the count of occurrences left out, unless a line
// was written less than an interval ago.
func (s *sometimes) log(write func(l *slog.Logger, suppressed int)) {
	s.mu.Lock()
	now := time.Now()
	if !s.last.IsZero() && now.Sub(s.last) < s.every {
		s.suppressed++
		s.mu.Unlock()
		return
	}
	n := s.suppressed
	s.last, s.suppressed = now, 0
	s.mu.Unlock()
	write(s.to, n)
}

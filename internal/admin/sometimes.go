package admin

import (
	"log/slog"
	"time"

	"github.com/pj-proxy/pj/internal/observe"
)

// sometimes logs a repeating condition at most once per interval, saying
// how many occurrences it left out since the last line (observe.Sometimes,
// bound to a logger).
type sometimes struct {
	s  observe.Sometimes
	to *slog.Logger
}

func newSometimes(every time.Duration, log *slog.Logger) *sometimes {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &sometimes{s: observe.Sometimes{Every: every}, to: log}
}

// log calls write, with the count of occurrences left out, unless a line
// was written less than an interval ago.
func (s *sometimes) log(write func(l *slog.Logger, suppressed int)) {
	if ok, n := s.s.Allow(time.Now()); ok {
		write(s.to, n)
	}
}

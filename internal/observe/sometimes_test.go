package observe

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestSometimes(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		at         time.Duration
		ok         bool
		suppressed int
	}
	for _, tc := range []struct {
		name  string
		every time.Duration
		steps []step
	}{
		{"the first occurrence is logged", time.Second, []step{{0, true, 0}}},
		{"a flood is held back and counted", time.Second, []step{
			{0, true, 0}, {time.Millisecond, false, 0}, {500 * time.Millisecond, false, 0},
			{999 * time.Millisecond, false, 0}, {time.Second, true, 3}, {1500 * time.Millisecond, false, 0},
			{5 * time.Second, true, 1},
		}},
		{"rare occurrences are all logged", time.Second, []step{{0, true, 0}, {2 * time.Second, true, 0}, {4 * time.Second, true, 0}}},
		{"the zero value logs every time", 0, []step{{0, true, 0}, {0, true, 0}, {time.Nanosecond, true, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Sometimes{Every: tc.every}
			for i, st := range tc.steps {
				ok, n := s.Allow(t0.Add(st.at))
				if ok != st.ok || n != st.suppressed {
					t.Fatalf("step %d (at %s): ok=%v suppressed=%d; want %v, %d", i, st.at, ok, n, st.ok, st.suppressed)
				}
			}
		})
	}
}

func TestThrottledLoggerCountsWhatItHeldBack(t *testing.T) {
	// net/http logs an accept error once a second for as long as it lasts;
	// through this logger a flood is one line per interval.
	buf := new(testutil.Buffer)
	to := slog.New(slog.NewTextHandler(buf, nil))
	lg := NewThrottledLogger(to, slog.LevelWarn, "admin listener", time.Hour)
	for range 100 {
		lg.Printf("http: Accept error: accept tcp 127.0.0.1:9090: accept4: too many open files; retrying in 1s")
	}
	lines := buf.Lines("admin listener")
	if len(lines) != 1 || !strings.Contains(lines[0], "too many open files") || !strings.Contains(lines[0], "level=WARN") {
		t.Fatalf("lines %q: want one warning with the error", lines)
	}
	if strings.Contains(buf.String(), "suppressed=99") {
		t.Fatal("nothing was due yet: the count belongs to the next line")
	}
}

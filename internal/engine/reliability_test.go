//go:build linux

package engine

import (
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// timers counts the entries of every loop's timer heap.
func (e *Engine) timerCount() int {
	n := 0
	for _, l := range e.loops {
		_ = l.call(func(l *loop) error { n += len(l.timers); return nil })
	}
	return n
}

func TestClosedConnectionsReleaseTheirTimers(t *testing.T) {
	// With an hour's idle timeout, connections that open and close must
	// not leave their timers (and so themselves) behind until the hour
	// is over: that is memory growing with every connection ever made.
	const conns = 200
	h := newHarness(t, harnessOpt{idle: time.Hour}, testutil.StartEcho(t))
	for range conns {
		c := testutil.Dial(t, h.addr)
		if got := testutil.RoundTrip(t, c, "x"); got != "x" {
			t.Fatalf("echo %q", got)
		}
		_ = c.Close()
	}
	h.log.WaitLines(t, "] duration=", conns)
	testutil.WaitFor(t, 5*time.Second, "every connection to be closed", func() bool { return h.e.Active() == 0 })
	if n := h.e.timerCount(); n != 0 {
		t.Fatalf("%d timers are left after %d connections closed; want 0", n, conns)
	}
}

func TestEngineLeavesGOMAXPROCSAlone(t *testing.T) {
	// Setting GOMAXPROCS turns off Go's own updates of it (container CPU
	// limits); the engine sizes itself from it instead.
	before := runtime.GOMAXPROCS(0)
	e, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if after := runtime.GOMAXPROCS(0); after != before {
		runtime.GOMAXPROCS(before)
		t.Fatalf("GOMAXPROCS went from %d to %d", before, after)
	}
	if len(e.loops) != before {
		t.Fatalf("%d loops for GOMAXPROCS %d; want one per processor", len(e.loops), before)
	}
}

func TestNewFailsCleanlyWhenALaterLoopCannotBeCreated(t *testing.T) {
	errBoom := errors.New("injected: no epoll instance")
	done := make(chan error, 1)
	go func() {
		_, err := New(Options{Loops: 3, newLoop: func(i int) error {
			if i == 2 {
				return errBoom
			}
			return nil
		}})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errBoom) {
			t.Fatalf("New: %v; want the loop's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("New has not returned within 10s: start-up deadlocked")
	}
}

//go:build linux

package evloop

import (
	"errors"
	"testing"
	"time"
)

// counter stands for a loop: what its commands change.
type counter struct{ n int }

// serve runs p's loop for c until stop is closed: it waits for events
// and runs the commands they announce, as pj's loops do.
func serve(t *testing.T, p *Poller[*counter], c *counter, stop <-chan struct{}) {
	t.Helper()
	go func() {
		defer p.Close()
		for {
			select {
			case <-stop:
				return
			default:
			}
			events, err := p.Wait(10)
			if err != nil {
				return
			}
			for _, ev := range events {
				if p.IsWake(int(ev.Fd)) {
					p.RunCommands(c)
				}
			}
		}
	}()
}

func TestPollerRunsPostedCommandsOnItsLoop(t *testing.T) {
	var p Poller[*counter]
	if err := p.Open("test loop", 8); err != nil {
		t.Fatal(err)
	}
	c := &counter{}
	stop := make(chan struct{})
	serve(t, &p, c, stop)

	for i := range 100 {
		if !p.Post(func(c *counter) { c.n++ }) {
			t.Fatalf("post %d refused by a running loop", i)
		}
	}
	var got int
	if err := p.Call(c, func(c *counter) error { got = c.n; return nil }); err != nil {
		t.Fatal(err)
	}
	if got != 100 {
		t.Fatalf("the call saw %d commands run before it; want all 100, in order", got)
	}
	want := errors.New("from the loop")
	if err := p.Call(c, func(*counter) error { return want }); err != want {
		t.Fatalf("Call returned %v; want the command's own error", err)
	}

	close(stop)
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not exit")
	}
	if p.Post(func(*counter) {}) {
		t.Fatal("a post to an exited loop was accepted")
	}
	// On an exited loop, Call runs the command on the caller.
	if err := p.Call(c, func(c *counter) error { c.n = -1; return nil }); err != nil || c.n != -1 {
		t.Fatalf("Call on an exited loop: err %v, n %d; want it run on the caller", err, c.n)
	}
}

func TestPollerWaitTimesOutWithNoEvents(t *testing.T) {
	var p Poller[*counter]
	if err := p.Open("test loop", 8); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	for _, ms := range []int{0, 1, 5} {
		events, err := p.Wait(ms)
		if err != nil || len(events) != 0 {
			t.Fatalf("Wait(%d) on a quiet poller: %d events, err %v", ms, len(events), err)
		}
		if p.Busy() {
			t.Fatalf("Wait(%d) returned nothing, yet the poller says it is busy", ms)
		}
	}
	p.Post(func(*counter) {})
	events, err := p.Wait(1000)
	if err != nil || len(events) != 1 || !p.IsWake(int(events[0].Fd)) {
		t.Fatalf("after a post: %v, err %v; want the wake-up event", events, err)
	}
	if !p.Busy() {
		t.Fatal("a wait that returned an event leaves the poller idle")
	}
}

func TestActiveIdle(t *testing.T) {
	var a Active
	select {
	case <-a.Idle():
	default:
		t.Fatal("Idle with nothing open is not closed")
	}
	a.Add(2)
	idle := a.Idle()
	a.Done()
	select {
	case <-idle:
		t.Fatal("Idle closed with one still open")
	default:
	}
	a.Done()
	select {
	case <-idle:
	default:
		t.Fatal("Idle not closed once the last one closed")
	}
	if n := a.Load(); n != 0 {
		t.Fatalf("count %d; want 0", n)
	}
}

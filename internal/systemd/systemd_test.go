package systemd

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// fakeManager opens a NOTIFY_SOCKET for this test and returns the
// datagrams sent to it.
func fakeManager(t *testing.T) <-chan string {
	t.Helper()
	path, msgs := testutil.ListenNotify(t)
	t.Setenv("NOTIFY_SOCKET", path)
	return msgs
}

func TestWatchdog(t *testing.T) {
	t.Run("pings while alive", func(t *testing.T) {
		msgs := fakeManager(t)
		t.Setenv("WATCHDOG_USEC", "100000") // a ping every 50 ms
		stop := runWatchdog(t, NewNotifier(nil), func() {})
		defer stop()
		for i := 0; i < 3; i++ {
			select {
			case m := <-msgs:
				if m != "WATCHDOG=1" {
					t.Fatalf("got %q, want WATCHDOG=1", m)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no watchdog ping within 10s")
			}
		}
	})
	t.Run("silent while hung", func(t *testing.T) {
		msgs := fakeManager(t)
		t.Setenv("WATCHDOG_USEC", "100000")
		log := new(testutil.Buffer)
		hung := make(chan struct{})
		stop := runWatchdog(t, NewNotifier(slog.New(slog.NewTextHandler(log, nil))), func() { <-hung })
		defer func() { close(hung); stop() }()
		log.WaitLines(t, "not pinging the watchdog", 2)
		select {
		case m := <-msgs:
			t.Fatalf("got %q while pj's control path did not answer, want nothing", m)
		default:
		}
	})
	t.Run("off without WatchdogSec", func(t *testing.T) {
		fakeManager(t)
		done := make(chan struct{})
		go func() { NewNotifier(nil).Watchdog(context.Background(), func() {}); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Watchdog did not return at once without WATCHDOG_USEC")
		}
	})
}

// runWatchdog runs n.Watchdog until the returned function is called.
func runWatchdog(t *testing.T, n *Notifier, alive func()) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Watchdog(ctx, alive); close(done) }()
	return func() { cancel(); <-done }
}

func TestNilNotifierSendsNothing(t *testing.T) {
	msgs := fakeManager(t)
	var n *Notifier
	n.Ready("x")
	n.Reloading()
	n.Stopping("x")
	NewNotifier(nil).Ready("serving")
	if m := <-msgs; m != "READY=1\nSTATUS=serving" {
		t.Fatalf("got %q, want only the non-nil notifier's READY=1", m)
	}
}

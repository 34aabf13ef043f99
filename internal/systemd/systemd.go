// Package systemd connects pj to a service manager that speaks systemd's
// protocols: readiness and reload notifications and the watchdog
// (sd_notify), and listening sockets passed in at start (socket
// activation). Outside such a manager every function here does nothing.
package systemd

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier tells the service manager what pj is doing. Its zero value and
// a nil *Notifier are valid and send nothing.
type Notifier struct {
	log *slog.Logger
	// failed is set after the first failed send: the next failures are
	// not logged again, a service manager that went away stays away.
	mu     sync.Mutex
	failed bool
}

// NewNotifier returns a Notifier that sends to $NOTIFY_SOCKET, and logs
// the first failure to send on log.
func NewNotifier(log *slog.Logger) *Notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Notifier{log: log}
}

// Ready says that every listener is bound and pj serves; status is a line
// for `systemctl status`. It also ends a reload begun with Reloading.
func (n *Notifier) Ready(status string) { n.send(daemon.SdNotifyReady + "\nSTATUS=" + status) }

// Reloading says that pj is reloading its configuration. Ready must
// follow, whether the reload succeeded or not. MONOTONIC_USEC is the time
// the reload began, which Type=notify-reload services must send.
func (n *Notifier) Reloading() {
	n.send(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec() + "STATUS=reloading")
}

// Stopping says that pj has begun to shut down: it no longer accepts and
// drains its connections.
func (n *Notifier) Stopping(status string) {
	n.send(daemon.SdNotifyStopping + "\nSTATUS=" + status)
}

// Send sends state, one or more newline-separated KEY=VALUE assignments
// (MAINPID=1234, for instance).
func (n *Notifier) Send(state string) { n.send(state) }

func (n *Notifier) send(state string) {
	if n == nil || n.log == nil {
		return
	}
	sent, err := daemon.SdNotify(false, state)
	if err == nil || !sent && os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	n.mu.Lock()
	first := !n.failed
	n.failed = true
	n.mu.Unlock()
	if first {
		n.log.Warn("cannot notify the service manager (NOTIFY_SOCKET); it may think pj is not ready or has hung",
			"socket", os.Getenv("NOTIFY_SOCKET"), "error", err.Error())
	}
}

// Watchdog pings the service manager's watchdog while ctx lasts, when the
// unit sets WatchdogSec; otherwise it returns at once. Every half
// interval it calls alive, which returns once pj's control path answers,
// and pings only if alive returned within that half interval: a pj that
// hangs stops pinging and the manager restarts it.
func (n *Notifier) Watchdog(ctx context.Context, alive func()) {
	if n == nil || n.log == nil {
		return
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("the service manager's watchdog setting is malformed; not pinging it", "error", err.Error())
		return
	}
	if interval <= 0 {
		return
	}
	every := interval / 2
	n.log.Debug("pinging the service manager's watchdog", "every", every.String())
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if answered(alive, every) {
			n.send(daemon.SdNotifyWatchdog)
		} else {
			n.log.Warn("not pinging the watchdog: pj's control path does not answer; the service manager restarts pj if this goes on",
				"waited", every.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// answered reports whether alive returned within d. If it did not, the
// goroutine running it stays blocked with it: pj is hung, and the
// watchdog is about to restart it.
func answered(alive func(), d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		alive()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// Listeners returns the sockets the service manager passed to this
// process (LISTEN_FDS, for LISTEN_PID equal to this process's), and
// removes those variables from the environment so that no child takes
// them for its own. It returns nil when there are none. The caller owns
// the files.
func Listeners() []*os.File {
	return activation.Files(true)
}

package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/pj-proxy/pj/internal/engine"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/systemd"
	"github.com/pj-proxy/pj/internal/upgrade"
)

// WithUpgrade makes every value received on ch upgrade pj, as SIGUSR2
// does: exe (the path pj was started from) is started with args and the
// environment, and takes over every listener.
func WithUpgrade(ch <-chan struct{}, exe string, args []string) Option {
	return func(e *runEnv) { e.upgrade, e.exe, e.args = ch, exe, args }
}

// WithUpgradeChild makes this pj the new process of an upgrade: it serves
// the sockets the running pj handed over.
func WithUpgradeChild(c *upgrade.Child) Option {
	return func(e *runEnv) { e.child = (*upgradeChild)(c) }
}

// upgradeChild is this pj as the new process of an upgrade; nil when pj
// was started otherwise, and then its methods do nothing.
type upgradeChild upgrade.Child

// split parts the handed-over sockets into the proxies' and the admin
// listener's (if the configuration's admin listener has that address).
func (c *upgradeChild) split(adminListen string) (proxies []upgrade.Socket, admin *os.File) {
	if c == nil {
		return nil, nil
	}
	for _, so := range c.Sockets {
		switch {
		case so.Key == adminKey(adminListen) && len(so.FDs) == 1:
			admin = os.NewFile(uintptr(so.FDs[0]), "admin listener")
		case strings.HasPrefix(so.Key, "admin "):
			upgrade.CloseFDs(so.FDs) // the file moved the admin listener
		default:
			proxies = append(proxies, so)
		}
	}
	c.Sockets = nil
	return proxies, admin
}

// startFailed is the error of a start-up that failed, which the old
// process hears of too.
func (c *upgradeChild) startFailed(err error) error {
	err = fmt.Errorf("start-up failed, nothing is listening: %w", err)
	if c != nil {
		(*upgrade.Child)(c).Failed(err)
	}
	return err
}

// tookOver makes this pj the service's main process, said before the old
// one is told and may exit (a service manager that saw its main process
// exit would stop the service); then the old one stops accepting.
func (c *upgradeChild) tookOver(log *slog.Logger, srv *server.Server, listeners int) {
	if c == nil {
		return
	}
	systemd.NewNotifier(log).Send(fmt.Sprintf("MAINPID=%d", os.Getpid()))
	restored := c.restore(log, srv)
	var (
		pauses  []time.Duration
		pending int64 // bytes in flight that moved with them
		lost    int
		first   error
	)
	adopt := func(uc upgrade.Conn) {
		var m engine.Moved
		if err := json.Unmarshal(uc.State, &m); err != nil {
			upgrade.CloseFDs(uc.FDs)
			lost++
			first = cmp.Or(first, err)
			return
		}
		pending += int64(m.Up.Pending + m.Down.Pending)
		pause, err := srv.AdoptConnection(m, uc.FDs)
		if err != nil {
			lost++
			first = cmp.Or(first, err)
			return
		}
		pauses = append(pauses, pause)
	}
	if err := (*upgrade.Child)(c).Ready(upgrade.ReadyTimeout, adopt); err != nil {
		log.Warn("upgrade: the old process did not confirm it stopped accepting; serving all the same", "error", err.Error())
	}
	attrs := []any{"listeners", listeners, "connections", len(pauses), "bytes_in_flight", pending, "backend_states", restored,
		"protocol_version", c.Version}
	if len(pauses) > 0 {
		slices.Sort(pauses)
		attrs = append(attrs, "pause_p50", percentile(pauses, 50).String(), "pause_p99", percentile(pauses, 99).String(),
			"pause_max", pauses[len(pauses)-1].String())
	}
	log.Info("upgrade: took over every listener and the established connections from the old process", attrs...)
	if lost > 0 {
		log.Error("upgrade: connections moved here could not be taken over and were closed", "connections", lost, "error", first.Error())
	}
}

// restore gives the backends the states (drain, down, unhealthy) they
// had in the old process; it returns how many it found.
func (c *upgradeChild) restore(log *slog.Logger, srv *server.Server) int {
	if len(c.State) == 0 {
		return 0
	}
	var states []server.BackendState
	if err := json.Unmarshal(c.State, &states); err != nil {
		log.Warn("upgrade: the old process's backend states are unreadable; backends start healthy", "error", err.Error())
		return 0
	}
	return srv.RestoreBackendStates(states)
}

// percentile is the p-th percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p+99)/100 - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// adminKey is the key the admin listener's socket is handed over by.
func adminKey(listen string) string { return "admin " + listen }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// upgrader runs one upgrade at a time, from the serve loop.
type upgrader struct {
	env     *runEnv
	srv     *server.Server
	adm     *adminListener
	log     *slog.Logger
	stderr  io.Writer
	running bool
	// handedOver is the new process's pid once it serves everything.
	handedOver int
	results    chan upgradeResult
}

type upgradeResult struct {
	h   *upgrade.Handover
	err error
}

// start begins an upgrade unless one runs or pj handed over already.
func (u *upgrader) start(ctx context.Context) {
	switch {
	case u.handedOver != 0:
		u.log.Warn("upgrade requested, but this pj has handed over already: send SIGUSR2 to the new process", "pid", u.handedOver)
		return
	case u.running:
		u.log.Warn("upgrade requested while one is in progress: ignored")
		return
	case os.Getpid() == 1:
		// The first process of a container: its exit ends the container,
		// the new process with it.
		u.log.Error("upgrade requested, but pj is process 1 of its container, which ends when it exits: roll the deployment out instead")
		return
	case u.env.exe == "":
		u.log.Error("upgrade requested, but the path pj was started from is unknown: restart it instead")
		return
	}
	u.running = true
	if u.results == nil {
		u.results = make(chan upgradeResult, 1)
	}
	u.log.Info("upgrade: starting the new binary and handing it every listener", "path", u.env.exe)
	go func() {
		h, err := upgrade.Start(ctx, upgrade.Options{
			Exe: u.env.exe, Args: u.env.args, Env: os.Environ(), Stdout: os.Stdout, Stderr: u.stderr,
			Sockets: u.sockets,
			State: func() json.RawMessage {
				b, _ := json.Marshal(u.srv.BackendStates()) // strings and booleans: it cannot fail
				return b
			},
		})
		u.results <- upgradeResult{h, err}
	}()
}

// sockets are the server's listening sockets and the admin listener's.
func (u *upgrader) sockets() ([]upgrade.Socket, error) {
	socks, err := u.srv.HandOverSockets()
	if err != nil {
		return nil, err
	}
	if a := u.adm.running; a != nil {
		fd, err := a.Dup()
		if err != nil {
			for _, so := range socks {
				upgrade.CloseFDs(so.FDs)
			}
			return nil, fmt.Errorf("admin listener: %w", err)
		}
		socks = append(socks, upgrade.Socket{Key: adminKey(u.adm.cfg.Listen), FDs: []int{fd}})
	}
	return socks, nil
}

// finish acts on the outcome of an upgrade; it reports whether the new
// process serves now, and this one must only drain.
func (u *upgrader) finish(res upgradeResult) bool {
	u.running = false
	if res.err != nil {
		u.log.Error("upgrade failed; this pj goes on serving, nothing changed", "error", res.err.Error())
		return false
	}
	// The new process accepts already; this one stops, moves its
	// established connections, then says so.
	u.srv.StopAccepting()
	u.adm.close()
	u.adm.running = nil
	moved, kept := u.moveConnections(res.h)
	if err := res.h.Done(); err != nil {
		u.log.Warn("upgrade: could not tell the new process that this one stopped accepting", "error", err.Error())
	}
	u.handedOver = res.h.PID
	u.log.Info("upgrade: the new process serves every listener; this one stopped accepting and lets its connections finish",
		"pid", res.h.PID, "listeners", res.h.Sockets, "protocol_version", res.h.Version, "moved", moved, "active", u.srv.Active())
	if kept > 0 {
		u.log.Warn("upgrade: connections that could not be sent stay here until they end", "connections", kept)
	}
	if n := u.srv.Active(); n > 0 {
		u.log.Info("upgrade: connections that cannot move (TLS-terminated, UDP sessions, not yet relaying) stay here until they end or the grace period passes",
			"connections", n)
	}
	return true
}

// maxMoved bounds the connections one upgrade moves.
const maxMoved = 1 << 22

// moveConnections sends the established connections that can move (plain
// TCP, relaying) to the new process; those it cannot send go on here.
func (u *upgrader) moveConnections(h *upgrade.Handover) (moved, kept int) {
	detached := u.srv.DetachConnections(maxMoved)
	conns := make([]upgrade.Conn, 0, len(detached))
	for _, d := range detached {
		state, _ := json.Marshal(d.Moved) // times, numbers and strings: it cannot fail
		conns = append(conns, upgrade.Conn{State: state, FDs: d.FD})
	}
	sent, err := h.SendConns(conns)
	if err != nil {
		u.log.Error("upgrade: sending established connections to the new process failed; the rest stay here", "sent", sent, "error", err.Error())
	}
	for i, d := range detached {
		if i < sent {
			upgrade.CloseFDs(d.FD) // the new process has its own
			continue
		}
		if err := u.srv.Reattach(d); err != nil {
			u.log.Error("upgrade: a connection could be neither sent nor kept; it is closed", "error", err.Error())
			continue
		}
		kept++
	}
	return sent, kept
}

// done says, for a reload asked for after an upgrade, that there is
// nothing to reload here.
func (u *upgrader) done(log *slog.Logger) bool {
	if u.handedOver == 0 {
		return false
	}
	log.Warn("reload requested, but this pj has handed over to a new process: reload that one", "pid", u.handedOver)
	return true
}

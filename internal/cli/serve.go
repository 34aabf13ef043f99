package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/admin"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/systemd"
	"github.com/pj-proxy/pj/internal/version"
	"github.com/pj-proxy/pj/internal/watch"
)

const (
	// logBatch and logFlush bound how long a log line may wait in memory:
	// at most 64 KiB or 100 ms, whichever comes first. logBatches bounds
	// the batches waiting for a slow log destination (1 MiB); past them,
	// lines are dropped rather than making the event loops wait.
	logBatch   = 64 << 10
	logBatches = 16
	logFlush   = 100 * time.Millisecond
	// watchDebounce lets a burst of file events (an editor's write,
	// rename and chmod; kubelet's symlink swap) settle into one reload.
	watchDebounce = 250 * time.Millisecond
)

// serve runs the proxy until ctx is cancelled, reloading the configuration
// on SIGHUP (env.reload) and, with --watch, when the file changes.
func serve(ctx context.Context, f *flags, cfg config.Config, env *runEnv, stderr io.Writer) error {
	// The drop notice goes through the logger the writer feeds.
	var notice atomic.Pointer[slog.Logger]
	out := observe.NewBufferedWriter(stderr, observe.BufferOptions{
		Batch: env.logBatch, Batches: env.logBatches, Flush: logFlush,
		OnDrop: func(n uint64, over time.Duration) {
			if l := notice.Load(); l != nil {
				l.Warn(dropNotice(n, over), "dropped", n)
			}
		},
	})
	defer out.Close()
	h, err := observe.NewHandler(out, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		return &UsageError{Err: err}
	}
	handler := observe.NewSwappable(h)
	log := slog.New(handler)
	notice.Store(log)
	logWarnings(log, cfg)

	// Started by an upgrade: the running pj's sockets, the admin
	// listener's apart.
	child := env.child
	env.child = nil
	handed, adminSocket := child.split(cfg.Admin.Listen)
	srv, err := server.New(cfg, server.Options{Logger: log, Inherited: env.inherited, HandedOver: handed})
	env.inherited = nil // the server owns them now
	if err != nil {
		if adminSocket != nil {
			_ = adminSocket.Close()
		}
		return child.startFailed(err)
	}
	// Reloads asked for through the admin API are made by the loop below,
	// one at a time with those of SIGHUP and --watch.
	requests := make(chan reloadRequest)
	adm := &adminListener{srv: srv, log: log, logDropped: out.Dropped, reload: askReload(ctx, requests)}
	adm.socket = adminSocket
	if err := adm.apply(cfg.Admin); err != nil {
		srv.Close()
		return child.startFailed(err)
	}
	defer adm.close()

	triggers := make(chan string, 1)
	trigger := func(why string) {
		select {
		case triggers <- why:
		default: // a reload is pending already; it will read the newest file
		}
	}
	w := &watcher{path: f.configFile, log: log, trigger: trigger}
	defer w.stop()
	w.set(ctx, cfg.Watch)
	if env.listening != nil {
		env.listening(srv.Addrs())
	}

	child.tookOver(log, srv, len(handed)+btoi(adminSocket != nil))
	notify, stopNotify := notifySystemd(ctx, log, cfg, srv)
	defer stopNotify()

	// An upgrade ends Serve without the service manager hearing of a
	// stop: the new process is the service now.
	serveCtx, stopServing := context.WithCancelCause(ctx)
	defer stopServing(nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx) }()
	up := &upgrader{env: env, srv: srv, adm: adm, log: log, stderr: stderr}

	r := &reloader{f: f, env: env, srv: srv, log: log, handler: handler, out: out, current: cfg, admin: adm, notify: notify}
	ev := events{served: served, triggers: triggers, requests: requests, r: r, up: up, w: w,
		stopNotify: stopNotify, stopServing: stopServing}
	return ev.run(ctx)
}

// events is what serve's loop waits on, and what it acts with.
type events struct {
	served      <-chan error
	triggers    <-chan string
	requests    <-chan reloadRequest
	r           *reloader
	up          *upgrader
	w           *watcher
	stopNotify  func()
	stopServing context.CancelCauseFunc
}

// run handles reloads (SIGHUP, --watch, the admin API) and upgrades
// (SIGUSR2), one at a time, until Serve returns.
func (ev *events) run(ctx context.Context) error {
	r, up, w, log := ev.r, ev.up, ev.w, ev.r.log
	for {
		select {
		case err := <-ev.served:
			return err
		case <-r.env.reload:
			if up.done(log) {
				continue
			}
			r.reload("SIGHUP", nil)
		case why := <-ev.triggers:
			if up.done(log) {
				continue
			}
			r.reload(why, nil)
		case req := <-ev.requests:
			if up.handedOver != 0 {
				req.reply <- closing(req.dryRun)
			} else if req.dryRun {
				req.reply <- r.plan()
			} else {
				r.reload("admin API", req.reply)
			}
		case <-r.env.upgrade:
			up.start(ctx)
		case res := <-up.results:
			if up.finish(res) {
				// This pj only drains now.
				w.stop()
				ev.stopNotify() // the watchdog, and STOPPING= on SIGTERM: the new process is the service now
				ev.stopServing(fmt.Errorf("upgraded: pid %d serves every listener", res.h.PID))
				continue
			}
		}
		// The file's own "watch: true" may have been added or removed
		// (the new process watches it after an upgrade).
		if up.handedOver == 0 {
			w.set(ctx, r.current.Watch)
		}
	}
}

// askReload returns what the admin API calls to reload: it hands the
// request to serve's loop, which makes reloads one at a time with those
// of SIGHUP and --watch, and waits for the result.
func askReload(ctx context.Context, requests chan<- reloadRequest) func(context.Context, bool) admin.ReloadResult {
	return func(rctx context.Context, dryRun bool) admin.ReloadResult {
		req := reloadRequest{dryRun: dryRun, reply: make(chan admin.ReloadResult, 1)}
		select {
		case requests <- req:
		case <-rctx.Done():
			return admin.ReloadResult{DryRun: dryRun, Errors: []string{"the request ended before pj could take it"}, Status: http.StatusServiceUnavailable}
		case <-ctx.Done():
			return admin.ReloadResult{DryRun: dryRun, Errors: []string{"pj is shutting down"}, Status: http.StatusServiceUnavailable}
		}
		select {
		case res := <-req.reply:
			return res
		case <-rctx.Done():
			return admin.ReloadResult{DryRun: dryRun, Errors: []string{"the request ended before the reload did"}, Status: http.StatusServiceUnavailable}
		}
	}
}

// notifySystemd tells systemd (Type=notify) that pj is ready, once every
// listener is bound; that it is stopping, from the first SIGTERM (ctx);
// and that it is alive, by the watchdog, while pj runs. stop ends the
// watchdog and forgets ctx.
func notifySystemd(ctx context.Context, log *slog.Logger, cfg config.Config, srv *server.Server) (notify *systemd.Notifier, stop func()) {
	notify = systemd.NewNotifier(log)
	notify.Ready(serving(cfg))
	stopNotify := context.AfterFunc(ctx, func() { notify.Stopping("draining connections") })
	wdCtx, stopWatchdog := context.WithCancel(context.Background())
	wdDone := make(chan struct{})
	go func() {
		defer close(wdDone)
		notify.Watchdog(wdCtx, func() { srv.Addrs() })
	}()
	return notify, func() {
		stopWatchdog()
		<-wdDone
		stopNotify()
	}
}

// logWarnings logs what a configuration that loads says to remove: the
// retired keys it sets (config.Config.Warnings).
func logWarnings(log *slog.Logger, cfg config.Config) {
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}
}

// dropNotice says that n log lines were lost over the last while.
func dropNotice(n uint64, over time.Duration) string {
	return fmt.Sprintf("dropped %d log lines in the last %s: the log destination is slower than pj",
		n, max(over.Round(time.Second), time.Second))
}

// watcher runs watch.File while watching is wanted.
type watcher struct {
	path    string
	log     *slog.Logger
	trigger func(string)
	cancel  context.CancelFunc
	done    chan struct{}
}

// set starts or stops watching.
func (w *watcher) set(ctx context.Context, on bool) {
	if on == (w.cancel != nil) || w.path == "" {
		return
	}
	if !on {
		w.stop()
		return
	}
	// Watching starts here, not in the goroutine: a change made once set
	// has returned is seen.
	fw, err := watch.New(w.path, w.log)
	if err != nil {
		w.log.Error("cannot watch the configuration file; reload with SIGHUP", "error", err.Error())
		return
	}
	wctx, cancel := context.WithCancel(ctx)
	w.cancel, w.done = cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		_ = fw.Run(wctx, watchDebounce, func() { w.trigger("file changed") }) // it ends only with wctx
	}()
}

func (w *watcher) stop() {
	if w.cancel != nil {
		w.cancel()
		<-w.done
		w.cancel = nil
	}
}

// reloader applies a new configuration to a running pj.
type reloader struct {
	f       *flags
	env     *runEnv
	srv     *server.Server
	log     *slog.Logger
	handler *observe.Swappable
	out     io.Writer
	current config.Config
	admin   *adminListener
	notify  *systemd.Notifier
}

// reloadRequest is a reload asked for through the admin API.
type reloadRequest struct {
	dryRun bool
	reply  chan admin.ReloadResult // buffered: the loop never waits on it
}

// reload reads the configuration again and applies it; a configuration
// that does not load changes nothing, and every problem of it is logged.
// If reply is set, it receives the outcome, before the admin listener
// itself is changed (a request to the listener being replaced would wait
// for its own answer).
func (r *reloader) reload(trigger string, reply chan<- admin.ReloadResult) {
	answer := func(res admin.ReloadResult) {
		if reply != nil {
			reply <- res
			reply = nil
		}
	}
	if r.f.configFile == "" {
		r.log.Warn("reload requested, but pj runs without a configuration file: nothing to reload", "trigger", trigger)
		answer(noFile())
		return
	}
	// The service manager hears of every reload, applied or not: ready
	// again means the configuration in force (new or old) serves.
	r.notify.Reloading()
	shuttingDown := false
	defer func() {
		if !shuttingDown {
			r.notify.Ready(serving(r.current))
		}
	}()
	cfg, err := loadConfig(r.f, r.env.lookupEnv)
	if err != nil {
		answer(r.loadFailed(trigger, err))
		return
	}
	logWarnings(r.log, cfg)
	// The plan is taken before the reload changes what it compares.
	changes, planErr := r.srv.Plan(cfg)
	if cfg.Log != r.current.Log {
		h, err := observe.NewHandler(r.out, cfg.Log.Format, cfg.Log.Level)
		if err != nil {
			r.srv.ReloadFailed()
			r.log.Error("reload failed; the running configuration goes on", "trigger", trigger, "error", err.Error())
			answer(invalid(false, []string{err.Error()}))
			return
		}
		r.handler.Set(h)
	}
	what, err := r.srv.Reload(cfg)
	if err != nil {
		if errors.Is(err, server.ErrClosed) {
			shuttingDown = true
			answer(closing(false))
			return
		}
		r.log.Error("reload failed", "trigger", trigger, "error", err.Error())
		if cfg.Log != r.current.Log {
			h, _ := observe.NewHandler(r.out, r.current.Log.Format, r.current.Log.Level)
			r.handler.Set(h) // the old configuration's logging goes on too
		}
		answer(invalid(false, []string{err.Error()}))
		return
	}
	res := result(false, changes)
	if planErr != nil {
		res = admin.ReloadResult{Valid: true}
	}
	res.Applied = true
	res.Warnings = cfg.Warnings()
	answer(res)
	if err := r.admin.apply(cfg.Admin); err != nil {
		// The proxies changed; only the admin listener stays as it was.
		r.log.Error("reload: the admin listener keeps its old settings", "error", err.Error())
		cfg.Admin = r.current.Admin
	}
	r.current = cfg
	r.log.Info("reload: "+what, "trigger", trigger)
}

// loadFailed logs why a reload could not load the file, every problem on
// a line of its own, and returns the answer.
func (r *reloader) loadFailed(trigger string, err error) admin.ReloadResult {
	r.srv.ReloadFailed()
	var ve *config.ValidationError
	if errors.As(err, &ve) {
		for _, p := range ve.Problems {
			r.log.Error("reload: invalid configuration", "problem", p)
		}
		if ve.More > 0 {
			r.log.Error("reload: invalid configuration", "more_problems", ve.More)
		}
	}
	r.log.Error("reload failed; the running configuration goes on", "trigger", trigger, "error", firstLine(err))
	return invalid(false, configProblems(err))
}

// plan reads the configuration file and says what a reload would do,
// changing nothing.
func (r *reloader) plan() admin.ReloadResult {
	if r.f.configFile == "" {
		return noFile()
	}
	cfg, err := loadConfig(r.f, r.env.lookupEnv)
	if err != nil {
		return invalid(true, configProblems(err))
	}
	// Certificates a reload would fail to load make the file invalid.
	if problems, _ := tlsFindings(cfg, time.Now()); len(problems) > 0 {
		return invalid(true, problems)
	}
	changes, err := r.srv.Plan(cfg)
	if err != nil {
		return closing(true)
	}
	res := result(true, changes)
	res.Warnings = cfg.Warnings()
	return res
}

// result is the answer for a valid configuration and its changes.
func result(dryRun bool, changes []server.Change) admin.ReloadResult {
	res := admin.ReloadResult{Valid: true, DryRun: dryRun, Status: http.StatusOK}
	for _, c := range changes {
		res.Changes = append(res.Changes, admin.ReloadChange{Action: c.Action, Proxy: c.Proxy, Listen: c.Listen,
			Keys: c.Keys, ConnectionsAffected: c.Cut})
		res.ConnectionsAffected += c.Cut
	}
	return res
}

func invalid(dryRun bool, problems []string) admin.ReloadResult {
	return admin.ReloadResult{DryRun: dryRun, Errors: problems, Status: http.StatusUnprocessableEntity}
}

func noFile() admin.ReloadResult {
	return admin.ReloadResult{Errors: []string{"pj runs without a configuration file (-c): there is nothing to reload"},
		Status: http.StatusConflict}
}

func closing(dryRun bool) admin.ReloadResult {
	return admin.ReloadResult{DryRun: dryRun, Errors: []string{"pj is shutting down"}, Status: http.StatusServiceUnavailable}
}

// configProblems lists the problems of a configuration that did not load,
// one per line.
func configProblems(err error) []string {
	var ve *config.ValidationError
	if errors.As(err, &ve) {
		out := append([]string(nil), ve.Problems...)
		if ve.More > 0 {
			out = append(out, fmt.Sprintf("and %d more problems", ve.More))
		}
		return out
	}
	return strings.Split(strings.TrimSpace(err.Error()), "\n")
}

// serving is the status line pj gives its service manager.
func serving(cfg config.Config) string {
	if len(cfg.Proxies) == 1 {
		return "serving 1 proxy"
	}
	return fmt.Sprintf("serving %d proxies", len(cfg.Proxies))
}

func firstLine(err error) string {
	s := err.Error()
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

// adminListener runs the admin HTTP listener of the current configuration.
type adminListener struct {
	srv        *server.Server
	log        *slog.Logger
	logDropped func() uint64
	reload     admin.Reloader
	// socket is the admin listener's socket handed over by an upgrade,
	// used by the first apply if its address is the configuration's.
	socket  *os.File
	cfg     config.Admin
	running *admin.Server
}

// apply makes the admin listener match c: started, moved, restarted with
// a new token, or stopped. A new address is bound before the old one is
// released; if it cannot be, the old listener goes on.
func (a *adminListener) apply(c config.Admin) error {
	if c.Equal(a.cfg) && (a.running != nil) == (c.Listen != "") {
		return nil
	}
	var next *admin.Server
	if c.Listen != "" {
		old := a.running
		if old != nil && c.Listen == a.cfg.Listen {
			old.Close() // same address: it must be free before binding again
			a.running = nil
		}
		sock := a.socket
		a.socket = nil
		s, err := admin.Listen(c.Listen, a.srv, admin.Options{Token: c.Token, Pprof: c.Pprof, Hosts: c.Hosts, Version: version.Get(), Logger: a.log,
			LogDropped: a.logDropped, Reload: a.reload, Socket: sock})
		if err != nil {
			return err
		}
		next = s
		a.log.Info("admin listening", "address", s.Addr().String(), "token", c.Token != "", "pprof", c.Pprof,
			"changes_allowed", c.Token != "" || admin.LoopbackOnly(s.Addr()))
	}
	if a.running != nil {
		a.running.Close()
	}
	a.running, a.cfg = next, c
	return nil
}

func (a *adminListener) close() {
	if a.running != nil {
		a.running.Close()
	}
}

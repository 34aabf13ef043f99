package soak

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjproc"
)

// scale is how hard one run pushes. The short scale runs in `make test`
// (well under a minute of load); SOAK=full (`make soak`) runs the figures
// an operator cares about, for minutes.
type scale struct {
	name string
	// Short connections: conns in all, measured every connStep, with
	// connWorkers at a time.
	conns, connStep, connWorkers int
	// Idle connections held at once, and for how long.
	idleConns int
	idleHold  time.Duration
	// Reloads under load, one every reloadEvery.
	reloads     int
	reloadEvery time.Duration
	// Backends killed and restarted: the load lasts killLoad; a killed
	// backend stays dead for downFor, a restarted one up for upFor.
	killLoad, downFor, upFor time.Duration
	// SIGTERM: the grace period, and how long the load runs after the
	// signal (less than the grace period).
	grace, termLoad time.Duration
}

var (
	short = scale{
		name:  "short",
		conns: 60_000, connStep: 6_000, connWorkers: 50,
		idleConns: 1_000, idleHold: 3 * time.Second,
		reloads: 10, reloadEvery: 150 * time.Millisecond,
		killLoad: 10 * time.Second, downFor: 1500 * time.Millisecond, upFor: 1500 * time.Millisecond,
		grace: 4 * time.Second, termLoad: 2 * time.Second,
	}
	full = scale{
		name:  "full",
		conns: 1_000_000, connStep: 100_000, connWorkers: 50,
		// 10 000 would need 20 000 descriptors in pj alone (two per
		// proxied connection) plus its own few: above the hard limit of
		// 20 000 this suite was written under. 9 900 fits.
		idleConns: 9_900, idleHold: time.Minute,
		reloads: 50, reloadEvery: 200 * time.Millisecond,
		killLoad: time.Minute, downFor: 2 * time.Second, upFor: 2 * time.Second,
		grace: 20 * time.Second, termLoad: 10 * time.Second,
	}
)

// Limits the checks hold pj to.
const (
	// rssGrowthLimit bounds the resident memory pj may gain between 40%
	// of the short connections and the end: a plateau, not a slope.
	rssGrowthLimit = 8 << 20
	// fdSlack is how many descriptors more than at the start pj may hold
	// once a load is over (connections still closing).
	fdSlack = 8
)

var fileLimit uint64

func TestMain(m *testing.M) {
	lim, err := raiseFileLimit()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	fileLimit = lim
	os.Exit(pjproc.Main(m, "github.com/pj-proxy/pj/bench/loadgen"))
}

// row is one line of the table a run prints.
type row struct {
	check, load, figures, limit string
	ok                          bool
}

var (
	tableMu sync.Mutex
	table   []row
)

func record(r row) {
	tableMu.Lock()
	table = append(table, r)
	tableMu.Unlock()
}

// TestSoak drives the real pj binary over loopback through each check in
// turn and prints one table of what it saw. SOAK=full runs the full scale.
func TestSoak(t *testing.T) {
	sc := short
	if os.Getenv("SOAK") == "full" {
		sc = full
	}
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("soak scale %s; %d CPUs, load average %s; descriptor limit %d; %s",
		sc.name, runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "), fileLimit, runtime.Version())
	t.Cleanup(func() { printTable(t, sc) })

	t.Run("short-connections", func(t *testing.T) { shortConnections(t, sc) })
	t.Run("idle-connections", func(t *testing.T) { idleConnections(t, sc) })
	t.Run("reloads-under-load", func(t *testing.T) { reloadsUnderLoad(t, sc) })
	t.Run("backend-kills", func(t *testing.T) { backendKills(t, sc) })
	t.Run("sigterm-under-load", func(t *testing.T) { sigtermUnderLoad(t, sc) })
}

func printTable(t *testing.T, sc scale) {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "check\tload\tfigures\tlimit\tresult\n")
	tableMu.Lock()
	for _, r := range table {
		res := "ok"
		if !r.ok {
			res = "FAIL"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.check, r.load, r.figures, r.limit, res)
	}
	tableMu.Unlock()
	_ = w.Flush()
	t.Logf("soak (%s scale):\n%s", sc.name, b.String())
	if path := os.Getenv("SOAK_TABLE"); path != "" {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Errorf("write the table to %s: %v", path, err)
		}
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// count writes n with thousands separators: 1 000 000.
func count(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + " " + s[i:]
	}
	return s
}

// settledFDs waits up to 5 s for pid's descriptors to come back to at
// most want (connections a load just closed are still closing), and
// returns the last reading.
func settledFDs(t *testing.T, pid, want int) usage {
	t.Helper()
	var u usage
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		u = measure(t, pid)
		if u.fds <= want || time.Now().After(deadline) {
			return u
		}
		<-tick.C
	}
}

// shortConnections makes many short connections (connect, one byte, its
// echo, close) with an idle timeout set, and reads pj's memory and
// descriptors after every step: they must level off.
func shortConnections(t *testing.T, sc scale) {
	r := row{check: "short connections",
		load:  fmt.Sprintf("%s connections (1 byte echoed), %d at a time, idle_timeout 1h", count(sc.conns), sc.connWorkers),
		limit: fmt.Sprintf("RSS growth from 40%% to the end < %d MiB; fds flat (±%d)", rssGrowthLimit>>20, fdSlack)}
	defer func() { record(r) }()
	ps := ports(t, 2)
	backend(t, "backend", ps[0])
	listen := "127.0.0.1:" + ps[1]
	p := pj(t, listen, "-p", listen+":127.0.0.1:"+ps[0], "--idle-timeout", "1h")

	type sample struct {
		n int
		u usage
	}
	base := measure(t, p.Pid())
	samples := []sample{{0, base}}
	ctx := ctxFor(t, 30*time.Minute)
	var elapsed float64
	for done := 0; done < sc.conns; {
		n := min(sc.connStep, sc.conns-done)
		kernel := tcpCounters()
		m, err := loadgen(ctx, "-mode", "conn", "-target", "pj", "-addr", listen,
			"-conn-workers", strconv.Itoa(sc.connWorkers), "-count", strconv.Itoa(n), "-duration", "10m")
		if err != nil || num(m, "errors") != 0 || num(m, "conns_ok") != float64(n) {
			r.figures = fmt.Sprintf("%v of %s connections failed after %s: %v %v (at %v)", num(m, "errors"), count(n), count(done), err, m["first_error"], m["error_times_unix_ms"])
			t.Fatalf("%s\nkernel TCP counters (whole namespace) in that step: %s; pj now holds %d descriptors\npj's log lines other than ok connections:\n%s\n(pj's log is kept: %s)",
				r.figures, counterDelta(kernel, tcpCounters()), measure(t, p.Pid()).fds, strings.Join(unusualLines(p.log, 20), "\n"), keep(t, p))
		}
		done += n
		elapsed += num(m, "elapsed_s")
		samples = append(samples, sample{done, settledFDs(t, p.Pid(), base.fds+fdSlack)})
	}
	ref := samples[len(samples)*2/5] // 40% of the way
	last := samples[len(samples)-1]
	growth := last.u.rssKiB - ref.u.rssKiB
	var marks []string
	for i := 0; i < len(samples); i += 2 {
		marks = append(marks, fmt.Sprintf("%s: %.1f", count(samples[i].n), samples[i].u.rssMiB()))
	}
	r.figures = fmt.Sprintf("RSS MiB by connections made: %s; +%.1f MiB from %s to the end; fds %d → %d; %.0f connections/s",
		strings.Join(marks, ", "), float64(growth)/1024, count(ref.n), base.fds, last.u.fds, float64(sc.conns)/elapsed)
	r.ok = growth*1024 < rssGrowthLimit && last.u.fds <= base.fds+fdSlack
	if !r.ok {
		t.Errorf("memory or descriptors grow without levelling off: %s", r.figures)
	}
}

// idleConnections holds many connections at once, idle, and checks that
// every one still echoes after the hold.
func idleConnections(t *testing.T, sc scale) {
	r := row{check: "idle connections",
		load:  fmt.Sprintf("%s connections held %s", count(sc.idleConns), sc.idleHold),
		limit: fmt.Sprintf("all still echo; fds back within %d after closing", fdSlack)}
	defer func() { record(r) }()
	ps := ports(t, 2)
	be := backend(t, "backend", ps[0])
	listen := "127.0.0.1:" + ps[1]
	p := pj(t, listen, "-p", listen+":127.0.0.1:"+ps[0])
	m, err := loadgen(ctxFor(t, 10*time.Minute), "-mode", "idle", "-target", "pj", "-addr", listen,
		"-pids", strconv.Itoa(p.Pid()), "-backend-pid", strconv.Itoa(be.Pid()),
		"-idle-conns", strconv.Itoa(sc.idleConns), "-idle-hold", sc.idleHold.String())
	if err != nil {
		r.figures = err.Error()
		t.Fatal(err)
	}
	held, warning := int(num(m, "held")), m["warning"]
	before, after, closed := int(num(m, "fd_before")), int(num(m, "fd_after")), int(num(m, "fd_after_close"))
	r.figures = fmt.Sprintf("%s of %s echoed after the hold; %.1f KiB and %.2f fds per connection (Pss %.1f → %.1f MiB); fds %d → %d → %d after closing",
		count(held), count(sc.idleConns), num(m, "kib_per_conn"), num(m, "fds_per_conn"),
		num(m, "pss_before_kib")/1024, num(m, "pss_after_kib")/1024, before, after, closed)
	r.ok = held == sc.idleConns && warning == nil && closed <= before+fdSlack
	if !r.ok {
		t.Errorf("idle connections: %s (warning: %v)", r.figures, warning)
	}
}

// reloadConfig is the configuration of reload i: the kept proxy's
// settings change every time, and a second proxy comes and goes.
func reloadConfig(i int, listen, extra, backend, admin string) string {
	timeout, balance := "2s", "round-robin"
	if i%2 == 1 {
		timeout, balance = "3s", "least-conn"
	}
	cfg := fmt.Sprintf("admin: { listen: %q }\nproxies:\n  - name: web\n    listen: %q\n    backends: [%q]\n    connect_timeout: %s\n    balance: %s\n",
		admin, listen, backend, timeout, balance)
	if i%2 == 0 {
		cfg += fmt.Sprintf("  - name: extra\n    listen: %q\n    backends: [%q]\n", extra, backend)
	}
	return cfg
}

// reloadsUnderLoad reloads a changed configuration many times while short
// connections (a refused one fails) and persistent ones (a broken one
// fails) run through the proxy that stays.
func reloadsUnderLoad(t *testing.T, sc scale) {
	r := row{check: "reloads under load",
		load:  fmt.Sprintf("%d reloads (SIGHUP), one every %s, under 8 short-connection workers and 32 persistent connections", sc.reloads, sc.reloadEvery),
		limit: "0 refused, 0 broken, every reload applied"}
	defer func() { record(r) }()
	ps := ports(t, 4)
	backendAddr, listen, extra, admin := "127.0.0.1:"+ps[0], "127.0.0.1:"+ps[1], "127.0.0.1:"+ps[2], "127.0.0.1:"+ps[3]
	backend(t, "backend", ps[0])
	path := t.TempDir() + "/pj.yaml"
	testutil.WriteAtomically(t, path, reloadConfig(0, listen, extra, backendAddr, admin))
	p := pj(t, listen, "-c", path)

	loadFor := time.Duration(sc.reloads+2)*sc.reloadEvery + 2*time.Second
	ctx := ctxFor(t, loadFor+5*time.Minute)
	var mc, ml map[string]any
	var errc, errl error
	var loadEnd time.Time
	var endMu sync.Mutex
	ended := func() {
		endMu.Lock()
		if loadEnd.IsZero() {
			loadEnd = time.Now()
		}
		endMu.Unlock()
	}
	waitConn := background(func() {
		mc, errc = loadgen(ctx, "-mode", "conn", "-target", "pj", "-addr", listen, "-conn-workers", "8", "-duration", loadFor.String())
		ended()
	})
	waitLat := background(func() {
		ml, errl = loadgen(ctx, "-mode", "latC", "-target", "pj", "-addr", listen, "-lat-conns", "32", "-duration", loadFor.String())
		ended()
	})
	testutil.WaitFor(t, time.Minute, "the persistent connections to be open", func() bool {
		v, err := metric(admin, "pj_active_connections", `proxy="web"`)
		return err == nil && v >= 32
	})
	start := time.Now()
	for i := 1; i <= sc.reloads; i++ {
		testutil.WriteAtomically(t, path, reloadConfig(i, listen, extra, backendAddr, admin))
		p.Signal(t, syscall.SIGHUP)
		testutil.WaitFor(t, 30*time.Second, fmt.Sprintf("reload %d to be applied", i), func() bool {
			v, err := metric(admin, "pj_config_reloads_total", `result="success"`)
			return err == nil && v >= float64(i)
		})
		if pause := time.Until(start.Add(time.Duration(i) * sc.reloadEvery)); pause > 0 {
			<-time.After(pause) // the pace of the reloads, not a synchronisation
		}
	}
	reloadsDone := time.Now()
	waitConn()
	waitLat()
	ok, _ := metric(admin, "pj_config_reloads_total", `result="success"`)
	failed, _ := metric(admin, "pj_config_reloads_total", `result="failure"`)
	r.figures = fmt.Sprintf("%d reloads applied, %d failed; %s short connections, %s refused or broken; %s requests on 32 persistent connections, %s",
		int(ok), int(failed), count(int(num(mc, "conns_ok"))), count(int(num(mc, "errors"))), count(int(num(ml, "requests"))), errText(errl))
	r.ok = errc == nil && num(mc, "errors") == 0 && errl == nil && int(ok) == sc.reloads && failed == 0 && reloadsDone.Before(loadEnd)
	if !r.ok {
		t.Errorf("reloads under load: %s (short connections: %v, %v; the load ended %s after the last reload)",
			r.figures, errc, mc["first_error"], loadEnd.Sub(reloadsDone).Round(time.Millisecond))
	}
}

func errText(err error) string {
	if err == nil {
		return "none broken"
	}
	return "broken: " + err.Error()
}

// backendKills kills one of three backends (SIGKILL) every few seconds and
// restarts it, under short connections. Only connections in flight to the
// killed backend may fail, at the kill; once health checks have marked it
// down, none.
func backendKills(t *testing.T, sc scale) {
	r := row{check: "backend killed and restarted",
		load:  fmt.Sprintf("one of 3 backends SIGKILLed, dead %s, back %s, for %s, under 16 short-connection workers", sc.downFor, sc.upFor, sc.killLoad),
		limit: "0 failures once health marks the backend down; fds flat"}
	defer func() { record(r) }()
	ps := ports(t, 5)
	listen, admin := "127.0.0.1:"+ps[3], "127.0.0.1:"+ps[4]
	var backends [3]*process
	var addrs [3]string
	for i := range backends {
		addrs[i] = "127.0.0.1:" + ps[i]
		backends[i] = backend(t, fmt.Sprintf("backend%d", i), ps[i])
	}
	path := t.TempDir() + "/pj.yaml"
	testutil.WriteAtomically(t, path, fmt.Sprintf(`admin: { listen: %q }
proxies:
  - name: web
    listen: %q
    backends: [%q, %q, %q]
    health_check: { interval: 200ms, timeout: 200ms, rise: 2, fall: 2 }
`, admin, listen, addrs[0], addrs[1], addrs[2]))
	p := pj(t, listen, "-c", path)
	state := func(addr string) string {
		s, err := backendStates(admin)
		if err != nil {
			return "?"
		}
		return s[addr]
	}
	for _, a := range addrs {
		testutil.WaitFor(t, 10*time.Second, a+" to be up", func() bool { return state(a) == "up" })
	}
	base := measure(t, p.Pid())

	ctx := ctxFor(t, sc.killLoad+5*time.Minute)
	var m map[string]any
	var lerr error
	loadStart := time.Now()
	waitLoad := background(func() {
		m, lerr = loadgen(ctx, "-mode", "conn", "-target", "pj", "-addr", listen, "-conn-workers", "16", "-duration", sc.killLoad.String())
	})
	type window struct{ kill, down time.Time }
	var windows []window
	var catchUp time.Duration
	for k := 0; time.Since(loadStart)+sc.downFor+sc.upFor < sc.killLoad; k++ {
		i := k % len(backends)
		backends[i].Kill()
		w := window{kill: time.Now()}
		testutil.WaitFor(t, 10*time.Second, addrs[i]+" to be marked down", func() bool { return state(addrs[i]) == "down" })
		w.down = time.Now()
		windows = append(windows, w)
		catchUp = max(catchUp, w.down.Sub(w.kill))
		<-time.After(sc.downFor) // how long the backend stays dead
		backends[i] = backend(t, fmt.Sprintf("backend%d", i), ps[i])
		testutil.WaitFor(t, 10*time.Second, addrs[i]+" to be marked up", func() bool { return state(addrs[i]) == "up" })
		<-time.After(sc.upFor)
	}
	waitLoad()
	after := settledFDs(t, p.Pid(), base.fds+fdSlack)

	// A failure is excused if its connection was in flight between a kill
	// and the moment the API showed the backend down: it began before
	// that moment and failed after the kill. When it failed says nothing
	// alone: a loaded machine may let the client see a reset long after
	// the kill that caused it.
	var atKill, later int
	var unexcused []string
	times, _ := m["error_times_unix_ms"].([]any)
	starts, _ := m["error_starts_unix_ms"].([]any)
	for i, v := range times {
		ms, _ := v.(float64)
		at := time.UnixMilli(int64(ms))
		began := at
		if i < len(starts) {
			b, _ := starts[i].(float64)
			began = time.UnixMilli(int64(b))
		}
		excused := false
		for _, w := range windows {
			if !at.Before(w.kill.Add(-50*time.Millisecond)) && !began.After(w.down) {
				excused = true
			}
		}
		if excused {
			atKill++
		} else {
			later++
			if len(unexcused) < 10 {
				unexcused = append(unexcused, fmt.Sprintf("began %s, failed %s", began.Format("15:04:05.000"), at.Format("15:04:05.000")))
			}
		}
	}
	unrecorded := int(num(m, "errors")) - len(times) // beyond the times loadgen keeps
	r.figures = fmt.Sprintf("%d kills; %s connections ok; %d failed in flight at a kill, %d after health caught up (down within %s of a kill); fds %d → %d",
		len(windows), count(int(num(m, "conns_ok"))), atKill, later+unrecorded, catchUp.Round(time.Millisecond), base.fds, after.fds)
	r.ok = lerr == nil && len(windows) > 0 && later == 0 && unrecorded == 0 && after.fds <= base.fds+fdSlack
	if !r.ok {
		var kills []string
		for _, w := range windows {
			kills = append(kills, fmt.Sprintf("killed %s, down %s", w.kill.Format("15:04:05.000"), w.down.Format("15:04:05.000")))
		}
		t.Errorf("backend kills: %s (load: %v, first failure: %v; failures after health caught up: %s; kills: %s)",
			r.figures, lerr, m["first_error"], strings.Join(unexcused, ", "), strings.Join(kills, ", "))
	}
}

// sigtermUnderLoad sends SIGTERM while persistent connections relay and
// idle ones are held: the relaying ones go on, the idle ones still echo
// just before the grace period ends and are cut only when it does, and pj
// then exits 0.
func sigtermUnderLoad(t *testing.T, sc scale) {
	const idle, busy = 20, 32
	r := row{check: "SIGTERM under load",
		load: fmt.Sprintf("SIGTERM with %d persistent connections relaying (for %s more) and %d idle, grace period %s",
			busy, sc.termLoad, idle, sc.grace),
		limit: "none cut before the grace period; exit 0 when it ends"}
	defer func() { record(r) }()
	ps := ports(t, 2)
	backend(t, "backend", ps[0])
	listen := "127.0.0.1:" + ps[1]
	p := pj(t, listen, "-p", listen+":127.0.0.1:"+ps[0], "--grace-period", sc.grace.String())

	held := make([]net.Conn, idle)
	for i := range held {
		c, err := net.DialTimeout("tcp", listen, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if err := echo(c, 'h', 5*time.Second); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		held[i] = c
	}
	base := measure(t, p.Pid())
	ctx := ctxFor(t, sc.grace+5*time.Minute)
	var m map[string]any
	var lerr error
	waitLoad := background(func() {
		m, lerr = loadgen(ctx, "-mode", "latC", "-target", "pj", "-addr", listen, "-lat-conns", strconv.Itoa(busy), "-duration", sc.termLoad.String())
	})
	// Every connection is through to the backend: two descriptors each.
	testutil.WaitFor(t, time.Minute, "the persistent connections to be open", func() bool {
		return measure(t, p.Pid()).fds >= base.fds+2*busy
	})
	term := time.Now()
	p.Signal(t, syscall.SIGTERM)
	waitLoad()

	// Just before the grace period ends, every idle connection answers.
	margin := min(time.Second, sc.grace/4)
	<-time.After(time.Until(term.Add(sc.grace - margin))) // the moment to check, not a synchronisation
	answered := 0
	for _, c := range held {
		if echo(c, 'g', margin/2) == nil {
			answered++
		}
	}
	checkedAt := time.Since(term)
	exitErr := p.Wait(t, sc.grace+30*time.Second)
	exitedAt := time.Since(term)
	cut := 0
	for _, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil && !testutil.IsTimeout(err) {
			cut++
		}
	}
	status := "exit 0"
	if exitErr != nil {
		status = exitErr.Error()
	}
	r.figures = fmt.Sprintf("%s requests on the busy connections after SIGTERM, %s; %d of %d idle answered at %s; cut and exited at %s (%s); %d cut",
		count(int(num(m, "requests"))), errText(lerr), answered, idle, checkedAt.Round(10*time.Millisecond),
		exitedAt.Round(10*time.Millisecond), status, cut)
	r.ok = lerr == nil && answered == idle && cut == idle && exitErr == nil &&
		exitedAt >= sc.grace-100*time.Millisecond && exitedAt < sc.grace+5*time.Second
	if !r.ok {
		t.Errorf("SIGTERM under load: %s", r.figures)
	}
}

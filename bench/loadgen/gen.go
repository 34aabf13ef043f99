package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Bounds on the generator's waits. Every network operation of a run has a
// deadline, so a stuck target fails the run instead of hanging it.
const (
	dialTimeout = 5 * time.Second
	// replyWait is how long, after the measured period, the generator
	// waits for the last answers (an upload's count, an echo in flight).
	replyWait = 30 * time.Second
)

// runConfig is one measurement: a mode against one target.
type runConfig struct {
	mode, target string
	rep          int
	addr         string // the target's listen address (the backend's, for direct)
	// roots are the target's process ids; their process trees are the
	// target. None for direct: its CPU, memory and descriptors are n/a.
	roots      []int
	backendPID int // 0 if unknown; only read for idle's cross-check
	duration   time.Duration

	streams     int // up, down
	latConns    int // latC (lat1 uses 1)
	msgSize     int // lat1, latC
	connWorkers int // the cycling modes
	// pace starts the cycling modes' cycles at connRate per second, all
	// workers together (connpaced is conn with pace).
	pace     bool
	connRate int
	// count, when positive, ends a cycling mode after that many cycles
	// (the duration still bounds it).
	count     int
	idleConns int // idle
	// idleHold is how long idle holds its connections, after measuring,
	// before it checks that every one still echoes.
	idleHold time.Duration

	tlsName  string         // tlsfull, tlsresume, tlsbulk: the server name
	tlsRoots *x509.CertPool // and the CA the target's certificate is checked with

	proc procFS
	hz   int64 // USER_HZ
	pat  *pattern
}

// measured reports whether the target has processes to measure.
func (cfg *runConfig) measured() bool { return len(cfg.roots) > 0 }

// cpuSeconds reads the target's CPU time so far; 0 for direct.
func (cfg *runConfig) cpuSeconds() (float64, error) {
	if !cfg.measured() {
		return 0, nil
	}
	u, err := cfg.proc.measure(cfg.roots, false, false)
	if err != nil {
		return 0, fmt.Errorf("target CPU: %w", err)
	}
	return float64(u.ticks) / float64(cfg.hz), nil
}

// dial opens a TCP connection to the target.
func (cfg *runConfig) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(ctx, "tcp", cfg.addr)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// window is a run's measured period, and the target's CPU seconds in it
// (0 for direct).
type window struct {
	start, end time.Time
	cpu        float64
}

func (w window) seconds() float64 { return w.end.Sub(w.start).Seconds() }

// measure runs work over a window of cfg.duration, reading the target's
// CPU before and after it; work gets the window's deadline, and the
// window ends when work returns.
func (cfg *runConfig) measure(work func(deadline time.Time) error) (window, error) {
	before, err := cfg.cpuSeconds()
	if err != nil {
		return window{}, err
	}
	w := window{start: time.Now()}
	if err := work(w.start.Add(cfg.duration)); err != nil {
		return window{}, err
	}
	w.end = time.Now()
	after, err := cfg.cpuSeconds()
	if err != nil {
		return window{}, err
	}
	w.cpu = after - before
	return w, nil
}

// isTimeout reports whether err is a deadline passing: the normal end of a
// timed loop.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// closeAll closes every non-nil connection.
func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// openConns opens n connections with dial and readies each with ready (a
// header, a warm-up); what names one in errors. On an error it closes
// those it opened.
func openConns(ctx context.Context, n int, what string, dial func(context.Context) (net.Conn, error), ready func(i int, c net.Conn) error) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	for i := range n {
		c, err := dial(ctx)
		if err == nil {
			conns = append(conns, c)
			err = ready(i, c)
		}
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("open %s %d: %w", what, i, err)
		}
	}
	return conns, nil
}

// onEach runs f on every connection at once and waits for all; it
// returns their errors, each naming its connection (what, as openConns).
func onEach(conns []net.Conn, what string, f func(i int, c net.Conn) error) error {
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			if err := f(i, c); err != nil {
				errs[i] = fmt.Errorf("%s %d: %w", what, i, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// runMode runs cfg.mode and fills r with its figures.
func runMode(ctx context.Context, cfg *runConfig, r *result) error {
	switch cfg.mode {
	case "up":
		return runBulk(ctx, cfg, r, cfg.dial, true)
	case "down":
		return runBulk(ctx, cfg, r, cfg.dial, false)
	case "lat1":
		return runLat(ctx, cfg, r, 1)
	case "latC":
		return runLat(ctx, cfg, r, cfg.latConns)
	case "conn", "connpaced":
		return runConn(ctx, cfg, r)
	case "sni":
		return runSNI(ctx, cfg, r)
	case "idle":
		return runIdle(ctx, cfg, r)
	case "udp-lat":
		return runUDPLat(ctx, cfg, r)
	case "tlsfull":
		return runTLSHandshakes(ctx, cfg, r, false)
	case "tlsresume":
		return runTLSHandshakes(ctx, cfg, r, true)
	case "tlsbulk":
		return runBulk(ctx, cfg, r, cfg.tlsDialer(nil), true)
	}
	if size, sessions, ok := udpMode(cfg.mode); ok {
		return runUDP(ctx, cfg, r, size, sessions)
	}
	return fmt.Errorf("unknown mode %q (want up, down, lat1, latC, conn, connpaced, sni, idle, tlsfull, tlsresume, tlsbulk, udp-lat or udp-SIZE-SESSIONS)", cfg.mode)
}

// sysCPU is CPU time so far, in seconds, beyond the target's own.
type sysCPU struct {
	// machine is every core's busy time (/proc/stat): whatever else the
	// machine runs meanwhile is in it too.
	machine float64
	// run is the time of the run's own parts: this generator, the
	// backend, the target's trees, the kernel's threads (workqueues,
	// ksoftirqd: work no process owns, such as loopback's delivery) and
	// every core's interrupt and softirq time.
	run float64
}

// systemCPU reads sysCPU. A bulk run reports both per GiB, for every
// target and direct alike, so that a relay whose work moves out of its
// process into the kernel is compared whole: a target's cost is its
// figure less direct's.
func (cfg *runConfig) systemCPU() (sysCPU, error) {
	data, err := os.ReadFile(filepath.Join(cfg.proc.root, "stat"))
	if err != nil {
		return sysCPU{}, fmt.Errorf("machine CPU: %w", err)
	}
	busy, irq, err := parseProcStat(string(data))
	if err != nil {
		return sysCPU{}, err
	}
	all, err := cfg.proc.readAll()
	if err != nil {
		return sysCPU{}, err
	}
	run := irq
	counted := map[int]bool{}
	add := func(pid int) {
		if s, ok := all[pid]; ok && !counted[pid] {
			counted[pid] = true
			run += s.utime + s.stime
		}
	}
	add(os.Getpid())
	add(cfg.backendPID)
	pids, err := tree(all, cfg.roots)
	if err != nil {
		return sysCPU{}, err
	}
	for _, pid := range pids {
		add(pid)
		if s := all[pid]; !counted[-pid] {
			counted[-pid] = true
			run += s.cutime + s.cstime
		}
	}
	for pid, s := range all {
		if pid == kthreadd || s.ppid == kthreadd {
			add(pid)
		}
	}
	hz := float64(cfg.hz)
	return sysCPU{machine: float64(busy) / hz, run: float64(run) / hz}, nil
}

// kthreadd is the parent of the kernel's threads.
const kthreadd = 2

// parseProcStat reads the first ("cpu ") line of /proc/stat: the busy
// ticks of all cores (user, nice, system, irq, softirq, steal) and, of
// those, the interrupt and softirq ticks.
func parseProcStat(text string) (busy, irq int64, err error) {
	line, _, _ := strings.Cut(text, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("parse /proc/stat: first line %q is not the cpu line", clip(line, 60))
	}
	var v [8]int64
	for i := range v {
		if v[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("parse /proc/stat: field %d: %w", i+1, err)
		}
	}
	const user, nice, system, irqF, softirq, steal = 0, 1, 2, 5, 6, 7
	irq = v[irqF] + v[softirq]
	return v[user] + v[nice] + v[system] + irq + v[steal], irq, nil
}

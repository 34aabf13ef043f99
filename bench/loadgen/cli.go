package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Run runs one sub-command: serve, run, wait, ports, cert or delay.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: loadgen serve|run|wait|ports|cert|delay [flags] (see bench/README.md)")
	}
	switch args[0] {
	case "serve":
		return cmdServe(ctx, args[1:], stdout, stderr)
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "wait":
		return cmdWait(ctx, args[1:], stderr)
	case "ports":
		return cmdPorts(args[1:], stdout, stderr)
	case "cert":
		return cmdCert(args[1:], stderr)
	case "delay":
		return cmdDelay(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("unknown sub-command %q: want serve, run, wait, ports, cert or delay", args[0])
}

// newFlags makes a flag set that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("loadgen "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// cmdServe runs the backend until its lifetime ends, a signal arrives, or
// the process that started it (-parent) is gone, so that a runner killed
// hard leaves nothing behind.
func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "loopback address to listen on (port 0: the kernel picks)")
	portFile := fs.String("port-file", "", "write the port listened on to this file")
	lifetime := fs.Duration("lifetime", 2*time.Hour, "exit after this long")
	connLife := fs.Duration("conn-life", 10*time.Minute, "close any connection older than this")
	parent := fs.Int("parent", 0, "exit when this process is no longer our parent (0: do not watch)")
	more := fs.Int("more", 0, "also serve on this many more ports of the -listen host (a pool of many backends)")
	moreFile := fs.String("more-file", "", "with -more: write those ports to this file, one a line")
	tlsCert := fs.String("tls-cert", "", "serve TLS with this certificate (and -tls-key): a TLS backend, without the UDP echo or -more")
	tlsKey := fs.String("tls-key", "", "the key of -tls-cert")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var tlsCfg *tls.Config
	if *tlsCert != "" || *tlsKey != "" {
		pair, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return fmt.Errorf("backend: -tls-cert and -tls-key: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}
	}
	if err := loopbackOnly(*listen); err != nil {
		return err
	}
	if *more < 0 || *more > maxMoreListeners || (*more > 0) != (*moreFile != "") {
		return fmt.Errorf("-more %d: want 0 to %d, and -more-file with it", *more, maxMoreListeners)
	}
	ctx, cancel := context.WithTimeout(ctx, *lifetime)
	defer cancel()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	fmt.Fprintf(stdout, "backend listening on %s\n", ln.Addr())
	if *portFile != "" {
		if err := writeWhole(*portFile, strconv.Itoa(port)+"\n"); err != nil {
			ln.Close()
			return fmt.Errorf("backend: port file: %w", err)
		}
	}
	if *parent > 0 {
		go watchParent(ctx, cancel, *parent)
	}
	b := &backend{pat: newPattern(), connLife: *connLife}
	if tlsCfg != nil {
		// A TLS backend: the same protocol inside TLS, and no UDP.
		return b.serve(ctx, tls.NewListener(ln, tlsCfg))
	}
	if *more > 0 {
		host, _, _ := net.SplitHostPort(*listen)
		lns, err := serveMore(ctx, b, host, *more, *moreFile)
		if err != nil {
			ln.Close()
			return err
		}
		defer func() {
			for _, l := range lns {
				l.Close()
			}
		}()
	}
	// The UDP echo listens on the same port number, for the UDP modes.
	ufd, _, err := openUDPEcho(port)
	if err != nil {
		ln.Close()
		return err
	}
	udpDone := make(chan error, 1)
	go func() { udpDone <- serveUDPEcho(ctx, ufd) }()
	err = b.serve(ctx, ln)
	cancel()
	return errors.Join(err, <-udpDone)
}

// maxMoreListeners bounds serve's -more.
const maxMoreListeners = 5000

// serveMore serves b on n more ports of host, and writes them to file.
func serveMore(ctx context.Context, b *backend, host string, n int, file string) ([]net.Listener, error) {
	lns := make([]net.Listener, 0, n)
	var text strings.Builder
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("backend: listener %d of -more: %w", len(lns)+1, err)
		}
		lns = append(lns, l)
		fmt.Fprintf(&text, "%d\n", l.Addr().(*net.TCPAddr).Port)
		go func() { _ = b.serve(ctx, l) }()
	}
	if err := writeWhole(file, text.String()); err != nil {
		return lns, fmt.Errorf("backend: -more-file: %w", err)
	}
	return lns, nil
}

// writeWhole writes text to a file beside file, then renames it to file:
// a reader never sees half of it.
func writeWhole(file, text string) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// watchParent cancels when our parent process changes (we were orphaned).
func watchParent(ctx context.Context, cancel context.CancelFunc, parent int) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if os.Getppid() != parent {
				cancel()
				return
			}
		}
	}
}

// cmdRun runs one measurement and writes its JSON line, also when it
// fails: the line then has an "error" key, and Run returns the error.
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	cfg := &runConfig{}
	fs.StringVar(&cfg.mode, "mode", "", "up, down, lat1, latC, conn, connpaced, sni, idle, udp-lat or udp-SIZE-SESSIONS (udp-64-1000)")
	fs.StringVar(&cfg.target, "target", "", "the target's name, for the result line")
	fs.IntVar(&cfg.rep, "rep", 1, "repetition number, for the result line")
	fs.StringVar(&cfg.addr, "addr", "", "the target's listen address (the backend's for direct); loopback only")
	pids := fs.String("pids", "", "comma-separated root process ids of the target (empty: direct, no CPU/memory figures)")
	fs.IntVar(&cfg.backendPID, "backend-pid", 0, "the backend's process id, to cross-check idle connections")
	fs.DurationVar(&cfg.duration, "duration", 4*time.Second, "measured time of up, down, lat1, latC and conn")
	fs.IntVar(&cfg.streams, "streams", 4, "parallel streams of up and down")
	fs.IntVar(&cfg.latConns, "lat-conns", 32, "persistent connections of latC")
	fs.IntVar(&cfg.msgSize, "msg-size", 64, "message size of lat1, latC and udp-lat, bytes")
	fs.IntVar(&cfg.connWorkers, "conn-workers", 8, "workers of the cycling modes: conn, connpaced, sni, tlsfull and tlsresume")
	fs.BoolVar(&cfg.pace, "pace", false, "cycling modes: start the cycles at -conn-rate (connpaced is conn -pace)")
	fs.IntVar(&cfg.connRate, "conn-rate", 100, "with -pace: cycles per second, all workers together")
	fs.IntVar(&cfg.count, "count", 0, "cycling modes: stop after this many cycles (0: run for -duration)")
	fs.IntVar(&cfg.idleConns, "idle-conns", 3000, "connections held by idle")
	fs.DurationVar(&cfg.idleHold, "idle-hold", 0, "idle: hold the connections this long before checking they all still echo")
	fs.StringVar(&cfg.tlsName, "tls-name", "bench.pj.test", "server name of the TLS modes")
	tlsCA := fs.String("tls-ca", "", "CA file the TLS modes check the target's certificate with (loadgen cert's ca.pem)")
	procRoot := fs.String("proc", "/proc", "where proc(5) is mounted")
	if err := fs.Parse(args); err != nil {
		return err
	}
	r := newResult()
	r.set("target", cfg.target)
	r.set("mode", cfg.mode)
	r.set("rep", cfg.rep)
	r.set("duration_s", cfg.duration.Seconds())
	err := prepareRun(cfg, *pids, *procRoot)
	if err == nil && strings.HasPrefix(cfg.mode, "tls") {
		if *tlsCA == "" {
			err = errors.New("-tls-ca is required by the TLS modes")
		} else {
			cfg.tlsRoots, err = loadRoots(*tlsCA)
		}
	}
	if err == nil {
		err = runMode(ctx, cfg, r)
	}
	if err != nil {
		err = fmt.Errorf("%s against %s (%s): %w", cfg.mode, cfg.target, cfg.addr, err)
		r.set("error", err.Error())
	}
	r.set("time", time.Now().UTC().Format(time.RFC3339))
	if werr := r.writeLine(stdout); werr != nil {
		return errors.Join(err, werr)
	}
	return err
}

// prepareRun checks cfg and fills in what the flags do not give.
func prepareRun(cfg *runConfig, pids, procRoot string) error {
	if cfg.addr == "" {
		return errors.New("-addr is required")
	}
	if err := loopbackTarget(cfg.addr); err != nil {
		return err
	}
	if cfg.duration <= 0 || cfg.duration > 10*time.Minute {
		return fmt.Errorf("-duration %s: want more than 0 and at most 10m", cfg.duration)
	}
	if cfg.count < 0 || cfg.count > 1<<30 {
		return fmt.Errorf("-count %d: want 0 to %d", cfg.count, 1<<30)
	}
	if cfg.mode == "connpaced" {
		cfg.pace = true
	}
	if (cfg.count > 0 || cfg.pace) && !cycling(cfg.mode) {
		return fmt.Errorf("-count and -pace apply to the modes that cycle connections (conn, connpaced, sni, tlsfull, tlsresume), not to %s", cfg.mode)
	}
	if cfg.idleHold < 0 || cfg.idleHold > 10*time.Minute {
		return fmt.Errorf("-idle-hold %s: want 0 to 10m", cfg.idleHold)
	}
	for name, v := range map[string]int{"-streams": cfg.streams, "-lat-conns": cfg.latConns, "-conn-workers": cfg.connWorkers, "-conn-rate": cfg.connRate, "-idle-conns": cfg.idleConns} {
		if v < 1 || v > 100000 {
			return fmt.Errorf("%s %d: want 1 to 100000", name, v)
		}
	}
	roots, err := parsePIDs(pids)
	if err != nil {
		return err
	}
	cfg.roots = roots
	cfg.proc = procFS{root: procRoot}
	cfg.hz = clockTicks(procRoot)
	cfg.pat = newPattern()
	return nil
}

// parsePIDs parses "12,34"; empty means none.
func parsePIDs(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("-pids %q: %q is not a process id", s, f)
		}
		out = append(out, pid)
	}
	return out, nil
}

// loopbackOnly refuses any address but a loopback one: the benchmark sends
// its load to this machine only.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("address %q: only loopback addresses (127.0.0.1, ::1) are allowed", addr)
}

// loopbackTarget is an address to connect to: loopback, and a real port.
func loopbackTarget(addr string) error {
	if err := loopbackOnly(addr); err != nil {
		return err
	}
	_, port, _ := net.SplitHostPort(addr)
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("address %q: want a port from 1 to 65535", addr)
	}
	return nil
}

// cmdWait waits until addr answers a one-byte echo: the target is up and
// reaches the backend. With -pid it fails at once if that process exits.
func cmdWait(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("wait", stderr)
	addr := fs.String("addr", "", "address to try")
	pid := fs.Int("pid", 0, "fail as soon as this process has exited")
	udp := fs.Bool("udp", false, "try a UDP echo instead of a TCP one")
	sni := fs.Bool("sni", false, "try a ClientHello for "+sniName+" and the backend's answer instead of an echo")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	tlsCA := fs.String("tls-ca", "", "the target terminates TLS: check its certificate with this CA file")
	tlsName := fs.String("tls-name", "bench.pj.test", "server name, with -tls-ca")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := loopbackTarget(*addr); err != nil {
		return err
	}
	cfg := &runConfig{addr: *addr, tlsName: *tlsName}
	if *tlsCA != "" {
		roots, err := loadRoots(*tlsCA)
		if err != nil {
			return err
		}
		cfg.tlsRoots = roots
	}
	cy := cycler{dial: cfg.dial, exchange: echoByte('w')}
	switch {
	case *sni:
		hello, err := clientHello()
		if err != nil {
			return err
		}
		cy.exchange = helloExchange(hello, tlsAnswer(newPattern()))
	case cfg.tlsRoots != nil:
		cy.dial = cfg.tlsDialer(nil)
	}
	limit := time.Now().Add(*timeout)
	last := errors.New("no try yet")
	for time.Now().Before(limit) {
		if *pid > 0 && !alive(*pid) {
			return fmt.Errorf("process %d exited before %s answered (last try: %v)", *pid, *addr, last)
		}
		var err error
		if *udp {
			err = udpEchoOnce(*addr, 100*time.Millisecond)
		} else {
			err = cy.cycle(ctx)
		}
		if err == nil {
			return nil
		}
		last = err
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s did not answer an echo within %s: %v", *addr, *timeout, last)
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s, err := parseStat(string(data))
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	return s.state != "Z"
}

// cmdPorts prints n free loopback ports (TCP and UDP) below the kernel's ephemeral
// range, all held at once while choosing so that they differ. A port in
// the ephemeral range could be in use, or left in TIME_WAIT, by the
// thousands of client connections a run makes, and a target restarted on
// it would fail to bind.
func cmdPorts(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ports", stderr)
	n := fs.Int("n", 1, "how many ports")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *n > 1000 {
		return fmt.Errorf("-n %d: want 1 to 1000", *n)
	}
	lo, hi := portWindow("/proc/sys/net/ipv4/ip_local_port_range")
	var ports []string
	next := lo + rand.IntN(hi-lo)
	for tries := 0; len(ports) < *n && tries < hi-lo; tries++ {
		port := next
		next++
		if next >= hi {
			next = lo
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // taken
		}
		defer ln.Close()
		// Free for UDP too: a port serves a UDP target as well.
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		defer pc.Close()
		ports = append(ports, strconv.Itoa(port))
	}
	if len(ports) < *n {
		return fmt.Errorf("found only %d free ports between %d and %d", len(ports), lo, hi)
	}
	_, err := fmt.Fprintln(stdout, strings.Join(ports, " "))
	return err
}

// portWindow is where cmdPorts looks: from 10000 up to the start of the
// ephemeral range read from rangeFile (32768 when it cannot be read).
func portWindow(rangeFile string) (lo, hi int) {
	lo, hi = 10000, 32768
	data, err := os.ReadFile(rangeFile)
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(data))
	if len(f) == 2 {
		if start, err := strconv.Atoi(f[0]); err == nil && start > lo+1000 {
			hi = start
		}
	}
	return lo, hi
}

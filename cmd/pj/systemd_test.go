package main

// pj under a service manager: readiness, reload and stop notifications
// and the watchdog through a NOTIFY_SOCKET the test opens, and listening
// sockets passed in as systemd passes them (LISTEN_FDS, LISTEN_PID).

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/testutil"
)

// notifySocket is the service manager's end of NOTIFY_SOCKET.
type notifySocket struct {
	path string
	msgs chan string
}

// listenNotify opens a unixgram socket and collects every datagram sent
// to it until the test ends.
func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	// A short directory: a socket path is limited to 107 bytes.
	dir, err := os.MkdirTemp("", "pjn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	ns := &notifySocket{path: path, msgs: make(chan string, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			select {
			case ns.msgs <- string(buf[:n]):
			default: // the test stopped reading; keep draining
			}
		}
	}()
	t.Cleanup(func() { _ = conn.Close(); <-done })
	return ns
}

// next returns the next notification that is not a watchdog ping,
// counting the pings it skipped in *pings.
func (ns *notifySocket) next(t *testing.T, pings *int) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-ns.msgs:
			if m == "WATCHDOG=1" {
				*pings++
				continue
			}
			return m
		case <-deadline:
			t.Fatal("no notification within 10s")
			return ""
		}
	}
}

// fields parses "A=1\nB=2".
func fields(msg string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		k, v, _ := strings.Cut(line, "=")
		out[k] = v
	}
	return out
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

func TestNotifyReadyReloadStoppingAndWatchdog(t *testing.T) {
	ns := listenNotify(t)
	a, b := testutil.Identify(t, "a"), testutil.Identify(t, "b")
	x, y := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	yamlConfig(t, path, [3]string{"a", x, a})

	cmd := exec.Command(pjBin, "-c", path)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "NOTIFY_SOCKET=" + ns.path,
		"WATCHDOG_USEC=200000"} // WatchdogSec=200ms: a ping every 100 ms
	p := startCmd(t, cmd, 1)

	pings := 0
	ready := fields(ns.next(t, &pings))
	if ready["READY"] != "1" || ready["STATUS"] != "serving 1 proxy" {
		t.Fatalf("first notification %v, want READY=1 and STATUS=serving 1 proxy", ready)
	}
	// Ready means serving: the listener answers at once.
	if got := ask(t, x); got != "a" {
		t.Fatalf("after READY=1, %s answered %q, want a", x, got)
	}

	t.Run("reload", func(t *testing.T) {
		yamlConfig(t, path, [3]string{"a", x, a}, [3]string{"b", y, b})
		before := monotonicUsec(t)
		p.signal(t, syscall.SIGHUP)
		reloading := fields(ns.next(t, &pings))
		after := monotonicUsec(t)
		usec, err := strconv.ParseInt(reloading["MONOTONIC_USEC"], 10, 64)
		if reloading["RELOADING"] != "1" || err != nil || usec < before || usec > after {
			t.Fatalf("on SIGHUP: %v, want RELOADING=1 and MONOTONIC_USEC between %d and %d", reloading, before, after)
		}
		ready := fields(ns.next(t, &pings))
		if ready["READY"] != "1" || ready["STATUS"] != "serving 2 proxies" {
			t.Fatalf("after the reload: %v, want READY=1 and STATUS=serving 2 proxies", ready)
		}
		if got := ask(t, y); got != "b" {
			t.Fatalf("after READY=1, the new listener %s answered %q, want b", y, got)
		}
	})

	t.Run("failed reload", func(t *testing.T) {
		writeAtomically(t, path, "proxies: [\n")
		p.signal(t, syscall.SIGHUP)
		if m := fields(ns.next(t, &pings)); m["RELOADING"] != "1" {
			t.Fatalf("on SIGHUP: %v, want RELOADING=1", m)
		}
		// The old configuration goes on, and pj says it is ready again.
		if m := fields(ns.next(t, &pings)); m["READY"] != "1" || m["STATUS"] != "serving 2 proxies" {
			t.Fatalf("after a failed reload: %v, want READY=1 and STATUS=serving 2 proxies", m)
		}
	})

	// The watchdog is pinged every 100 ms while pj runs.
	testutil.WaitFor(t, 10*time.Second, "three watchdog pings", func() bool {
		for {
			select {
			case m := <-ns.msgs:
				if m != "WATCHDOG=1" {
					t.Fatalf("unexpected notification %q", m)
				}
				pings++
			default:
				return pings >= 3
			}
		}
	})

	p.signal(t, syscall.SIGTERM)
	if m := fields(ns.next(t, &pings)); m["STOPPING"] != "1" {
		t.Fatalf("on SIGTERM: %v, want STOPPING=1", m)
	}
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
}

func TestNoWatchdogWithoutWatchdogSec(t *testing.T) {
	ns := listenNotify(t)
	x := testutil.ClosedAddr(t)
	cmd := exec.Command(pjBin, "-p", x+":"+testutil.StartEcho(t))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "NOTIFY_SOCKET=" + ns.path}
	p := startCmd(t, cmd, 1)
	pings := 0
	if m := fields(ns.next(t, &pings)); m["READY"] != "1" {
		t.Fatalf("first notification %v, want READY=1", m)
	}
	p.signal(t, syscall.SIGTERM)
	if m := fields(ns.next(t, &pings)); m["STOPPING"] != "1" {
		t.Fatalf("on SIGTERM: %v, want STOPPING=1", m)
	}
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	if pings != 0 {
		t.Fatalf("%d watchdog pings without WATCHDOG_USEC, want none", pings)
	}
}

// inheritable returns a listening TCP socket on loopback as a file to pass
// to a child, and its address. The test keeps the socket open until it
// ends, as systemd keeps the sockets of a .socket unit: binding the same
// address again fails, so only the passed socket can serve it.
func inheritable(t *testing.T) (*os.File, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // f is a duplicate that keeps the socket listening
	t.Cleanup(func() { _ = f.Close() })
	return f, addr
}

// activated starts pj as systemd starts a socket-activated service: the
// files as descriptors 3, 4, ..., LISTEN_FDS their count, and LISTEN_PID
// pj's own pid, which a shell knows before it execs pj in its place.
func activated(t *testing.T, files []*os.File, listeners int, args ...string) *proc {
	t.Helper()
	script := `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`
	cmd := exec.Command("sh", append([]string{"-c", script, pjBin}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LISTEN_FDS=" + strconv.Itoa(len(files))}
	cmd.ExtraFiles = files
	return startCmd(t, cmd, listeners)
}

func TestSocketActivation(t *testing.T) {
	fa, addrA := inheritable(t)
	fb, addrB := inheritable(t)
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fu, err := udp.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	_ = udp.Close()
	t.Cleanup(func() { _ = fu.Close() })

	a, b := testutil.Identify(t, "a"), testutil.Identify(t, "b")
	own := testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	yamlConfig(t, path, [3]string{"a", addrA, a}, [3]string{"own", own, testutil.StartEcho(t)})
	p := activated(t, []*os.File{fa, fb, fu}, 2, "-c", path)

	for _, l := range p.stderr.Lines("INFO listening") {
		inherited := strings.Contains(l, "socket=inherited")
		if strings.Contains(l, "proxy=a ") != inherited {
			t.Errorf("only proxy a serves an inherited socket; the log says: %s", l)
		}
	}
	if got := ask(t, addrA); got != "a" {
		t.Fatalf("the inherited socket %s answered %q, want a", addrA, got)
	}
	c := testutil.Dial(t, own)
	if got := testutil.RoundTrip(t, c, "own"); got != "own" {
		t.Fatalf("the proxy without an inherited socket answered %q", got)
	}
	_ = c.Close()
	if l := p.stderr.Lines("no proxy listens on"); len(l) != 1 || !strings.Contains(l[0], addrB) {
		t.Errorf("want one warning naming the unused socket %s, got %q", addrB, l)
	}
	if l := p.stderr.Lines("ignoring a socket passed by the service manager"); len(l) != 1 || !strings.Contains(l[0], "udp") {
		t.Errorf("want one warning about the UDP socket, got %q", l)
	}

	// A reload moves proxy b onto the unused socket and removes a; the
	// next adds a back, on its socket again (binding anew would fail:
	// the test, like systemd, still holds both).
	yamlConfig(t, path, [3]string{"b", addrB, b}, [3]string{"own", own, testutil.StartEcho(t)})
	p.signal(t, syscall.SIGHUP)
	p.stderr.WaitLines(t, "reload:", 1)
	if got := ask(t, addrB); got != "b" {
		t.Fatalf("after a reload, the inherited socket %s answered %q, want b", addrB, got)
	}
	yamlConfig(t, path, [3]string{"a", addrA, a}, [3]string{"b", addrB, b}, [3]string{"own", own, testutil.StartEcho(t)})
	p.signal(t, syscall.SIGHUP)
	p.stderr.WaitLines(t, "reload:", 2)
	if l := p.stderr.Lines("reload failed"); len(l) > 0 {
		t.Fatalf("reload failed: %q", l)
	}
	if got := ask(t, addrA); got != "a" {
		t.Fatalf("after adding proxy a back, %s answered %q, want a", addrA, got)
	}

	p.signal(t, syscall.SIGTERM)
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
}

func TestSocketsForAnotherProcessAreNotTaken(t *testing.T) {
	// LISTEN_PID names another process (pid 1): the sockets are not
	// pj's, so it binds the address itself, which the socket holds.
	f, addr := inheritable(t)
	cmd := exec.Command("sh", "-c", `LISTEN_PID=1; export LISTEN_PID; exec "$0" "$@"`, pjBin, "-p", addr+":"+testutil.StartEcho(t))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LISTEN_FDS=1"}
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "address already in use") {
		t.Fatalf("exit status %d (%v), output %q: want 1 and address already in use", code, err, out)
	}
}

// ask returns what the backend behind addr says, failing the test if it
// says nothing.
func ask(t *testing.T, addr string) string {
	t.Helper()
	got, err := testutil.Ask(addr)
	if err != nil {
		t.Fatalf("ask %s: %v", addr, err)
	}
	return got
}

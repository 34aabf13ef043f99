package main

// pj under a service manager: readiness, reload and stop notifications
// and the watchdog through a NOTIFY_SOCKET the test opens, and listening
// sockets passed in as systemd passes them (LISTEN_FDS, LISTEN_PID).

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjproc"
)

// notifySocket is the service manager's end of NOTIFY_SOCKET.
type notifySocket struct {
	path  string
	msgs  <-chan string
	pings int // the watchdog pings expect has passed over
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path, msgs := testutil.ListenNotify(t)
	return &notifySocket{path: path, msgs: msgs}
}

// waitFor gives see every notification, in order, until see returns true;
// it fails the test if that takes more than 10 s.
func (ns *notifySocket) waitFor(t *testing.T, what string, see func(msg string) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-ns.msgs:
			if see(m) {
				return
			}
		case <-deadline:
			t.Fatalf("timed out after 10s waiting for %s", what)
		}
	}
}

// expect reads the next notification that is not a watchdog ping and
// fails the test (saying when) unless it has every field of want
// ("READY=1"); it returns the notification's fields.
func (ns *notifySocket) expect(t *testing.T, when string, want ...string) map[string]string {
	t.Helper()
	var f map[string]string
	ns.waitFor(t, fmt.Sprintf("%s: a notification %s", when, strings.Join(want, " and ")), func(m string) bool {
		if m == "WATCHDOG=1" {
			ns.pings++
			return false
		}
		f = fields(m)
		for _, w := range want {
			if k, v, _ := strings.Cut(w, "="); f[k] != v {
				t.Fatalf("%s: notification %q, want %s", when, m, strings.Join(want, " and "))
			}
		}
		return true
	})
	return f
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

	cmd := pjproc.Command("-c", path)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+ns.path,
		"WATCHDOG_USEC=200000") // WatchdogSec=200ms: a ping every 100 ms
	p, _ := startPJ(t, 1, cmd)

	for _, step := range []struct {
		name string
		// write writes the file a SIGHUP then reloads; nil at the start.
		write func(t *testing.T)
		// status is that of the READY=1 which follows; addr a listener
		// that answers at once then, and says what it says.
		status, addr, says string
	}{
		{"start", nil, "serving 1 proxy", x, "a"},
		{"reload", func(t *testing.T) { yamlConfig(t, path, [3]string{"a", x, a}, [3]string{"b", y, b}) }, "serving 2 proxies", y, "b"},
		// The old configuration goes on, and pj says it is ready again.
		{"failed reload", func(t *testing.T) { testutil.WriteAtomically(t, path, "proxies: [\n") }, "serving 2 proxies", y, "b"},
	} {
		t.Run(step.name, func(t *testing.T) {
			if step.write != nil {
				step.write(t)
				before := monotonicUsec(t)
				p.Signal(t, syscall.SIGHUP)
				reloading := ns.expect(t, "on SIGHUP", "RELOADING=1")
				after := monotonicUsec(t)
				if usec, err := strconv.ParseInt(reloading["MONOTONIC_USEC"], 10, 64); err != nil || usec < before || usec > after {
					t.Fatalf("on SIGHUP: %v, want MONOTONIC_USEC between %d and %d", reloading, before, after)
				}
			}
			ns.expect(t, "ready", "READY=1", "STATUS="+step.status)
			// Ready means serving: the listener answers at once.
			if got := ask(t, step.addr); got != step.says {
				t.Fatalf("after READY=1, %s answered %q, want %s", step.addr, got, step.says)
			}
		})
	}

	// The watchdog is pinged every 100 ms while pj runs.
	ns.waitFor(t, "three watchdog pings", func(m string) bool {
		if m != "WATCHDOG=1" {
			t.Fatalf("unexpected notification %q", m)
		}
		ns.pings++
		return ns.pings >= 3
	})

	p.Signal(t, syscall.SIGTERM)
	ns.expect(t, "on SIGTERM", "STOPPING=1")
	if code := p.ExitCode(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
}

func TestNoWatchdogWithoutWatchdogSec(t *testing.T) {
	ns := listenNotify(t)
	x := testutil.ClosedAddr(t)
	cmd := pjproc.Command("-p", x+":"+testutil.StartEcho(t))
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+ns.path)
	p, _ := startPJ(t, 1, cmd)
	ns.expect(t, "first notification", "READY=1")
	p.Signal(t, syscall.SIGTERM)
	ns.expect(t, "on SIGTERM", "STOPPING=1")
	if code := p.ExitCode(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	if ns.pings != 0 {
		t.Fatalf("%d watchdog pings without WATCHDOG_USEC, want none", ns.pings)
	}
}

// inheritable returns a socket on loopback as a file to pass to a child,
// and its address: a listening TCP socket, or a UDP one if network is
// "udp". The test keeps the socket open until it ends, as systemd keeps
// the sockets of a .socket unit: binding the same address again fails,
// so only the passed socket can serve it.
func inheritable(t *testing.T, network string) (*os.File, string) {
	t.Helper()
	var (
		sock interface {
			File() (*os.File, error)
			Close() error
		}
		addr net.Addr
	)
	if network == "udp" {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		sock, addr = c, c.LocalAddr()
	} else {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		sock, addr = ln, ln.Addr()
	}
	f, err := sock.File()
	if err != nil {
		t.Fatal(err)
	}
	_ = sock.Close() // f is a duplicate that keeps the socket open
	t.Cleanup(func() { _ = f.Close() })
	return f, addr.String()
}

// activated starts pj as systemd starts a socket-activated service: the
// files as descriptors 3, 4, ..., LISTEN_FDS their count, and LISTEN_PID
// pj's own pid, which a shell knows before it execs pj in its place.
func activated(t *testing.T, files []*os.File, listeners int, args ...string) *pjproc.Proc {
	t.Helper()
	cmd := pjproc.Shell("LISTEN_PID=$$; export LISTEN_PID", args...)
	cmd.Env = append(cmd.Env, "LISTEN_FDS="+strconv.Itoa(len(files)))
	cmd.ExtraFiles = files
	p, _ := startPJ(t, listeners, cmd)
	return p
}

func TestSocketActivation(t *testing.T) {
	fa, addrA := inheritable(t, "tcp")
	fb, addrB := inheritable(t, "tcp")
	fu, _ := inheritable(t, "udp")

	a, b := testutil.Identify(t, "a"), testutil.Identify(t, "b")
	own := testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	yamlConfig(t, path, [3]string{"a", addrA, a}, [3]string{"own", own, testutil.StartEcho(t)})
	p := activated(t, []*os.File{fa, fb, fu}, 2, "-c", path)

	for _, l := range p.Stderr.Lines("INFO listening") {
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
	if l := p.Stderr.Lines("no proxy listens on"); len(l) != 1 || !strings.Contains(l[0], addrB) {
		t.Errorf("want one warning naming the unused socket %s, got %q", addrB, l)
	}
	if l := p.Stderr.Lines("ignoring a socket passed by the service manager"); len(l) != 1 || !strings.Contains(l[0], "udp") {
		t.Errorf("want one warning about the UDP socket, got %q", l)
	}

	// A reload moves proxy b onto the unused socket and removes a; the
	// next adds a back, on its socket again (binding anew would fail:
	// the test, like systemd, still holds both).
	yamlConfig(t, path, [3]string{"b", addrB, b}, [3]string{"own", own, testutil.StartEcho(t)})
	p.Signal(t, syscall.SIGHUP)
	p.Stderr.WaitLines(t, "reload:", 1)
	if got := ask(t, addrB); got != "b" {
		t.Fatalf("after a reload, the inherited socket %s answered %q, want b", addrB, got)
	}
	yamlConfig(t, path, [3]string{"a", addrA, a}, [3]string{"b", addrB, b}, [3]string{"own", own, testutil.StartEcho(t)})
	p.Signal(t, syscall.SIGHUP)
	p.Stderr.WaitLines(t, "reload:", 2)
	if l := p.Stderr.Lines("reload failed"); len(l) > 0 {
		t.Fatalf("reload failed: %q", l)
	}
	if got := ask(t, addrA); got != "a" {
		t.Fatalf("after adding proxy a back, %s answered %q, want a", addrA, got)
	}

	p.Signal(t, syscall.SIGTERM)
	if code := p.ExitCode(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
}

func TestSocketsForAnotherProcessAreNotTaken(t *testing.T) {
	// LISTEN_PID names another process (pid 1): the sockets are not
	// pj's, so it binds the address itself, which the socket holds.
	f, addr := inheritable(t, "tcp")
	cmd := pjproc.Shell("LISTEN_PID=1; export LISTEN_PID", "-p", addr+":"+testutil.StartEcho(t))
	cmd.Env = append(cmd.Env, "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{f}
	if code, _, stderr := pjproc.Run(t, cmd); code != 1 || !strings.Contains(stderr, "address already in use") {
		t.Fatalf("exit status %d, stderr %q: want 1 and address already in use", code, stderr)
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

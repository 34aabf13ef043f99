package main

// Upgrades (SIGUSR2) with the real binary: the new process takes over
// every listening socket while clients connect, established connections
// finish in the old one, a binary that fails changes nothing, and the new
// process becomes the service manager's main process.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// upgradable is a pj whose stderr is a pipe the processes it upgrades to
// inherit: every generation logs into one buffer.
type upgradable struct {
	first  *exec.Cmd
	stderr *testutil.Buffer
	exited chan struct{}
	err    error
	mu     sync.Mutex
	pids   []int // every generation, oldest first
}

func startUpgradable(t *testing.T, exe string, env []string, listeners int, args ...string) *upgradable {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	u := &upgradable{stderr: new(testutil.Buffer), exited: make(chan struct{})}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(u.stderr, r)
	}()
	cmd := exec.Command(exe, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stderr = w // an *os.File: Wait does not wait for the pipe's other writers
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	u.first = cmd
	u.pids = []int{cmd.Process.Pid}
	go func() {
		u.err = cmd.Wait()
		close(u.exited)
	}()
	t.Cleanup(func() {
		u.mu.Lock()
		pids := append([]int(nil), u.pids...)
		u.mu.Unlock()
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL) // each a pj this test started
		}
		<-u.exited
		for _, pid := range pids[1:] {
			waitGone(t, pid)
		}
		_ = r.Close()
		<-copied
		if t.Failed() {
			t.Logf("pj stderr (last lines):\n%s", tail(u.stderr.String(), 60))
		}
	})
	testutil.WaitFor(t, 10*time.Second, "pj to listen", func() bool {
		select {
		case <-u.exited:
			t.Fatalf("pj exited before listening: %v\n%s", u.err, tail(u.stderr.String(), 40))
		default:
		}
		return len(u.stderr.Lines("INFO listening")) >= listeners
	})
	return u
}

var handedOverTo = regexp.MustCompile(`the new process serves every listener.* pid=(\d+)`)

// upgrade sends SIGUSR2 to the newest generation and returns the new
// one's pid once the old one has handed over.
func (u *upgradable) upgrade(t *testing.T) int {
	t.Helper()
	u.mu.Lock()
	pid, n := u.pids[len(u.pids)-1], len(u.pids)
	u.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	lines := u.stderr.WaitLines(t, "the new process serves every listener", n)
	m := handedOverTo.FindStringSubmatch(lines[n-1])
	if m == nil {
		t.Fatalf("no pid in %q", lines[n-1])
	}
	next, _ := strconv.Atoi(m[1])
	u.mu.Lock()
	u.pids = append(u.pids, next)
	u.mu.Unlock()
	u.stderr.WaitLines(t, "upgrade: took over every listener", n)
	return next
}

// waitGone waits until process pid has exited (and been reaped by
// whichever process it was reparented to).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	testutil.WaitFor(t, 20*time.Second, fmt.Sprintf("pid %d to exit", pid), func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// A zombie has exited; only its parent's wait is missing.
		m := regexp.MustCompile(`\) (\S)`).FindSubmatch(b)
		return m != nil && string(m[1]) == "Z"
	})
}

// connectLoop makes connections (connect, one echo, close) from a few
// clients until stop is closed, at most max each, and returns the
// failures and the number served.
func connectLoop(addr string, stop <-chan struct{}) func() ([]error, int) {
	const clients, max = 4, 3000
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []error
		served   int
	)
	for i := range clients {
		wg.Go(func() {
			for j := range max {
				select {
				case <-stop:
					return
				default:
				}
				err := echoOnce(addr, fmt.Sprintf("c%d-%d", i, j))
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					served++
				}
				mu.Unlock()
			}
		})
	}
	return func() ([]error, int) {
		wg.Wait()
		return failures, served
	}
}

func echoOnce(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, want %q", buf, msg)
	}
	return nil
}

// stream sends n pattern bytes through c in two halves, the second once
// between is closed (when reading starts too), and checks that the echo brings back every byte in
// order: the hash of what was read against the hash of what was sent.
func stream(c *net.TCPConn, seed byte, n int64, between <-chan struct{}) <-chan error {
	done := make(chan error, 2)
	go func() {
		src := testutil.NewPattern(seed, n)
		if _, err := io.CopyN(c, src, n/2); err != nil {
			done <- fmt.Errorf("send the first half: %w", err)
			return
		}
		<-between
		if _, err := io.Copy(c, src); err != nil {
			done <- fmt.Errorf("send the second half: %w", err)
			return
		}
		done <- c.CloseWrite()
	}()
	go func() {
		// Not read until the second half: the bytes back pile up in
		// every buffer on the way, pj's pipes included.
		<-between
		h := sha256.New()
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		got, err := io.Copy(h, c)
		switch {
		case err != nil:
			done <- fmt.Errorf("read the echo after %d bytes: %w", got, err)
		case got != n:
			done <- fmt.Errorf("read %d bytes back, sent %d", got, n)
		case [32]byte(h.Sum(nil)) != testutil.PatternSum(seed, n):
			done <- errors.New("the bytes read back differ from those sent (lost, changed or reordered)")
		default:
			done <- nil
		}
	}()
	return done
}

func TestUpgradeRefusesNothingAndKeepsConnections(t *testing.T) {
	ns := listenNotify(t)
	echo := testutil.StartEcho(t)
	x, y := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	writeAtomically(t, path, fmt.Sprintf(`grace_period: 1m
admin: { listen: "127.0.0.1:0" }
proxies:
  - { name: web, listen: %q, backends: [%q] }
  - { name: other, listen: %q, backends: [%q] }
  - { name: ephemeral, listen: "127.0.0.1:0", backends: [%q] }
`, x, echo, y, echo, echo))
	u := startUpgradable(t, pjBin, []string{"NOTIFY_SOCKET=" + ns.path}, 3, "-c", path)
	admin := (&proc{stderr: u.stderr}).adminAddr(t)
	ephemeral := ""
	for _, l := range u.stderr.Lines("INFO listening proxy=ephemeral") {
		ephemeral = regexp.MustCompile(`address=(\S+)`).FindStringSubmatch(l)[1]
	}
	pings := 0
	if m := fields(ns.next(t, &pings)); m["READY"] != "1" {
		t.Fatalf("first notification %v, want READY=1", m)
	}

	// Established before the upgrade: an idle one and a stream.
	idle := testutil.Dial(t, x)
	if got := testutil.RoundTrip(t, idle, "before"); got != "before" {
		t.Fatal(got)
	}
	const n = 32 << 20
	between := make(chan struct{})
	streamed := stream(testutil.Dial(t, y), 7, n, between)

	stop := make(chan struct{})
	loop := connectLoop(x, stop)
	// Some connections before, during and after.
	testutil.WaitFor(t, 10*time.Second, "connections before the upgrade", func() bool {
		return len(u.stderr.Lines("-> "+x+" -> ")) >= 20
	})
	first := u.first.Process.Pid
	second := u.upgrade(t)
	close(between)
	afterUpgrade := len(u.stderr.Lines("-> " + x + " -> "))
	testutil.WaitFor(t, 10*time.Second, "connections after the upgrade", func() bool {
		return len(u.stderr.Lines("-> "+x+" -> ")) >= afterUpgrade+20
	})
	close(stop)
	failures, served := loop()
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed across the upgrade; first: %v", len(failures), served+len(failures), failures[0])
	}
	t.Logf("%d connections served across the upgrade", served)

	// The new process is the service's main process now.
	mainPID := ""
	testutil.WaitFor(t, 10*time.Second, "MAINPID= from the new process", func() bool {
		for {
			select {
			case m := <-ns.msgs:
				f := fields(m)
				if f["STOPPING"] == "1" {
					t.Fatalf("the old process told the service manager it stops: %q", m)
				}
				if v, ok := f["MAINPID"]; ok {
					mainPID = v
				}
			default:
				return mainPID != ""
			}
		}
	})
	if mainPID != strconv.Itoa(second) {
		t.Fatalf("MAINPID=%s, want the new process's pid %d", mainPID, second)
	}

	// Every listener, the ephemeral port and the admin listener included,
	// answers from the new process.
	for _, addr := range []string{x, y, ephemeral} {
		if err := echoOnce(addr, "new"); err != nil {
			t.Fatalf("%s after the upgrade: %v", addr, err)
		}
	}
	if code, body, err := adminGet(admin, "/readyz"); err != nil || code != 200 {
		t.Fatalf("the admin listener after the upgrade: %d %q %v", code, body, err)
	}

	// Established connections moved to the new process, unharmed: every
	// byte in both directions, in order. The old process, holding
	// nothing, has exited.
	if err := <-streamed; err != nil {
		t.Fatal(err)
	}
	if err := <-streamed; err != nil {
		t.Fatal(err)
	}
	if got := testutil.RoundTrip(t, idle, "after"); got != "after" {
		t.Fatalf("the idle connection after the upgrade: %q", got)
	}
	took := u.stderr.WaitLines(t, "took over every listener and the established connections", 1)[0]
	if m := regexp.MustCompile(` connections=(\d+) `).FindStringSubmatch(took); m == nil || m[1] == "0" {
		t.Fatalf("the new process took over no connection: %q", took)
	}
	t.Log(took)
	select {
	case <-u.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the old process did not exit once it had moved its connections")
	}
	if u.err != nil {
		t.Fatalf("the old process (pid %d): %v, want exit status 0", first, u.err)
	}

	// The moved stream's line, logged by the new process when it ended,
	// counts its bytes from the start.
	u.stderr.WaitLines(t, fmt.Sprintf("up=%d down=%d", n, n), 1)

	// A second upgrade, from the new process: the idle connection moves
	// again.
	_ = idle.SetDeadline(time.Now().Add(time.Minute))
	third := u.upgrade(t)
	waitGone(t, second)
	if err := echoOnce(x, "third"); err != nil {
		t.Fatalf("after the second upgrade: %v", err)
	}
	if got := testutil.RoundTrip(t, idle, "again"); got != "again" {
		t.Fatalf("the idle connection after the second upgrade: %q", got)
	}
	testutil.WaitFor(t, 10*time.Second, "MAINPID= from the third process", func() bool {
		for {
			select {
			case m := <-ns.msgs:
				if fields(m)["MAINPID"] == strconv.Itoa(third) {
					return true
				}
			default:
				return false
			}
		}
	})
}

func TestFailedUpgradeChangesNothing(t *testing.T) {
	echo := testutil.StartEcho(t)
	x := testutil.ClosedAddr(t)
	dir := t.TempDir()
	exe := filepath.Join(dir, "pj")
	install := func(content []byte) {
		t.Helper()
		if err := os.WriteFile(exe+".new", content, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(exe+".new", exe); err != nil {
			t.Fatal(err)
		}
	}
	real, err := os.ReadFile(pjBin)
	if err != nil {
		t.Fatal(err)
	}
	install(real)
	u := startUpgradable(t, exe, nil, 1, "-p", x+":"+echo, "--grace-period", "1m")
	idle := testutil.Dial(t, x)
	if got := testutil.RoundTrip(t, idle, "before"); got != "before" {
		t.Fatal(got)
	}

	for i, tc := range []struct {
		name, script, want string
	}{
		{"exits", "#!/bin/sh\necho 'new binary: cannot start' >&2\nexit 3\n", "exit status 3"},
		{"crashes", "#!/bin/sh\nkill -SEGV $$\n", "signal: segmentation fault"},
		{"is not pj", "#!/bin/sh\nexec cat >/dev/null\n", "waiting for its hello"},
		{"speaks another protocol version", "#!/bin/sh\nprintf '{\"type\":\"hello\",\"versions\":[99]}' | exec python3 -c 'import os,socket,sys; s=socket.socket(fileno=3); s.send(sys.stdin.buffer.read()); s.recv(100)'\n",
			"no common handover protocol version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "speaks another protocol version" {
				if _, err := exec.LookPath("python3"); err != nil {
					t.Skip("python3 is not installed")
				}
			}
			install([]byte(tc.script))
			if err := syscall.Kill(u.first.Process.Pid, syscall.SIGUSR2); err != nil {
				t.Fatal(err)
			}
			lines := u.stderr.WaitLines(t, "upgrade failed; this pj goes on serving", i+1)
			if !regexp.MustCompile(regexp.QuoteMeta(tc.want)).MatchString(lines[i]) {
				t.Fatalf("the failure says %q, want %q", lines[i], tc.want)
			}
			if err := echoOnce(x, "still"); err != nil {
				t.Fatalf("after a failed upgrade: %v", err)
			}
			if got := testutil.RoundTrip(t, idle, "still"); got != "still" {
				t.Fatalf("the established connection after a failed upgrade: %q", got)
			}
		})
	}
	if n := len(u.stderr.Lines("stopped accepting")); n != 0 {
		t.Fatal("a failed upgrade stopped the old process from accepting")
	}

	// The real binary back in place, the upgrade works.
	install(real)
	u.upgrade(t)
	if err := echoOnce(x, "new"); err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	if got := testutil.RoundTrip(t, idle, "old"); got != "old" {
		t.Fatalf("the established connection after the upgrade: %q", got)
	}
}

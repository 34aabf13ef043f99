package main

// These tests run the real pj binary, built once in TestMain, as a user
// would: signals, exit statuses, descriptors and stderr are those of a
// separate process.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

var pjBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pj-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pjBin = filepath.Join(dir, "pj")
	build := exec.Command("go", "build", "-o", pjBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build pj:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running pj process.
type proc struct {
	cmd    *exec.Cmd
	stderr *testutil.Buffer
	addrs  []string
	exited chan struct{}
	err    error // Wait's result, valid once exited is closed
}

// startPJ runs pj with args (through sh when shell is set, for ulimit) and
// waits until it has logged one listening line per mapping.
func startPJ(t *testing.T, listeners int, shell string, args ...string) *proc {
	t.Helper()
	var cmd *exec.Cmd
	if shell != "" {
		cmd = exec.Command("sh", append([]string{"-c", shell + `; exec "$0" "$@"`, pjBin}, args...)...)
	} else {
		cmd = exec.Command(pjBin, args...)
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no stray PJ_* variables
	return startCmd(t, cmd, listeners)
}

// startCmd starts cmd, a pj process with its environment set, and waits
// until it has logged listeners listening lines.
func startCmd(t *testing.T, cmd *exec.Cmd, listeners int) *proc {
	t.Helper()
	p := &proc{cmd: cmd, stderr: new(testutil.Buffer), exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("pj stderr (last lines):\n%s", tail(p.stderr.String(), 40))
		}
	})
	testutil.WaitFor(t, 10*time.Second, "pj to listen", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("pj exited before listening: %v\n%s", p.err, tail(p.stderr.String(), 40))
		default:
		}
		return len(p.stderr.Lines("INFO listening")) >= listeners
	})
	for _, l := range p.stderr.Lines("INFO listening") {
		_, after, _ := strings.Cut(l, "address=")
		addr, _, _ := strings.Cut(after, " ")
		p.addrs = append(p.addrs, addr)
	}
	return p
}

func (p *proc) pid() string { return strconv.Itoa(p.cmd.Process.Pid) }

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// exitCode waits for the process to end and returns its exit status.
func (p *proc) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("pj did not exit within 20s")
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// run runs pj to completion and returns its exit status, stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(pjBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("pj %v did not exit within 10s", args)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

func TestExitStatusesAndMessages(t *testing.T) {
	busy := testutil.Listen(t, "tcp4")
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string // prefix
		stderr     string // substring
		oneErrLine bool
	}{
		{"version flag", []string{"-V"}, 0, "pj ", "", false},
		{"version command", []string{"version"}, 0, "pj ", "", false},
		{"help", []string{"--help"}, 0, "pj listens", "", false},
		{"nothing to proxy", nil, 2, "", "Usage: pj --proxy", false},
		{"malformed mapping", []string{"-p", "0.0.0.0:8787"}, 2, "", `pj: invalid mapping "0.0.0.0:8787"`, true},
		{"malformed duration", []string{"-p", "127.0.0.1:0:127.0.0.1:9", "--grace-period", "forever"}, 2, "", "forever", true},
		{"unknown flag", []string{"--frobnicate"}, 2, "", "unknown flag: --frobnicate", true},
		{"address in use", []string{"-p", busy.Addr().String() + ":127.0.0.1:9"}, 1, "", busy.Addr().String(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			if !strings.HasPrefix(stdout, tt.stdout) {
				t.Fatalf("stdout %q, want prefix %q", stdout, tt.stdout)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("stderr %q, want %q", stderr, tt.stderr)
			}
			if tt.oneErrLine && strings.Count(stderr, "\n") != 1 {
				t.Fatalf("stderr is not one line:\n%s", stderr)
			}
		})
	}
}

func TestSIGTERMDrainsThenExitsZero(t *testing.T) {
	p := startPJ(t, 1, "", "-p", "127.0.0.1:0:"+testutil.StartEcho(t))
	c := testutil.Dial(t, p.addrs[0])
	if got := testutil.RoundTrip(t, c, "before"); got != "before" {
		t.Fatal(got)
	}
	p.signal(t, syscall.SIGTERM)
	p.stderr.WaitLines(t, "shutting down", 1)
	if nc, err := net.DialTimeout("tcp", p.addrs[0], 2*time.Second); err == nil {
		_ = nc.Close()
		t.Fatal("pj accepted a connection after SIGTERM")
	}
	if got := testutil.RoundTrip(t, c, "during"); got != "during" {
		t.Fatalf("the established connection broke during the drain: %q", got)
	}
	_ = c.Close()
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	if l := p.stderr.Lines("[ok]"); len(l) != 1 || !strings.Contains(l[0], "up=12 down=12") {
		t.Fatalf("connection lines %q", l)
	}
}

func TestGracePeriodExpiryExitsZero(t *testing.T) {
	p := startPJ(t, 1, "", "-p", "127.0.0.1:0:"+testutil.StartEcho(t), "--grace-period", "100ms")
	c := testutil.Dial(t, p.addrs[0])
	if got := testutil.RoundTrip(t, c, "held"); got != "held" {
		t.Fatal(got)
	}
	p.signal(t, syscall.SIGINT)
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	if l := p.stderr.Lines("[shutdown]"); len(l) != 1 {
		t.Fatalf("want one [shutdown] line, stderr:\n%s", p.stderr)
	}
}

func TestSecondSignalExitsOneAtOnce(t *testing.T) {
	p := startPJ(t, 1, "", "-p", "127.0.0.1:0:"+testutil.StartEcho(t), "--grace-period", "1h")
	c := testutil.Dial(t, p.addrs[0])
	if got := testutil.RoundTrip(t, c, "held"); got != "held" {
		t.Fatal(got)
	}
	p.signal(t, syscall.SIGTERM)
	p.stderr.WaitLines(t, "shutting down", 1)
	p.signal(t, syscall.SIGTERM)
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
}

func TestDescriptorsDoNotLinger(t *testing.T) {
	// Thousands of connections move data (so the relay splices through
	// pipes), hundreds at a time. Once they have all closed, an idle pj
	// must hold about as many descriptors as it did before: no pipes left
	// waiting for a garbage collection, no sockets leaked.
	const total, parallel = 3000, 200
	p := startPJ(t, 1, "", "-p", "127.0.0.1:0:"+testutil.StartEcho(t))
	base := testutil.OpenFDs(t, p.pid())

	small := strings.Repeat("x", 1<<10)
	bulk := strings.Repeat("y", 128<<10) // past the 64 KiB buffer: spliced through pipes
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	var failures sync.Map
	for i := range total {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", p.addrs[0], 10*time.Second)
			if err != nil {
				failures.Store(i, err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			msg := small
			if i%4 == 0 {
				msg = bulk
			}
			if _, err := io.WriteString(c, msg); err != nil {
				failures.Store(i, err)
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			if b, err := io.ReadAll(c); err != nil || len(b) != len(msg) {
				failures.Store(i, fmt.Errorf("echo: %d bytes, %v", len(b), err))
			}
		})
	}
	wg.Wait()
	failures.Range(func(k, v any) bool {
		t.Errorf("connection %v: %v", k, v)
		return true
	})
	p.stderr.WaitLines(t, "[ok]", total)
	// Spare pipes (at most 8 per event loop, two descriptors each) may stay
	// for reuse.
	const slack = 2*16 + 2
	var n int
	testutil.WaitFor(t, 10*time.Second, "descriptors to return to the idle level", func() bool {
		n = testutil.OpenFDs(t, p.pid())
		return n <= base+slack
	})
	t.Logf("descriptors: %d before, %d after %d connections", base, n, total)
}

func TestRunningOutOfDescriptors(t *testing.T) {
	// With only 40 descriptors pj runs out after about a dozen relayed
	// connections. It must say so (with what to do), make the next client
	// wait instead of failing it, stop accepting meanwhile, and serve
	// everyone again as soon as descriptors are free.
	echo := testutil.StartEcho(t)
	p := startPJ(t, 1, "ulimit -n 40", "-p", "127.0.0.1:0:"+echo)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	var waiting net.Conn
	for i := 0; i < 40 && waiting == nil; i++ {
		c, err := net.DialTimeout("tcp", p.addrs[0], 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err) // the kernel queues it even when pj cannot accept
		}
		// A round trip proves the connection is relayed before the next.
		_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			if !testutil.IsTimeout(err) {
				t.Fatalf("connection %d failed instead of waiting: %v", i, err)
			}
			waiting = c
			continue
		}
		held = append(held, c)
	}
	if waiting == nil {
		t.Fatal("40 connections were relayed with 40 descriptors: the limit did not apply")
	}
	line := p.stderr.WaitLines(t, "too many open files", 1)[0]
	if !strings.Contains(line, "ulimit") {
		t.Fatalf("the line %q does not say what to do", line)
	}
	for _, c := range held {
		_ = c.Close()
	}
	held = nil
	// The waiting client is served now, within the connect timeout.
	_ = waiting.SetDeadline(time.Now().Add(4 * time.Second))
	if _, err := io.ReadFull(waiting, make([]byte, 1)); err != nil {
		t.Fatalf("the waiting client was not served once descriptors were free: %v", err)
	}
	_ = waiting.Close()
	c := testutil.Dial(t, p.addrs[0])
	if got := testutil.RoundTrip(t, c, "back"); got != "back" {
		t.Fatalf("a new connection got %q", got)
	}
	if n := len(p.stderr.Lines("[connect_failed]")); n != 0 {
		t.Fatalf("%d clients failed; they should have waited", n)
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

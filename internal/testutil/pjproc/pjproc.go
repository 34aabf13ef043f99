// Package pjproc runs the real pj binary as a separate process for tests,
// as a user runs it: signals, exit statuses, descriptors, stdout and
// stderr are those of a process of its own. Main builds pj once per test
// binary; Start runs a command and stops it when the test ends, so that
// nothing a test starts outlives it.
package pjproc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// Deadlines for a busy machine running the race detector; a wait that
// runs out fails the test.
const (
	readyTimeout = 30 * time.Second
	exitTimeout  = 40 * time.Second
)

// built maps a command's name ("pj", "loadgen") to the binary Main built;
// written before the tests run, read-only after.
var built = map[string]string{}

// Main builds pj, and the commands whose import paths are in also, into a
// temporary directory; runs the package's tests; removes the directory and
// returns m.Run's status. PJ_BIN names a pj binary to test instead of
// building one. For a TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pjproc.Main(m)) }
func Main(m *testing.M, also ...string) int {
	dir, err := os.MkdirTemp("", "pj-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "pjproc:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	pkgs := also
	if given := os.Getenv("PJ_BIN"); given != "" {
		abs, err := filepath.Abs(given)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pjproc: PJ_BIN:", err)
			return 1
		}
		built["pj"] = abs
	} else {
		pkgs = append([]string{"github.com/pj-proxy/pj/cmd/pj"}, also...)
	}
	for _, pkg := range pkgs {
		out := filepath.Join(dir, path.Base(pkg))
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as released: static
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "pjproc: go build %s: %v\n%s", pkg, err, b)
			return 1
		}
		built[path.Base(pkg)] = out
	}
	return m.Run()
}

// Bin returns the binary Main built for the command named name ("pj", or
// the last element of an import path given to Main).
func Bin(name string) string { return built[name] }

// Command returns a command that runs pj with args in an environment of
// PATH alone: a PJ_* variable of the test's own must not change what pj
// does. Add to its Env what the test means pj to see.
func Command(args ...string) *exec.Cmd {
	cmd := exec.Command(Bin("pj"), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	return cmd
}

// Shell is Command run by sh after script: what the script sets (ulimit
// -n 40, LISTEN_PID=$$) is pj's, since pj then takes the shell's place
// (and pid) with exec.
func Shell(script string, args ...string) *exec.Cmd {
	cmd := exec.Command("sh", append([]string{"-c", script + `; exec "$0" "$@"`, Bin("pj")}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	return cmd
}

// A Proc is a process a test started with Start: pj, or a process the
// test needs beside it.
type Proc struct {
	Cmd *exec.Cmd
	// Stdout and Stderr are what the process (and any it passes them on
	// to) wrote, unless the Cmd sent them elsewhere.
	Stdout, Stderr *testutil.Buffer

	exited chan struct{}
	err    error         // Cmd.Wait's result, once exited is closed
	copied chan struct{} // closed once every writer of the output is gone

	mu      sync.Mutex
	adopted []int
}

// Start starts cmd and stops it when the test ends: it is killed
// (SIGKILL) and reaped, with its process group (what it started and left
// behind, such as a container's processes) and every process it handed
// over to (Adopt); and it dies with the test process should that die
// first (Pdeathsig).
//
// Stdout and Stderr not set by the caller are captured through pipes,
// which processes cmd starts may inherit: Stdout and Stderr then hold
// every generation's output.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	if cmd.Path == "" {
		t.Fatal("pjproc: no binary to run: the package's TestMain must call pjproc.Main")
	}
	p := &Proc{Cmd: cmd, Stdout: new(testutil.Buffer), Stderr: new(testutil.Buffer),
		exited: make(chan struct{}), copied: make(chan struct{})}
	type capture struct {
		r   *os.File
		buf *testutil.Buffer
	}
	var captures []capture
	var readers, writers []*os.File
	for _, out := range []struct {
		dst *io.Writer
		buf *testutil.Buffer
	}{{&cmd.Stdout, p.Stdout}, {&cmd.Stderr, p.Stderr}} {
		if *out.dst != nil {
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		// An *os.File: Wait does not wait for its other writers.
		*out.dst = w
		readers, writers = append(readers, r), append(writers, w)
		captures = append(captures, capture{r, out.buf})
	}
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			_ = f.Close()
		}
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	// A process group of its own, which the end of the test kills whole.
	cmd.SysProcAttr.Setpgid = !cmd.SysProcAttr.Setsid
	if err := cmd.Start(); err != nil {
		closeAll(readers)
		closeAll(writers)
		t.Fatalf("start %s: %v", cmd, err)
	}
	closeAll(writers)
	var copies sync.WaitGroup
	for _, c := range captures {
		copies.Go(func() { _, _ = io.Copy(c.buf, c.r) })
	}
	go func() {
		copies.Wait()
		close(p.copied)
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop(t)
		closeAll(readers)
		<-p.copied
		if t.Failed() {
			t.Logf("output of %s (last lines):\n%s", p, testutil.Tail(p.output(), 60))
		}
	})
	return p
}

// stop kills the process and those it handed over to, and waits until
// every one has exited and their output has ended (or 5 s have passed).
func (p *Proc) stop(t testing.TB) {
	t.Helper()
	// The group is the process's pid, kept from reuse while any of its
	// members lives.
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	_ = p.Cmd.Process.Kill()
	p.mu.Lock()
	adopted := append([]int(nil), p.adopted...)
	p.mu.Unlock()
	for _, pid := range adopted {
		if !gone(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL) // a pj this test's pj started
		}
	}
	<-p.exited
	for _, pid := range adopted {
		WaitGone(t, pid)
	}
	select {
	case <-p.copied:
	case <-time.After(5 * time.Second):
	}
}

// output is what the process wrote to stderr: the buffer, or the end of
// the file the Cmd sent it to.
func (p *Proc) output() string {
	f, ok := p.Cmd.Stderr.(*os.File)
	if !ok || p.Stderr.String() != "" {
		return p.Stderr.String()
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b[max(0, len(b)-16<<10):])
}

// String names the process by its pid and command line (shortened).
func (p *Proc) String() string {
	s := strings.Join(p.Cmd.Args, " ")
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return fmt.Sprintf("pid %d (%s)", p.Pid(), s)
}

// Pid is the process's pid.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to %s: %v", sig, p, err)
	}
}

// Kill ends the process at once and waits for it.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.exited
}

// Adopt makes the test answer for pid, a process this one handed over
// to (an upgrade's new pj): it is killed and waited for at the end of the
// test too.
func (p *Proc) Adopt(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.adopted = append(p.adopted, pid)
}

// Pids returns the process's pid and the adopted ones, oldest first.
func (p *Proc) Pids() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int{p.Pid()}, p.adopted...)
}

// Exited is closed once the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is what exec.Cmd.Wait returned; valid once Exited is closed.
func (p *Proc) Err() error { return p.err }

// Wait waits until the process has exited and returns what exec.Cmd.Wait
// returned; it fails the test if the process still runs after timeout.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s", p, timeout)
		return nil
	}
}

// ExitCode waits until the process has exited and its output has ended,
// and returns its exit status.
func (p *Proc) ExitCode(t testing.TB) int {
	t.Helper()
	err := p.Wait(t, exitTimeout)
	select {
	case <-p.copied:
	case <-time.After(exitTimeout):
		t.Fatalf("the output of %s did not end within %s of its exit", p, exitTimeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// Run starts cmd, waits until it has exited and returns its exit status,
// stdout and stderr.
func Run(t testing.TB, cmd *exec.Cmd) (code int, stdout, stderr string) {
	t.Helper()
	p := Start(t, cmd)
	code = p.ExitCode(t)
	return code, p.Stdout.String(), p.Stderr.String()
}

// WaitFor polls cond until it holds. It fails the test after timeout, or
// at once if the process exits first, with the end of its output.
func (p *Proc) WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, timeout, what, func() bool {
		select {
		case <-p.exited:
			t.Fatalf("%s exited (%v) before %s:\n%s", p, p.err, what, testutil.Tail(p.output(), 40))
		default:
		}
		return cond()
	})
}

// WaitListening waits until pj has logged n listening lines, one a
// proxy, and returns the addresses they name, in order.
func (p *Proc) WaitListening(t testing.TB, n int) []string {
	t.Helper()
	p.WaitFor(t, readyTimeout, fmt.Sprintf("pj to listen on %d address(es)", n), func() bool {
		return len(p.Stderr.Lines("INFO listening")) >= n
	})
	var addrs []string
	for _, l := range p.Stderr.Lines("INFO listening") {
		addrs = append(addrs, testutil.LogField(l, "address"))
	}
	return addrs
}

// Address waits for a line of pj's that contains substr ("admin
// listening") and returns the address it names.
func (p *Proc) Address(t testing.TB, substr string) string {
	t.Helper()
	return testutil.LogField(p.Stderr.WaitLines(t, substr, 1)[0], "address")
}

var state = regexp.MustCompile(`\) (\S)`)

// gone reports whether process pid has exited: it is no more, or a
// zombie, whose parent has only to reap it.
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	m := state.FindSubmatch(b)
	return m != nil && string(m[1]) == "Z"
}

// WaitGone waits until process pid, not necessarily a child of this one,
// has exited.
func WaitGone(t testing.TB, pid int) {
	t.Helper()
	testutil.WaitFor(t, exitTimeout, fmt.Sprintf("pid %d to exit", pid), func() bool { return gone(pid) })
}

package main

// These tests run the real pj binary, built once in TestMain, as a user
// would (internal/testutil/pjproc): signals, exit statuses, descriptors
// and stderr are those of a separate process.

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjproc"
)

func TestMain(m *testing.M) { os.Exit(pjproc.Main(m)) }

// startPJ starts cmd, a pj, and waits until it listens on n addresses,
// which it returns.
func startPJ(t *testing.T, n int, cmd *exec.Cmd) (*pjproc.Proc, []string) {
	t.Helper()
	p := pjproc.Start(t, cmd)
	return p, p.WaitListening(t, n)
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
			code, stdout, stderr := pjproc.Run(t, pjproc.Command(tt.args...))
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

func TestShutdownBySignal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace string
		sig   syscall.Signal
		// shuttingDown runs once pj has begun to shut down; c is a
		// connection established before.
		shuttingDown func(t *testing.T, p *pjproc.Proc, addr string, c net.Conn)
		code         int
		// The connection's log line: its status and byte counts.
		status, counts string
	}{
		{"SIGTERM drains, then exits 0", "1m", syscall.SIGTERM, func(t *testing.T, p *pjproc.Proc, addr string, c net.Conn) {
			testutil.CheckDraining(t, addr, c)
			_ = c.Close()
		}, 0, "[ok]", "up=12 down=12"},
		{"the grace period's end exits 0", "100ms", syscall.SIGINT, nil, 0, "[shutdown]", "up=6 down=6"},
		{"a second signal exits 1 at once", "1h", syscall.SIGTERM, func(t *testing.T, p *pjproc.Proc, addr string, c net.Conn) {
			p.Signal(t, syscall.SIGTERM)
		}, 1, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, addrs := startPJ(t, 1, pjproc.Command("-p", "127.0.0.1:0:"+testutil.StartEcho(t), "--grace-period", tc.grace))
			c := testutil.Dial(t, addrs[0])
			if got := testutil.RoundTrip(t, c, "before"); got != "before" {
				t.Fatal(got)
			}
			p.Signal(t, tc.sig)
			p.Stderr.WaitLines(t, "shutting down", 1)
			if tc.shuttingDown != nil {
				tc.shuttingDown(t, p, addrs[0], c)
			}
			if code := p.ExitCode(t); code != tc.code {
				t.Fatalf("exit %d, want %d", code, tc.code)
			}
			if tc.status == "" {
				return
			}
			if l := p.Stderr.Lines(tc.status); len(l) != 1 || !strings.Contains(l[0], tc.counts) {
				t.Fatalf("connection lines %q, want one %s line with %s", l, tc.status, tc.counts)
			}
		})
	}
}

func TestDescriptorsDoNotLinger(t *testing.T) {
	// Thousands of connections move data (so the relay splices through
	// pipes), hundreds at a time. Once they have all closed, an idle pj
	// must hold about as many descriptors as it did before: no pipes left
	// waiting for a garbage collection, no sockets leaked.
	const total, parallel = 3000, 200
	p, addrs := startPJ(t, 1, pjproc.Command("-p", "127.0.0.1:0:"+testutil.StartEcho(t)))
	pid := strconv.Itoa(p.Pid())
	base := testutil.OpenFDs(t, pid)

	small := strings.Repeat("x", 1<<10)
	bulk := strings.Repeat("y", 128<<10) // past the 64 KiB buffer: spliced through pipes
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	var failures sync.Map
	for i := range total {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addrs[0], 10*time.Second)
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
	p.Stderr.WaitLines(t, "[ok]", total)
	// Spare pipes (at most 8 per event loop, two descriptors each) may stay
	// for reuse.
	const slack = 2*16 + 2
	var n int
	testutil.WaitFor(t, 10*time.Second, "descriptors to return to the idle level", func() bool {
		n = testutil.OpenFDs(t, pid)
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
	p, addrs := startPJ(t, 1, pjproc.Shell("ulimit -n 40", "-p", "127.0.0.1:0:"+echo))
	held, waiting := exhaust(t, p, addrs[0])
	line := p.Stderr.WaitLines(t, "too many open files", 1)[0]
	if !strings.Contains(line, "ulimit") {
		t.Fatalf("the line %q does not say what to do", line)
	}
	for _, c := range held {
		_ = c.Close()
	}
	// The waiting client is served now, within the connect timeout.
	_ = waiting.SetDeadline(time.Now().Add(4 * time.Second))
	if _, err := io.ReadFull(waiting, make([]byte, 1)); err != nil {
		t.Fatalf("the waiting client was not served once descriptors were free: %v", err)
	}
	_ = waiting.Close()
	c := testutil.Dial(t, addrs[0])
	if got := testutil.RoundTrip(t, c, "back"); got != "back" {
		t.Fatalf("a new connection got %q", got)
	}
	if n := len(p.Stderr.Lines("[connect_failed]")); n != 0 {
		t.Fatalf("%d clients failed; they should have waited", n)
	}
}

// exhaust connects to addr, a proxy of p's to an echo backend, until p
// runs out of descriptors: until a connection's byte is not echoed and p
// has said so. It returns the connections relayed before and the one left
// waiting; the test closes them all when it ends.
func exhaust(t *testing.T, p *pjproc.Proc, addr string) (relayed []net.Conn, waiting net.Conn) {
	t.Helper()
	for i := range 40 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err) // the kernel queues it even when pj cannot accept
		}
		t.Cleanup(func() { _ = c.Close() })
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		// A round trip proves the connection is relayed before the next;
		// one that is not is waiting for a descriptor only if pj says it
		// has none left (on a busy machine it may just be slow).
		echoed, out := false, false
		testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("connection %d to be relayed, or pj to run out of descriptors", i), func() bool {
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			n, err := c.Read(make([]byte, 1))
			if err != nil && !testutil.IsTimeout(err) {
				t.Fatalf("connection %d failed instead of waiting: %v", i, err)
			}
			echoed, out = n == 1, len(p.Stderr.Lines("too many open files")) > 0
			return echoed || out
		})
		if !echoed {
			return relayed, c
		}
		relayed = append(relayed, c)
	}
	t.Fatal("40 connections were relayed: the descriptor limit did not apply")
	return nil, nil
}

package cli

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// instance is pj running in-process through Run, as the binary would.
type instance struct {
	addrs  []string
	log    *testutil.Buffer
	cancel context.CancelCauseFunc
	done   chan error
}

// start runs pj with args and the given PJ_* variables and waits until it
// listens. The instance is stopped at the end of the test.
func start(t *testing.T, env map[string]string, args ...string) *instance {
	t.Helper()
	inst, err := tryStart(t, env, args...)
	if err != nil {
		t.Fatalf("pj %s: %v", strings.Join(args, " "), err)
	}
	return inst
}

func tryStart(t *testing.T, env map[string]string, args ...string) (*instance, error) {
	t.Helper()
	return tryStartWith(t, nil, nil, env, args...)
}

// tryStartWith is tryStart with stderr (the log) going to w as well as to
// the instance's log buffer, and more options.
func tryStartWith(t *testing.T, w io.Writer, opts []Option, env map[string]string, args ...string) (*instance, error) {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	inst := &instance{log: new(testutil.Buffer), cancel: cancel, done: make(chan error, 1)}
	ready := make(chan []net.Addr, 1)
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var stderr io.Writer = inst.log
	if w != nil {
		stderr = io.MultiWriter(w, inst.log)
	}
	opts = append([]Option{WithLookupEnv(lookup), WithListening(func(a []net.Addr) { ready <- a })}, opts...)
	go func() {
		inst.done <- Run(ctx, args, io.Discard, stderr, opts...)
	}()
	select {
	case addrs := <-ready:
		for _, a := range addrs {
			inst.addrs = append(inst.addrs, a.String())
		}
		t.Cleanup(func() { inst.stop(t) })
		return inst, nil
	case err := <-inst.done:
		cancel(nil)
		return nil, err
	case <-time.After(10 * time.Second):
		cancel(nil)
		t.Fatal("pj did not start listening within 10s")
		return nil, nil
	}
}

// stop cancels Run as a first SIGTERM would and returns what it returned.
func (p *instance) stop(t *testing.T) error {
	t.Helper()
	p.cancel(errors.New("test over"))
	select {
	case err, ok := <-p.done:
		if ok {
			close(p.done)
		}
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("pj did not stop within 20s of cancellation")
		return nil
	}
}

var textLine = regexp.MustCompile(`^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] (\S+) -> (\S+) -> (\S+) \[(\w+)\] duration=(\S+) up=(\d+) down=(\d+)(.*)$`)

func TestEchoAndTextLogLine(t *testing.T) {
	echo := testutil.StartEcho(t)
	p := start(t, nil, "-p", "127.0.0.1:0:"+echo)
	c := testutil.Dial(t, p.addrs[0])
	if got := testutil.RoundTrip(t, c, "hello"); got != "hello" {
		t.Fatalf("echo = %q", got)
	}
	if _, err := io.WriteString(c, "world!"); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	if got := testutil.ReadAll(t, c); got != "world!" {
		t.Fatalf("after half-close: %q", got)
	}
	line := p.log.WaitLines(t, "[ok]", 1)[0]
	m := textLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("log line %q does not match the documented layout", line)
	}
	if m[1] != c.LocalAddr().String() || m[2] != p.addrs[0] || m[3] != echo {
		t.Fatalf("addresses in %q: want %s -> %s -> %s", line, c.LocalAddr(), p.addrs[0], echo)
	}
	if m[6] != "11" || m[7] != "11" {
		t.Fatalf("line %q: want up=11 down=11", line)
	}
	// The client half-closed first: the access log says who ended it and
	// how long the backend took to answer.
	if !regexp.MustCompile(`^ connect=[0-9.]+(µs|ms|s) closed_by=client$`).MatchString(m[8]) {
		t.Fatalf("line %q: want connect=DURATION closed_by=client after the counts", line)
	}
	if _, err := time.ParseDuration(strings.ReplaceAll(m[5], "µ", "u")); err != nil {
		t.Fatalf("duration %q: %v", m[5], err)
	}
	if l := p.log.Lines("INFO listening"); len(l) != 1 || !strings.Contains(l[0], "address="+p.addrs[0]) || !strings.Contains(l[0], "backends="+echo) {
		t.Fatalf("start-up lines %q: want one naming the bound address and the backend", l)
	}
}

func TestJSONLogLine(t *testing.T) {
	echo := testutil.StartEcho(t)
	p := start(t, nil, "-p", "127.0.0.1:0:"+echo, "--log-format", "json")
	if got := testutil.SendAndRead(t, p.addrs[0], "0123456789"); got != "0123456789" {
		t.Fatalf("echo = %q", got)
	}
	line := p.log.WaitLines(t, `"msg":"connection"`, 1)[0]
	var rec map[string]any
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("not JSON: %q: %v", line, err)
	}
	for k, want := range map[string]any{
		"listener": p.addrs[0], "backend": echo, "status": "ok",
		"bytes_up": 10.0, "bytes_down": 10.0, "level": "INFO",
	} {
		if rec[k] != want {
			t.Errorf("%s = %v, want %v (line %s)", k, rec[k], want, line)
		}
	}
	if _, err := time.Parse(time.RFC3339, rec["time"].(string)); err != nil {
		t.Errorf("time %v: %v", rec["time"], err)
	}
	if _, ok := rec["duration_ms"].(float64); !ok {
		t.Errorf("duration_ms = %v, want a number", rec["duration_ms"])
	}
	if !strings.HasPrefix(rec["client"].(string), "127.0.0.1:") {
		t.Errorf("client = %v", rec["client"])
	}
}

func TestBulkBothWaysExactCounts(t *testing.T) {
	const n = 64 << 20
	// The backend hashes what it receives while it sends its own stream.
	// Only the connection that carried all n bytes reports: a stray connection
	// from another process on the machine must neither be taken for pj's nor
	// block the backend's shutdown.
	type sums struct{ got [32]byte }
	received := make(chan sums, 1)
	// Only pj's connection may reach the backend, and only the test's
	// pj: a stray one would fill received, and block the real one.
	ln := testutil.ListenSecluded(t)
	testutil.Serve(t, ln, func(c net.Conn) {
		var wg sync.WaitGroup
		wg.Go(func() {
			_, _ = io.Copy(c, testutil.NewPattern(2, n))
			_ = c.(*net.TCPConn).CloseWrite()
		})
		h := sha256.New()
		if got, _ := io.Copy(h, c); got == n {
			var s sums
			copy(s.got[:], h.Sum(nil))
			select {
			case received <- s:
			default:
			}
		}
		wg.Wait()
	})
	p := start(t, nil, "-p", testutil.SecludedAddr(t)+":"+ln.Addr().String())
	c := testutil.Dial(t, p.addrs[0])
	go func() {
		_, _ = io.Copy(c, testutil.NewPattern(1, n))
		_ = c.CloseWrite()
	}()
	h := sha256.New()
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if got, err := io.Copy(h, c); err != nil || got != n {
		t.Fatalf("client received %d bytes, %v; want %d", got, err, n)
	}
	if [32]byte(h.Sum(nil)) != testutil.PatternSum(2, n) {
		t.Fatal("backend → client bytes were altered")
	}
	select {
	case s := <-received:
		if s.got != testutil.PatternSum(1, n) {
			t.Fatal("client → backend bytes were altered")
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("the backend never received all %d bytes from the client", n)
	}
	line := p.log.WaitLines(t, "[ok]", 1)[0]
	want := " up=" + strconv.Itoa(n) + " down=" + strconv.Itoa(n)
	if !strings.Contains(line, want) {
		t.Fatalf("log line %q: want %q", line, want)
	}
}

func TestSeveralMappingsInOneProcess(t *testing.T) {
	a, b := testutil.Identify(t, "alpha"), testutil.Identify(t, "beta")
	p := start(t, nil, "-p", "127.0.0.1:0:"+a, "--proxy", "127.0.0.1:0:"+b)
	if len(p.addrs) != 2 {
		t.Fatalf("listeners = %v", p.addrs)
	}
	for i, want := range []string{"alpha", "beta"} {
		if got := testutil.SendAndRead(t, p.addrs[i], ""); got != want {
			t.Fatalf("listener %d answered %q, want %q", i, got, want)
		}
	}
}

func TestIPv6BothSides(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("::1 is unavailable on this machine: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	testutil.Serve(t, ln, testutil.Echo)
	p := start(t, nil, "-p", "[::1]:0:"+ln.Addr().String())
	if !strings.HasPrefix(p.addrs[0], "[::1]:") {
		t.Fatalf("bound %s, want [::1]:port", p.addrs[0])
	}
	if got := testutil.SendAndRead(t, p.addrs[0], "six"); got != "six" {
		t.Fatalf("echo over IPv6 = %q", got)
	}
	line := p.log.WaitLines(t, "[ok]", 1)[0]
	if !strings.HasPrefix(strings.SplitN(line, "] ", 2)[1], "[::1]:") {
		t.Fatalf("client address in %q is not IPv6", line)
	}
}

func TestHostnamesOnBothSides(t *testing.T) {
	echo := testutil.StartEcho(t)
	_, port, _ := net.SplitHostPort(echo)
	p := start(t, nil, "-p", "localhost:0:localhost:"+port)
	if got := testutil.SendAndRead(t, p.addrs[0], "by name"); got != "by name" {
		t.Fatalf("echo through a named backend = %q", got)
	}
	// The name was resolved: the line shows the address that answered.
	if l := p.log.WaitLines(t, "[ok]", 1); !strings.Contains(l[0], "-> "+echo+" [ok]") {
		t.Fatalf("log line %q, want backend %s", l[0], echo)
	}
}

func TestListenPortZeroIsLogged(t *testing.T) {
	p := start(t, nil, "-p", "127.0.0.1:0:"+testutil.StartEcho(t))
	_, port, _ := net.SplitHostPort(p.addrs[0])
	if port == "0" {
		t.Fatalf("bound address %s kept port 0", p.addrs[0])
	}
	p.log.WaitLines(t, "INFO listening", 1)
	if len(p.log.Lines("address="+p.addrs[0])) != 1 {
		t.Fatalf("the start-up line does not show the real port:\n%s", p.log)
	}
}

func TestStartupIsAllOrNothing(t *testing.T) {
	busy := testutil.Listen(t, "tcp4")
	free := testutil.ClosedAddr(t)
	echo := testutil.StartEcho(t)
	_, err := tryStart(t, nil, "-p", free+":"+echo, "-p", busy.Addr().String()+":"+echo)
	if err == nil || ExitCode(err) != 1 {
		t.Fatalf("err = %v (exit %d), want a start-up failure with exit 1", err, ExitCode(err))
	}
	for _, want := range []string{busy.Addr().String(), "address already in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %q", err, want)
		}
	}
	// The first mapping was bound before the second failed: it must have
	// been closed again.
	ln, lerr := net.Listen("tcp4", free)
	if lerr != nil {
		t.Fatalf("%s is still taken after the failed start: %v", free, lerr)
	}
	_ = ln.Close()
}

func TestUnreachableBackendClosesClientAndServingGoesOn(t *testing.T) {
	dead := testutil.ClosedAddr(t)
	p := start(t, nil, "-p", "127.0.0.1:0:"+dead, "-p", "127.0.0.1:0:"+testutil.StartEcho(t))
	for range 3 {
		c := testutil.Dial(t, p.addrs[0])
		if got := testutil.ReadAll(t, c); got != "" {
			t.Fatalf("read %q from a proxy whose backend is down", got)
		}
	}
	lines := p.log.WaitLines(t, "[connect_failed]", 3)
	if !strings.Contains(lines[0], "-> "+dead+" [connect_failed]") || !strings.Contains(lines[0], "connection refused") {
		t.Fatalf("log line %q: want the dead backend and the reason", lines[0])
	}
	if got := testutil.SendAndRead(t, p.addrs[1], "still here"); got != "still here" {
		t.Fatalf("the other mapping answered %q", got)
	}
}

func TestConnectTimeoutBoundsABlackHoledBackend(t *testing.T) {
	hole := testutil.SilentAddr(t)
	p := start(t, nil, "-p", "127.0.0.1:0:"+hole, "--connect-timeout", "200ms")
	c := testutil.Dial(t, p.addrs[0])
	// The client must be closed after the connect timeout (200ms), long
	// before this read's own deadline.
	_ = c.SetReadDeadline(time.Now().Add(4 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read = %v, want EOF from pj giving up on the backend", err)
	}
	line := p.log.WaitLines(t, "[connect_failed]", 1)[0]
	if !strings.Contains(line, "timeout") {
		t.Fatalf("log line %q does not say the connect timed out", line)
	}
}

func TestFailoverWithinTheClientConnection(t *testing.T) {
	dead := testutil.ClosedAddr(t)
	alive := testutil.Identify(t, "alive")
	p := start(t, nil, "-p", "127.0.0.1:0:"+dead+","+alive)
	for i := range 6 {
		if got := testutil.SendAndRead(t, p.addrs[0], ""); got != "alive" {
			t.Fatalf("connection %d got %q: the client saw the dead backend", i, got)
		}
	}
	if n := len(p.log.WaitLines(t, "-> "+alive+" [ok]", 6)); n != 6 {
		t.Fatalf("%d ok lines for the live backend, want 6", n)
	}
}

func TestRoundRobin(t *testing.T) {
	names := []string{"a", "b", "c"}
	var backends []string
	for _, n := range names {
		backends = append(backends, testutil.Identify(t, n))
	}
	p := start(t, nil, "-p", "127.0.0.1:0:"+strings.Join(backends, ","))
	counts := map[string]int{}
	for range 9 {
		counts[testutil.SendAndRead(t, p.addrs[0], "")]++
	}
	for _, n := range names {
		if counts[n] != 3 {
			t.Fatalf("distribution %v, want 3 each", counts)
		}
	}
}

func TestManyConcurrentConnections(t *testing.T) {
	const conns = 300
	p := start(t, nil, "-p", "127.0.0.1:0:"+testutil.StartEcho(t))
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", p.addrs[0], 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			msg := strings.Repeat(strconv.Itoa(i%10), 1024)
			if _, err := io.WriteString(c, msg); err != nil {
				errs <- err
				return
			}
			_ = c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != msg {
				errs <- errors.New("connection " + strconv.Itoa(i) + ": wrong echo")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(p.log.WaitLines(t, "up=1024 down=1024", conns)); n != conns {
		t.Fatalf("%d log lines, want %d", n, conns)
	}
}

func TestIdleTimeoutThroughTheProxy(t *testing.T) {
	p := start(t, nil, "-p", "127.0.0.1:0:"+testutil.StartEcho(t), "--idle-timeout", "100ms")
	c := testutil.Dial(t, p.addrs[0])
	if got := testutil.RoundTrip(t, c, "x"); got != "x" {
		t.Fatal(got)
	}
	if got := testutil.ReadAll(t, c); got != "" {
		t.Fatalf("read %q", got)
	}
	if l := p.log.WaitLines(t, "[timeout]", 1); !strings.Contains(l[0], "up=1 down=1") {
		t.Fatalf("log line %q", l[0])
	}
}

func TestShutdown(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace string
		// shuttingDown runs once pj has begun to shut down; c is a
		// connection established before.
		shuttingDown func(t *testing.T, p *instance, c *net.TCPConn)
		// The connection's log line: its status and byte counts.
		status, counts string
	}{
		{"drains established connections", "1m", func(t *testing.T, p *instance, c *net.TCPConn) {
			testutil.CheckDraining(t, p.addrs[0], c)
			// Run returns once the last connection has ended.
			_ = c.CloseWrite()
			testutil.ReadAll(t, c)
		}, "[ok]", "up=12 down=12"},
		{"the grace period's end cuts connections", "50ms", func(t *testing.T, p *instance, c *net.TCPConn) {
			if got := testutil.ReadAll(t, c); got != "" {
				t.Fatalf("read %q", got)
			}
			p.log.WaitLines(t, "grace period over", 1)
		}, "[shutdown]", "up=6 down=6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, nil, "-p", "127.0.0.1:0:"+testutil.StartEcho(t), "--grace-period", tc.grace)
			c := testutil.Dial(t, p.addrs[0])
			if got := testutil.RoundTrip(t, c, "before"); got != "before" {
				t.Fatal(got)
			}
			p.cancel(errors.New("SIGTERM received"))
			p.log.WaitLines(t, "shutting down", 1)
			tc.shuttingDown(t, p, c)
			if err := p.stop(t); err != nil {
				t.Fatalf("Run = %v, want nil (exit 0)", err)
			}
			if l := p.log.WaitLines(t, tc.status, 1); !strings.Contains(l[0], tc.counts) {
				t.Fatalf("log line %q, want %s", l[0], tc.counts)
			}
		})
	}
}

func TestLogLevels(t *testing.T) {
	echo := testutil.StartEcho(t)
	t.Run("warn hides connection lines", func(t *testing.T) {
		p := start(t, nil, "-p", "127.0.0.1:0:"+echo, "--log-level", "warn")
		testutil.SendAndRead(t, p.addrs[0], "x")
		_ = p.stop(t)
		if strings.Contains(p.log.String(), "[ok]") || strings.Contains(p.log.String(), "INFO") {
			t.Fatalf("info records at level warn:\n%s", p.log)
		}
	})
	t.Run("debug shows the data path", func(t *testing.T) {
		p := start(t, nil, "-p", "127.0.0.1:0:"+echo, "--log-level", "debug")
		// Bulk data between two plain TCP sockets must be spliced, never
		// copied through user space; a small message is copied (cheaper
		// than a pipe round trip for a few bytes).
		bulk := strings.Repeat("b", 1<<20)
		if got := testutil.SendAndRead(t, p.addrs[0], bulk); got != bulk {
			t.Fatal("bulk echo mismatch")
		}
		if l := p.log.WaitLines(t, "[ok]", 1); !strings.HasSuffix(l[0], " relay=splice") {
			t.Fatalf("log line %q: want relay=splice", l[0])
		}
		testutil.SendAndRead(t, p.addrs[0], "x")
		if l := p.log.WaitLines(t, "[ok]", 2); !strings.HasSuffix(l[1], "closed_by=client relay=copy") || !strings.Contains(l[1], "up=1 down=1 ") {
			t.Fatalf("log line %q: want relay=copy", l[1])
		}
	})
}

func TestEnvironmentVariables(t *testing.T) {
	a, b := testutil.Identify(t, "a"), testutil.Identify(t, "b")
	t.Run("PJ_PROXY holds several mappings", func(t *testing.T) {
		p := start(t, map[string]string{"PJ_PROXY": "127.0.0.1:0:" + a + ";\n 127.0.0.1:0:" + b + "\n"})
		if len(p.addrs) != 2 || testutil.SendAndRead(t, p.addrs[0], "") != "a" || testutil.SendAndRead(t, p.addrs[1], "") != "b" {
			t.Fatalf("listeners %v", p.addrs)
		}
	})
	t.Run("a flag wins over its variable", func(t *testing.T) {
		p := start(t, map[string]string{"PJ_PROXY": "127.0.0.1:0:" + a, "PJ_LOG_FORMAT": "json"},
			"-p", "127.0.0.1:0:"+b, "--log-format", "text")
		if len(p.addrs) != 1 || testutil.SendAndRead(t, p.addrs[0], "") != "b" {
			t.Fatal("PJ_PROXY was used although -p was given")
		}
		if strings.Contains(p.log.String(), "{") {
			t.Fatalf("json logs although --log-format text was given:\n%s", p.log)
		}
	})
	t.Run("variables set flags", func(t *testing.T) {
		p := start(t, map[string]string{"PJ_PROXY": "127.0.0.1:0:" + a, "PJ_LOG_FORMAT": "json", "PJ_IDLE_TIMEOUT": "1h"})
		testutil.SendAndRead(t, p.addrs[0], "")
		p.log.WaitLines(t, `"status":"ok"`, 1)
	})
}

func TestUsageErrors(t *testing.T) {
	echo := "127.0.0.1:9"
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"nothing to proxy", nil, nil, []string{"nothing to proxy"}},
		{"bad mapping", nil, []string{"-p", "127.0.0.1:8080"}, []string{`"127.0.0.1:8080"`, "expected"}},
		{"unknown flag", nil, []string{"--bogus"}, []string{"unknown flag: --bogus"}},
		{"bad duration", nil, []string{"-p", "127.0.0.1:0:" + echo, "--connect-timeout", "fast"}, []string{"fast", "connect-timeout"}},
		{"zero connect timeout", nil, []string{"-p", "127.0.0.1:0:" + echo, "--connect-timeout", "0s"}, []string{"connect timeout"}},
		{"negative idle timeout", nil, []string{"-p", "127.0.0.1:0:" + echo, "--idle-timeout", "-1s"}, []string{"idle timeout"}},
		{"unknown balance", nil, []string{"-p", "127.0.0.1:0:" + echo, "--balance", "fastest"}, []string{`"fastest"`, "round-robin"}},
		{"bad log format", nil, []string{"-p", "127.0.0.1:0:" + echo, "--log-format", "xml"}, []string{`"xml"`, "text or json"}},
		{"bad log level", nil, []string{"-p", "127.0.0.1:0:" + echo, "--log-level", "loud"}, []string{`"loud"`}},
		{"stray argument", nil, []string{"127.0.0.1:0:" + echo}, []string{"unknown command or argument"}},
		{"duplicate listen", nil, []string{"-p", "127.0.0.1:8080:10.0.0.1:80", "-p", "127.0.0.1:8080:10.0.0.2:80"},
			[]string{"127.0.0.1:8080:10.0.0.1:80,10.0.0.2:80"}},
		{"bad variable", map[string]string{"PJ_CONNECT_TIMEOUT": "soon"}, []string{"-p", "127.0.0.1:0:" + echo}, []string{"PJ_CONNECT_TIMEOUT", "soon"}},
		{"bad PJ_PROXY", map[string]string{"PJ_PROXY": "nonsense"}, nil, []string{"PJ_PROXY", `"nonsense"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			var stderr testutil.Buffer
			err := Run(context.Background(), tt.args, io.Discard, &stderr, WithLookupEnv(lookup),
				WithListening(func([]net.Addr) { t.Error("pj started listening") }))
			if code := ExitCode(err); code != 2 {
				t.Fatalf("exit %d (%v), want 2", code, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is not one line", err)
			}
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	for _, args := range [][]string{{"-V"}, {"--version"}, {"version"}} {
		var out strings.Builder
		if err := Run(context.Background(), args, &out, io.Discard); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.HasPrefix(out.String(), "pj ") {
			t.Fatalf("%v printed %q, want a first line 'pj VERSION'", args, out.String())
		}
		for _, key := range []string{"\ncommit: ", "\nbuilt: ", "\ngo: go1.", "\nplatform: linux/"} {
			if !strings.Contains(out.String(), key) {
				t.Errorf("%v printed %q, want a line %q", args, out.String(), strings.TrimPrefix(key, "\n"))
			}
		}
	}
	for _, args := range [][]string{{"-h"}, {"--help"}} {
		var out strings.Builder
		if err := Run(context.Background(), args, &out, io.Discard); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, flag := range []string{"--proxy", "--balance", "--connect-timeout", "--idle-timeout", "--grace-period", "--log-format", "--log-level", "--version"} {
			if !strings.Contains(out.String(), flag) {
				t.Errorf("%v does not document %s", args, flag)
			}
		}
	}
}

func TestOriginalExamplesParse(t *testing.T) {
	// The three examples of the original README, verbatim.
	for _, mappings := range [][]string{
		{"0.0.0.0:8787:127.0.0.1:22"},
		{"0.0.0.0:8787:127.0.0.1:22", "0.0.0.0:8080:127.0.0.1:80"},
		{"0.0.0.0:8080:172.17.0.2:80"},
	} {
		f := &flags{cfg: config.Default(), proxies: mappings}
		cfg, err := f.config()
		if err != nil {
			t.Fatalf("%v: %v", mappings, err)
		}
		for i, m := range mappings {
			p := cfg.Proxies[i]
			if got := p.Listen + ":" + p.Backends[0].Address; got != m {
				t.Fatalf("%s parsed as %s", m, got)
			}
		}
	}
}

func TestAdminFlagAndTokenVariable(t *testing.T) {
	echo := testutil.StartEcho(t)
	p := start(t, map[string]string{"PJ_ADMIN_TOKEN": "t0ken"}, "-p", "127.0.0.1:0:"+echo, "--admin", "127.0.0.1:0")
	line := p.log.WaitLines(t, "INFO admin listening", 1)[0]
	addr := testutil.LogField(line, "address")
	if !strings.Contains(line, "token=true") {
		t.Fatalf("admin line %q: PJ_ADMIN_TOKEN was not used", line)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	_ = resp.Body.Close()
	req, _ := http.NewRequest("DELETE", "http://"+addr+"/api/v1/connections/c1", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 401 {
		t.Fatalf("DELETE without the token: %v %v, want 401", resp, err)
	}
	_ = resp.Body.Close()
}

func TestWatchKeyInTheFile(t *testing.T) {
	// "watch: true" in the file does what --watch does.
	a, b := testutil.Identify(t, "a"), testutil.Identify(t, "b")
	x := testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	write := func(backend string) {
		testutil.WriteAtomically(t, path, fmt.Sprintf("watch: true\nproxies:\n  - name: web\n    listen: %q\n    backends: [%q]\n", x, backend))
	}
	write(a)
	p := start(t, nil, "-c", path)
	if got, err := testutil.Ask(x); err != nil || got != "a" {
		t.Fatalf("answered %q, %v", got, err)
	}
	write(b)
	testutil.WaitFor(t, 10*time.Second, "the changed file to be applied", func() bool {
		got, err := testutil.Ask(x)
		return err == nil && got == "b"
	})
	p.log.WaitLines(t, `trigger="file changed"`, 1)
}

func TestAdminHostsFromTheFile(t *testing.T) {
	// A name the operator reaches the admin listener by (Prometheus
	// scraping pj.example.net:9090) is listed in admin.hosts; any other
	// name is refused, as a rebound one would be. A reload changes the
	// list.
	echo := testutil.StartEcho(t)
	file := filepath.Join(t.TempDir(), "pj.yaml")
	write := func(hosts string) {
		text := fmt.Sprintf("admin: { listen: '127.0.0.1:0', hosts: %s }\nproxies: [{listen: '127.0.0.1:0', backends: [%q]}]\n", hosts, echo)
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`["pj.example.net", "Metrics.Example.Net."]`)
	reload := make(chan struct{}, 1)
	inst, err := tryStartWith(t, nil, []Option{WithReload(reload)}, nil, "-c", file)
	if err != nil {
		t.Fatal(err)
	}
	status := func(host string) int {
		t.Helper()
		line := inst.log.Lines("INFO admin listening")
		addr := testutil.LogField(line[len(line)-1], "address")
		req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	inst.log.WaitLines(t, "INFO admin listening", 1)
	for host, want := range map[string]int{"pj.example.net:9090": 200, "metrics.example.net": 200, "evil.example:9090": 403, "localhost:9090": 200} {
		if got := status(host); got != want {
			t.Errorf("Host %q: %d, want %d", host, got, want)
		}
	}
	write(`["evil.example"]`)
	reload <- struct{}{}
	inst.log.WaitLines(t, "INFO admin listening", 2)
	if got := status("evil.example:9090"); got != 200 {
		t.Errorf("after the reload, a listed name: %d, want 200", got)
	}
	if got := status("pj.example.net"); got != 403 {
		t.Errorf("after the reload, a name no longer listed: %d, want 403", got)
	}

	if _, err := load(t, nil, "-c", testutil.WriteFile(t, "bad.yaml", "admin: { hosts: ['a b', 'x:80', ''] }\nproxies: [{listen: '127.0.0.1:0', backends: ['127.0.0.1:1']}]\n")); err == nil ||
		!strings.Contains(err.Error(), "admin.hosts[0]") || !strings.Contains(err.Error(), "admin.hosts[1]") || !strings.Contains(err.Error(), "admin.hosts[2]") {
		t.Errorf("bad names: %v; want each refused with its place", err)
	}
}

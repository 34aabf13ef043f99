package main

// Upgrades (SIGUSR2) with the real binary: the new process takes over
// every listening socket while clients connect, established connections
// finish in the old one, a binary that fails changes nothing, and the new
// process becomes the service manager's main process.

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjproc"
)

// startUpgradable starts exe, a pj, with args and waits until it listens
// on n addresses. The processes it upgrades to inherit its stderr: every
// generation logs into the one p.Stderr.
func startUpgradable(t *testing.T, exe string, n int, args ...string) *pjproc.Proc {
	t.Helper()
	cmd := pjproc.Command(args...)
	cmd.Path, cmd.Args[0] = exe, exe
	p, _ := startPJ(t, n, cmd)
	return p
}

var handedOverTo = regexp.MustCompile(`the new process serves every listener.* pid=(\d+)`)

// upgradeNewest sends SIGUSR2 to the newest generation of p and returns the new
// one's pid once the old one has handed over.
func upgradeNewest(t *testing.T, p *pjproc.Proc) int {
	t.Helper()
	pids := p.Pids()
	pid, n := pids[len(pids)-1], len(pids)
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	lines := p.Stderr.WaitLines(t, "the new process serves every listener", n)
	m := handedOverTo.FindStringSubmatch(lines[n-1])
	if m == nil {
		t.Fatalf("no pid in %q", lines[n-1])
	}
	next, _ := strconv.Atoi(m[1])
	p.Adopt(next)
	p.Stderr.WaitLines(t, "upgrade: took over every listener", n)
	return next
}

// connectLoop runs clients clients, each calling try (with a message of
// its own) at most max times, until stop is closed (never if nil). The
// func it returns waits for them and returns the failures and the number
// of tries that succeeded.
func connectLoop(clients, max int, stop <-chan struct{}, try func(msg string) error) func() ([]error, int) {
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
				err := try(fmt.Sprintf("c%d-%d", i, j))
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

// echoOnce connects to addr, an echo backend through pj, and checks one
// round trip of msg.
func echoOnce(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return roundTrip(c, msg)
}

// roundTrip writes msg to c, an echo, and checks that it comes back.
func roundTrip(c net.Conn, msg string) error {
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
	testutil.WriteAtomically(t, path, fmt.Sprintf(`grace_period: 1m
admin: { listen: "127.0.0.1:0" }
proxies:
  - { name: web, listen: %q, backends: [%q] }
  - { name: other, listen: %q, backends: [%q] }
  - { name: ephemeral, listen: "127.0.0.1:0", backends: [%q] }
`, x, echo, y, echo, echo))
	cmd := pjproc.Command("-c", path)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+ns.path)
	u, _ := startPJ(t, 3, cmd)
	admin := u.Address(t, "admin listening")
	ephemeral := ""
	for _, l := range u.Stderr.Lines("INFO listening proxy=ephemeral") {
		ephemeral = testutil.LogField(l, "address")
	}
	ns.expect(t, "first notification", "READY=1")

	// Established before the upgrade: an idle one and a stream.
	idle := testutil.Dial(t, x)
	if got := testutil.RoundTrip(t, idle, "before"); got != "before" {
		t.Fatal(got)
	}
	const n = 32 << 20
	between := make(chan struct{})
	streamed := stream(testutil.Dial(t, y), 7, n, between)

	stop := make(chan struct{})
	loop := connectLoop(4, 3000, stop, func(msg string) error { return echoOnce(x, msg) })
	// Some connections before, during and after.
	testutil.WaitFor(t, 10*time.Second, "connections before the upgrade", func() bool {
		return len(u.Stderr.Lines("-> "+x+" -> ")) >= 20
	})
	first := u.Pid()
	second := upgradeNewest(t, u)
	close(between)
	afterUpgrade := len(u.Stderr.Lines("-> " + x + " -> "))
	testutil.WaitFor(t, 10*time.Second, "connections after the upgrade", func() bool {
		return len(u.Stderr.Lines("-> "+x+" -> ")) >= afterUpgrade+20
	})
	close(stop)
	failures, served := loop()
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed across the upgrade; first: %v", len(failures), served+len(failures), failures[0])
	}
	t.Logf("%d connections served across the upgrade", served)

	// The new process is the service's main process now.
	mainPID := ""
	ns.waitFor(t, "MAINPID= from the new process", func(m string) bool {
		f := fields(m)
		if f["STOPPING"] == "1" {
			t.Fatalf("the old process told the service manager it stops: %q", m)
		}
		mainPID = f["MAINPID"]
		return mainPID != ""
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
	took := u.Stderr.WaitLines(t, "took over every listener and the established connections", 1)[0]
	if m := regexp.MustCompile(` connections=(\d+) `).FindStringSubmatch(took); m == nil || m[1] == "0" {
		t.Fatalf("the new process took over no connection: %q", took)
	}
	t.Log(took)
	// The old process exits once it has moved its connections.
	if err := u.Wait(t, 20*time.Second); err != nil {
		t.Fatalf("the old process (pid %d): %v, want exit status 0", first, err)
	}

	// The moved stream's line, logged by the new process when it ended,
	// counts its bytes from the start.
	u.Stderr.WaitLines(t, fmt.Sprintf("up=%d down=%d", n, n), 1)

	// A second upgrade, from the new process: the idle connection moves
	// again.
	_ = idle.SetDeadline(time.Now().Add(time.Minute))
	third := upgradeNewest(t, u)
	pjproc.WaitGone(t, second)
	if err := echoOnce(x, "third"); err != nil {
		t.Fatalf("after the second upgrade: %v", err)
	}
	if got := testutil.RoundTrip(t, idle, "again"); got != "again" {
		t.Fatalf("the idle connection after the second upgrade: %q", got)
	}
	ns.waitFor(t, "MAINPID= from the third process", func(m string) bool {
		return fields(m)["MAINPID"] == strconv.Itoa(third)
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
	real, err := os.ReadFile(pjproc.Bin("pj"))
	if err != nil {
		t.Fatal(err)
	}
	install(real)
	u := startUpgradable(t, exe, 1, "-p", x+":"+echo, "--grace-period", "1m")
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
			u.Signal(t, syscall.SIGUSR2)
			lines := u.Stderr.WaitLines(t, "upgrade failed; this pj goes on serving", i+1)
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
	if n := len(u.Stderr.Lines("stopped accepting")); n != 0 {
		t.Fatal("a failed upgrade stopped the old process from accepting")
	}

	// The real binary back in place, the upgrade works.
	install(real)
	upgradeNewest(t, u)
	if err := echoOnce(x, "new"); err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	if got := testutil.RoundTrip(t, idle, "old"); got != "old" {
		t.Fatalf("the established connection after the upgrade: %q", got)
	}
}

// upgradeConns is how many established connections
// TestUpgradeMovesEstablishedConnections moves: PJ_UPGRADE_CONNS, or a
// number the default test run makes quickly (make upgrade-soak moves
// 1000, and prints the pause they saw).
func upgradeConns(t *testing.T) int {
	if v := os.Getenv("PJ_UPGRADE_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("PJ_UPGRADE_CONNS=%q: want a positive number", v)
		}
		return n
	}
	return 200
}

var tookOverLine = regexp.MustCompile(` connections=(\d+) .*pause_p50=(\S+) pause_p99=(\S+) pause_max=(\S+)`)

func TestUpgradeMovesEstablishedConnections(t *testing.T) {
	n := upgradeConns(t)
	echo := testutil.StartEcho(t)
	x := testutil.ClosedAddr(t)
	u, _ := startPJ(t, 1, pjproc.Command("-p", x+":"+echo, "--grace-period", "1m"))

	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = testutil.Dial(t, x)
		_ = conns[i].SetDeadline(time.Now().Add(2 * time.Minute))
		if err := roundTrip(conns[i], fmt.Sprintf("before %d", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	for round := 1; round <= 2; round++ {
		upgradeNewest(t, u)
		lines := u.Stderr.WaitLines(t, "took over every listener and the established connections", round)
		m := tookOverLine.FindStringSubmatch(lines[round-1])
		if m == nil || m[1] != strconv.Itoa(n) {
			t.Fatalf("upgrade %d: want %d connections taken over, got %q", round, n, lines[round-1])
		}
		t.Logf("upgrade %d: %d connections moved; pause per connection p50 %s, p99 %s, max %s", round, n, m[2], m[3], m[4])
		for i, c := range conns {
			if err := roundTrip(c, fmt.Sprintf("after upgrade %d, %d", round, i)); err != nil {
				t.Fatalf("upgrade %d: connection %d: %v", round, i, err)
			}
		}
	}
	// The first process exits once it has moved its connections.
	if err := u.Wait(t, 20*time.Second); err != nil {
		t.Fatalf("the first process: %v, want exit status 0", err)
	}
}

func TestUpgradeLeavesTLSConnectionsToTheOldProcess(t *testing.T) {
	echo := testutil.StartEcho(t)
	x := testutil.ClosedAddr(t)
	cert := testutil.SelfSigned(t, "app.test")
	dir := t.TempDir()
	certFile := testutil.WriteFileIn(t, dir, "app.pem", cert.CertPEM)
	keyFile := testutil.WriteFileIn(t, dir, "app.key", cert.KeyPEM)
	path := filepath.Join(dir, "pj.yaml")
	testutil.WriteAtomically(t, path, fmt.Sprintf(`grace_period: 1m
proxies:
  - name: app
    listen: %q
    tls: { certificates: [{ cert: %q, key: %q }] }
    backends: [%q]
`, x, certFile, keyFile, echo))
	u, _ := startPJ(t, 1, pjproc.Command("-c", path))

	dial := func() *tls.Conn {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", x,
			&tls.Config{ServerName: "app.test", RootCAs: cert.Pool})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		return c
	}
	old := dial()
	if err := roundTrip(old, "before"); err != nil {
		t.Fatal(err)
	}
	upgradeNewest(t, u)
	line := u.Stderr.Lines("the new process serves every listener")[0]
	if !regexp.MustCompile(` moved=0 active=1`).MatchString(line) {
		t.Fatalf("the TLS connection must stay with the old process: %q", line)
	}
	// It goes on there; new ones go to the new process.
	if err := roundTrip(old, "after"); err != nil {
		t.Fatalf("the TLS connection after the upgrade: %v", err)
	}
	if err := roundTrip(dial(), "new"); err != nil {
		t.Fatalf("a new TLS connection: %v", err)
	}
	select {
	case <-u.Exited():
		t.Fatal("the old process exited while it still relayed a TLS connection")
	default:
	}
	_ = old.Close()
	// The old process exits once its TLS connection has ended.
	if err := u.Wait(t, 20*time.Second); err != nil {
		t.Fatalf("the old process: %v, want exit status 0", err)
	}
}

func TestUpgradeKeepsBackendStates(t *testing.T) {
	a1, a2 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2")
	x := testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	testutil.WriteAtomically(t, path, fmt.Sprintf(`admin: { listen: "127.0.0.1:0" }
proxies:
  - { name: web, listen: %q, backends: [%q, %q], health_check: { interval: 0s } }
`, x, a1, a2))
	u, _ := startPJ(t, 1, pjproc.Command("-c", path))
	admin := u.Address(t, "admin listening")

	req, err := http.NewRequest(http.MethodPut, "http://"+admin+"/api/v1/proxies/web/backends/"+a2+"/state", strings.NewReader("drain"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("drain %s: %s", a2, resp.Status)
	}

	upgradeNewest(t, u)
	line := u.Stderr.WaitLines(t, "took over every listener", 1)[0]
	if !strings.Contains(line, "backend_states=2") {
		t.Fatalf("the new process restored no backend state: %q", line)
	}
	code, body, err := adminGet(admin, "/api/v1/proxies")
	if err != nil || code != 200 {
		t.Fatalf("GET /api/v1/proxies from the new process: %d %v", code, err)
	}
	var out struct {
		Proxies []struct {
			Backends []struct {
				Address, State string
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, b := range out.Proxies[0].Backends {
		got[b.Address] = b.State
	}
	if got[a1] != "up" || got[a2] != "drain" {
		t.Fatalf("backend states after the upgrade %v; want %s up and %s drain, as before", got, a1, a2)
	}
	for range 4 {
		if got, err := testutil.Ask(x); err != nil || got != "a1" {
			t.Fatalf("after the upgrade a drained backend answered: %q %v", got, err)
		}
	}
}

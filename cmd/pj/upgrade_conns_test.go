package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

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
	u := startUpgradable(t, pjBin, nil, 1, "-p", x+":"+echo, "--grace-period", "1m")

	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = testutil.Dial(t, x)
		_ = conns[i].SetDeadline(time.Now().Add(2 * time.Minute))
		if err := roundTrip(conns[i], fmt.Sprintf("before %d", i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	for round := 1; round <= 2; round++ {
		u.upgrade(t)
		lines := u.stderr.WaitLines(t, "took over every listener and the established connections", round)
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
	select {
	case <-u.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the first process did not exit once it had moved its connections")
	}
	if u.err != nil {
		t.Fatalf("the first process: %v, want exit status 0", u.err)
	}
}

func roundTrip(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := readFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, want %q", buf, msg)
	}
	return nil
}

func readFull(c net.Conn, buf []byte) (int, error) {
	got := 0
	for got < len(buf) {
		k, err := c.Read(buf[got:])
		got += k
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

func TestUpgradeLeavesTLSConnectionsToTheOldProcess(t *testing.T) {
	echo := testutil.StartEcho(t)
	x := testutil.ClosedAddr(t)
	cert := testutil.SelfSigned(t, "app.test")
	dir := t.TempDir()
	certFile := testutil.WriteFileIn(t, dir, "app.pem", cert.CertPEM)
	keyFile := testutil.WriteFileIn(t, dir, "app.key", cert.KeyPEM)
	path := filepath.Join(dir, "pj.yaml")
	writeAtomically(t, path, fmt.Sprintf(`grace_period: 1m
proxies:
  - name: app
    listen: %q
    tls: { certificates: [{ cert: %q, key: %q }] }
    backends: [%q]
`, x, certFile, keyFile, echo))
	u := startUpgradable(t, pjBin, nil, 1, "-c", path)

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
	u.upgrade(t)
	line := u.stderr.Lines("the new process serves every listener")[0]
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
	case <-u.exited:
		t.Fatal("the old process exited while it still relayed a TLS connection")
	default:
	}
	_ = old.Close()
	select {
	case <-u.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the old process did not exit once its TLS connection ended")
	}
	if u.err != nil {
		t.Fatalf("the old process: %v, want exit status 0", u.err)
	}
}

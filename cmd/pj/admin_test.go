package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// adminAddr returns the address of the admin listener pj logged.
func (p *proc) adminAddr(t *testing.T) string {
	t.Helper()
	line := p.stderr.WaitLines(t, "admin listening", 1)[0]
	_, after, _ := strings.Cut(line, "address=")
	addr, _, _ := strings.Cut(after, " ")
	return addr
}

// adminGet makes one request on a connection of its own.
func adminGet(addr, path string) (int, string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// adminConnCap is the admin listener's cap on connections.
const adminConnCap = 16

func TestIdleAdminConnectionsLeaveDescriptorsToTheProxy(t *testing.T) {
	// Connections to the admin listener that never send a request (or a
	// browser's idle keep-alives) once took a descriptor each, with no
	// cap: enough of them and the proxy could accept nothing. They must
	// wait in the kernel's queue past the cap instead.
	echo := testutil.StartEcho(t)
	p := startPJ(t, 1, "ulimit -n 64", "-p", "127.0.0.1:0:"+echo, "--admin", "127.0.0.1:0")
	admin := p.adminAddr(t)
	base := testutil.OpenFDs(t, p.pid())

	const idle = 100
	for i := range idle {
		c, err := net.DialTimeout("tcp", admin, 5*time.Second)
		if err != nil {
			t.Fatalf("admin connection %d: %v", i, err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	// pj takes as many as its cap allows (before the cap, it took them
	// all, climbing to the limit at once).
	testutil.WaitFor(t, 10*time.Second, "the admin listener to take its cap of connections", func() bool {
		return testutil.OpenFDs(t, p.pid()) >= base+adminConnCap
	})

	c, err := net.DialTimeout("tcp", p.addrs[0], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "through"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("through"))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("with %d idle admin connections open, the proxy did not relay: %v (pj holds %d descriptors, %d at start)",
			idle, err, testutil.OpenFDs(t, p.pid()), base)
	}
	if n := testutil.OpenFDs(t, p.pid()); n > base+adminConnCap+2 {
		t.Fatalf("pj holds %d descriptors (%d at start): the admin listener took more than its cap of %d", n, base, adminConnCap)
	}
}

func TestAdminAnswersWhenDescriptorsRunOut(t *testing.T) {
	// Exactly when the proxy runs out of descriptors, an operator needs
	// the metrics and the API: the admin listener keeps a descriptor in
	// reserve for them.
	echo := testutil.StartEcho(t)
	p := startPJ(t, 1, "ulimit -n 40", "-p", "127.0.0.1:0:"+echo, "--admin", "127.0.0.1:0")
	admin := p.adminAddr(t)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	exhausted := false
	for i := 0; i < 40 && !exhausted; i++ {
		c, err := net.DialTimeout("tcp", p.addrs[0], 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		held = append(held, c)
		_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			if !testutil.IsTimeout(err) {
				t.Fatalf("connection %d failed instead of waiting: %v", i, err)
			}
			exhausted = true
		}
	}
	if !exhausted {
		t.Fatal("40 connections were relayed with 40 descriptors: the limit did not apply")
	}
	p.stderr.WaitLines(t, "too many open files", 1)

	for _, path := range []string{"/metrics", "/api/v1/proxies", "/healthz", "/metrics"} {
		code, body, err := adminGet(admin, path)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s with no descriptor left: %d, %v", path, code, err)
		}
		if path == "/metrics" && !strings.Contains(body, "pj_active_connections{") {
			t.Fatalf("GET /metrics with no descriptor left lacks pj's metrics:\n%s", tail(body, 20))
		}
	}
	line := p.stderr.WaitLines(t, "admin listener: out of file descriptors", 1)[0]
	if !strings.Contains(line, "descriptor_limit=40") || !strings.Contains(line, "connections=") {
		t.Fatalf("the line %q does not say the limit and how many connections are open", line)
	}
}

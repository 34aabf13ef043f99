package main

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjproc"
)

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
	p, addrs := startPJ(t, 1, pjproc.Shell("ulimit -n 64", "-p", "127.0.0.1:0:"+echo, "--admin", "127.0.0.1:0"))
	admin := p.Address(t, "admin listening")
	pid := strconv.Itoa(p.Pid())
	base := testutil.OpenFDs(t, pid)

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
		return testutil.OpenFDs(t, pid) >= base+adminConnCap
	})

	c, err := net.DialTimeout("tcp", addrs[0], 5*time.Second)
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
			idle, err, testutil.OpenFDs(t, pid), base)
	}
	if n := testutil.OpenFDs(t, pid); n > base+adminConnCap+2 {
		t.Fatalf("pj holds %d descriptors (%d at start): the admin listener took more than its cap of %d", n, base, adminConnCap)
	}
}

func TestAdminAnswersWhenDescriptorsRunOut(t *testing.T) {
	// Exactly when the proxy runs out of descriptors, an operator needs
	// the metrics and the API: the admin listener keeps a descriptor in
	// reserve for them.
	echo := testutil.StartEcho(t)
	p, addrs := startPJ(t, 1, pjproc.Shell("ulimit -n 40", "-p", "127.0.0.1:0:"+echo, "--admin", "127.0.0.1:0"))
	admin := p.Address(t, "admin listening")
	exhaust(t, p, addrs[0])
	p.Stderr.WaitLines(t, "too many open files", 1)

	for _, path := range []string{"/metrics", "/api/v1/proxies", "/healthz", "/metrics"} {
		code, body, err := adminGet(admin, path)
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET %s with no descriptor left: %d, %v", path, code, err)
		}
		if path == "/metrics" && !strings.Contains(body, "pj_active_connections{") {
			t.Fatalf("GET /metrics with no descriptor left lacks pj's metrics:\n%s", testutil.Tail(body, 20))
		}
	}
	line := p.Stderr.WaitLines(t, "admin listener: out of file descriptors", 1)[0]
	if !strings.Contains(line, "descriptor_limit=40") || !strings.Contains(line, "connections=") {
		t.Fatalf("the line %q does not say the limit and how many connections are open", line)
	}
}

package cli

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// dnsBackend answers every datagram with its first two bytes (a DNS
// transaction id), 0x81 0x80 and the rest: a stand-in for a DNS server.
func dnsBackend(t *testing.T) string {
	t.Helper()
	return testutil.ServeUDP(t, func(b []byte) []byte {
		if len(b) < 2 {
			return nil
		}
		return append([]byte{b[0], b[1], 0x81, 0x80}, b[2:]...)
	}).String()
}

func query(t *testing.T, addr string, id byte) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0xab, id, 0x01, 0x00, 'q'}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("query %d: %v", id, err)
	}
	return buf[:n]
}

func TestUDPMapping(t *testing.T) {
	dns := dnsBackend(t)
	p := start(t, nil, "-p", "127.0.0.1:0/udp:"+dns, "--grace-period", "100ms")
	for id := range byte(3) {
		if got := query(t, p.addrs[0], id); !bytes.Equal(got, []byte{0xab, id, 0x81, 0x80, 0x01, 0x00, 'q'}) {
			t.Fatalf("reply %x", got)
		}
	}
	if l := p.log.WaitLines(t, "INFO listening", 1); len(l) != 1 || !strings.Contains(l[0], "address="+p.addrs[0]+"/udp") {
		t.Fatalf("start-up lines %q: want the address with /udp", l)
	}
	// Three sessions (three client ports), each still open (idle_timeout
	// is 30s for UDP), cut when the grace period ends.
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
	lines := p.log.Lines("[shutdown]")
	if len(lines) != 3 || !strings.Contains(lines[0], "datagrams_up=1 datagrams_down=1") {
		t.Fatalf("%d session lines, want 3:\n%s", len(lines), p.log.String())
	}
}

func TestUDPFileAndCheck(t *testing.T) {
	dns := dnsBackend(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "dns.yaml")
	yaml := `grace_period: 0s
proxies:
  - name: dns
    listen: "127.0.0.1:0/udp"
    backends: ["` + dns + `"]
    udp: { responses: 1 }
    health_check: { interval: 1s, send_hex: "abcd 0100 71", expect_hex: "abcd8180" }
`
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"check", "-c", file}, &out, io.Discard); err != nil {
		t.Fatalf("pj check: %v\n%s", err, out.String())
	}
	for _, want := range []string{"127.0.0.1:0/udp", "a session ends with its reply", "idle timeout 30s", `health checks every 1s`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("pj check does not say %q:\n%s", want, out.String())
		}
	}
	p := start(t, nil, "-c", file)
	if got := query(t, p.addrs[0], 7); got[1] != 7 {
		t.Fatalf("reply %x", got)
	}
	// responses: 1: the session ends with its reply.
	line := p.log.WaitLines(t, "[ok]", 1)[0]
	if !strings.Contains(line, "/udp -> "+dns+" [ok]") || !strings.Contains(line, "datagrams_up=1 datagrams_down=1") {
		t.Fatalf("session line %q", line)
	}
	if strings.Contains(p.log.String(), "is down") {
		t.Fatalf("the backend failed its check:\n%s", p.log.String())
	}
}

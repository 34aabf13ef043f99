package admin

import (
	"net"
	"strings"
	"testing"
	"time"

	tu "github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

// udpEcho starts a UDP backend that answers every datagram with itself.
func udpEcho(t *testing.T) string {
	t.Helper()
	return tu.ServeUDP(t, func(b []byte) []byte { return b }).String()
}

// TestUDPSessionsMetricsAndKill: a UDP session is in the connection table
// and can be closed there; its datagrams and the ones refused are counted.
func TestUDPSessionsMetricsAndKill(t *testing.T) {
	echo := udpEcho(t)
	pr := pjconf.Proxy("dns", "127.0.0.1:0/udp", echo)
	pr.Allow = nil
	p := start(t, Options{}, pr)
	listen := p.proxies(t).Proxies[0].Listen
	if !strings.HasSuffix(listen, "/udp") {
		t.Fatalf("listen %q, want it with /udp", listen)
	}
	c, err := net.Dial("udp", strings.TrimSuffix(listen, "/udp"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 16)); err != nil {
			t.Fatal(err)
		}
	}
	cj := p.onlyConnection(t, 12)
	if cj.Client != c.LocalAddr().String() || cj.Listener != listen || cj.Backend != echo || cj.BytesUp != 12 {
		t.Fatalf("session %+v", cj)
	}
	wantSeries(t, p.metrics(t), []series{
		{"pj_udp_datagrams_total", map[string]string{"proxy": "dns", "direction": "up"}, 3},
		{"pj_udp_datagrams_total", map[string]string{"proxy": "dns", "direction": "down"}, 3},
		{"pj_udp_dropped_datagrams_total", map[string]string{"proxy": "dns", "reason": "denied"}, 0},
		{"pj_bytes_total", map[string]string{"proxy": "dns", "direction": "up"}, 12},
		{"pj_active_connections", map[string]string{"proxy": "dns"}, 1},
	})
	if code, body := p.do(t, "DELETE", "/api/v1/connections/"+cj.ID, "", ""); code != 204 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	line := p.logs.WaitLines(t, "[killed]", 1)[0]
	if !strings.Contains(line, "datagrams_up=3 datagrams_down=3") {
		t.Fatalf("log line %q", line)
	}
	if n := len(p.connections(t)); n != 0 {
		t.Fatalf("%d connections after the kill", n)
	}
}

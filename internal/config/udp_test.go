package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
)

func TestUDPProxies(t *testing.T) {
	const yaml = `defaults:
  proxy_protocol: v2           # for the TCP proxies; a UDP one inherits it harmlessly
proxies:
  - name: dns
    listen: "0.0.0.0:5353/UDP"
    backends: ["10.0.0.53:53", "10.0.0.54:53"]
    udp: { responses: 1 }
    health_check: { interval: 5s, send_hex: "ab cd 01 00 00 01 00 00 00 00 00 00 00 00 02 00 01", expect_hex: "AB:CD" }
  - name: dns-tcp
    listen: "0.0.0.0:5353/tcp"
    backends: ["10.0.0.53:53"]
  - name: syslog
    listen: "[::]:514/udp"
    backends: ["10.0.0.9:514", "10.0.0.10:514"]
    idle_timeout: 2m
`
	c, err := loadFile(t, yaml)
	if err != nil {
		t.Fatal(err)
	}
	dns, tcp, syslog := c.Proxies[0], c.Proxies[1], c.Proxies[2]
	if dns.Listen != "0.0.0.0:5353/udp" || !dns.IsUDP() || tcp.Listen != "0.0.0.0:5353" || tcp.IsUDP() {
		t.Fatalf("listen: %q (UDP %v) and %q (UDP %v)", dns.Listen, dns.IsUDP(), tcp.Listen, tcp.IsUDP())
	}
	if dns.UDP.Responses != 1 || dns.IdleTimeout != config.UDPIdleTimeout || syslog.IdleTimeout != 2*time.Minute || tcp.IdleTimeout != 0 {
		t.Fatalf("responses %d, idle timeouts %s %s %s", dns.UDP.Responses, dns.IdleTimeout, syslog.IdleTimeout, tcp.IdleTimeout)
	}
	send, expect := dns.HealthCheck.Payload()
	if len(send) != 17 || send[0] != 0xab || string(expect) != "\xab\xcd" || !dns.HealthCheck.Datagrams {
		t.Fatalf("check payload %x, expect %x, datagrams %v", send, expect, dns.HealthCheck.Datagrams)
	}
	if !dns.HealthCheck.Runs(2) || syslog.HealthCheck.Runs(2) {
		t.Fatal("a UDP proxy's checks run with a payload to send, and only then")
	}
	if !tcp.HealthCheck.Runs(2) {
		t.Fatal("a TCP proxy's checks need no payload")
	}
	if got := strings.Join(dns.Summary(), "; "); !strings.Contains(got, "a session ends with its reply") {
		t.Errorf("pj check shows %q", got)
	}
}

func TestUDPProblems(t *testing.T) {
	testLoadProblems(t, []fileCase{
		{
			name: "an unknown transport",
			yaml: `proxies: [{ listen: "0.0.0.0:53/sctp", backends: [a:53] }]`,
			want: []string{`pj.yaml:1: proxies[0].listen: "0.0.0.0:53/sctp": the transport after / must be udp or tcp (expected HOST:PORT or HOST:PORT/udp, e.g. 0.0.0.0:53/udp)`},
		},
		{
			name: "TCP and UDP share a port, two UDP proxies do not",
			yaml: `proxies:
  - { listen: "0.0.0.0:53", backends: [a:53] }
  - { listen: "0.0.0.0:53/udp", backends: [a:53] }
  - { name: again, listen: "0.0.0.0:53/udp", backends: [b:53] }
`,
			want: []string{`pj.yaml:4: proxy "again": listen address 0.0.0.0:53/udp is already used by proxy "0.0.0.0:53/udp" (pj.yaml:3); to balance one listener over several backends, list them all in one proxy's backends`},
		},
		{
			name: "settings of the other transport, set by the proxy itself",
			yaml: `proxies:
  - name: web
    listen: "0.0.0.0:80"
    backends: [a:80]
    udp: { responses: 1 }
  - name: dns
    listen: "0.0.0.0:53/udp"
    backends: [a:53]
    proxy_protocol: v1
    accept_proxy_protocol: { trusted: ["10.0.0.0/8"] }
    match_timeout: 2s
    bandwidth: { per_connection: 1MiB }
    health_check: { interval: 1s }
`,
			want: []string{
				`pj.yaml:2: proxy "web": udp: applies to UDP proxies only (a listen address ending in /udp)`,
				`pj.yaml:6: proxy "dns": bandwidth: applies to TCP proxies only; a UDP proxy relays datagrams as they are`,
				`pj.yaml:6: proxy "dns": proxy_protocol: applies to TCP proxies only; a UDP proxy relays datagrams as they are`,
				`pj.yaml:6: proxy "dns": accept_proxy_protocol: applies to TCP proxies only; a UDP proxy relays datagrams as they are (admission keys apply to each datagram's source address)`,
				`pj.yaml:6: proxy "dns": match_timeout: applies to TCP proxies only; a UDP proxy relays datagrams as they are`,
				`pj.yaml:6: proxy "dns": health_check: a UDP backend is checked with a datagram and its reply: set send (or send_hex), and expect (or expect_hex) to check what comes back; or interval: 0s for no active checks`,
			},
		},
		{
			name: "routes",
			yaml: `proxies:
  - listen: "0.0.0.0:53/udp"
    routes: [{ backends: [a:53] }]
`,
			want: []string{`pj.yaml:2: proxy "0.0.0.0:53/udp": routes need a TCP listener: a UDP proxy has no first bytes to choose by`},
		},
		{
			name: "both forms of a payload",
			yaml: `proxies:
  - listen: "0.0.0.0:53/udp"
    backends: [a:53]
    health_check: { send: "x", send_hex: "78" }
`,
			want: []string{`pj.yaml:2: proxy "0.0.0.0:53/udp": health_check: send and send_hex say the same thing: set one`},
		},
		{
			name: "not hexadecimal",
			yaml: `proxies:
  - listen: "0.0.0.0:54/udp"
    backends: [a:53]
    health_check: { send_hex: "xyz" }
`,
			want: []string{`pj.yaml:4: proxies[0].health_check.send_hex: "xyz" is not hexadecimal bytes (write e.g. "abcd 0100"): encoding/hex: invalid byte: U+0078 'x'`},
		},
	})
}

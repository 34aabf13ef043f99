package config_test

import (
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

func TestKernelRelayKey(t *testing.T) {
	testKey(t, func(p config.Proxy) bool { return p.KernelRelay }, []keyCase[bool]{
		{"on", "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n    kernel_relay: true\n", nil, true},
		{"inherited from the defaults", "defaults: { kernel_relay: true }\nproxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n", nil, true},
		{"off by default", "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n", nil, false},
		{"with bandwidth", "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n    kernel_relay: true\n    bandwidth: { per_connection: 1MiB }\n",
			[]string{`pj.yaml:2: proxy "0.0.0.0:9000": kernel_relay: cannot be used with bandwidth: the kernel moves the bytes and pj cannot pace them; remove one of them`}, false},
		{"with bandwidth in a route", "proxies:\n  - name: edge\n    listen: 0.0.0.0:443\n    kernel_relay: true\n    routes:\n      - backends: [b:1]\n        bandwidth: { per_connection: 1MiB }\n",
			[]string{`pj.yaml:6: proxy "edge", route "edge#1": kernel_relay: cannot be used with bandwidth: the kernel moves the bytes and pj cannot pace them; remove one of them`}, false},
		{"with backend_tls", "proxies:\n  - name: db\n    listen: 0.0.0.0:5432\n    backends: [b:5432]\n    backend_tls: { server_name: db.example }\n    kernel_relay: true\n",
			[]string{`pj.yaml:2: proxy "db": kernel_relay: cannot be used with tls or backend_tls: pj must encrypt or decrypt every byte itself; remove one of them`}, false},
		{"on UDP", "proxies:\n  - name: dns\n    listen: 0.0.0.0:53/udp\n    backends: [b:53]\n    kernel_relay: true\n",
			[]string{`pj.yaml:2: proxy "dns": kernel_relay: applies to TCP proxies only; a UDP proxy relays datagrams as they are`}, false},
		{"not a boolean", "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n    kernel_relay: yes please\n",
			[]string{`pj.yaml:4: proxies[0].kernel_relay: expected true or false, got a string`}, false},
	})
}

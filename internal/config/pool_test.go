package config_test

import (
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
)

func TestPoolKeys(t *testing.T) {
	testKey(t, func(p config.Proxy) config.Pool { return p.Pool }, []keyCase[config.Pool]{
		{"a pool with its defaults", "proxies:\n  - listen: 0.0.0.0:25\n    backends: [b:25]\n    pool: { size: 4 }\n",
			nil, config.Pool{Size: 4, MaxAge: 30 * time.Second}},
		{"inherited from the defaults", "defaults: { pool: { size: 2, max_age: 8s } }\nproxies:\n  - listen: 0.0.0.0:3306\n    backends: [b:3306]\n",
			nil, config.Pool{Size: 2, MaxAge: 8 * time.Second}},
		{"with proxy_protocol", "proxies:\n  - listen: 0.0.0.0:25\n    backends: [b:25]\n    proxy_protocol: v2\n    pool: { size: 4 }\n",
			[]string{`pj.yaml:2: proxy "0.0.0.0:25": pool: cannot be used with proxy_protocol: the PROXY header names the client, unknown when a warm connection is opened; remove one of them`}, config.Pool{}},
		{"with proxy_protocol in a route", "proxies:\n  - name: edge\n    listen: 0.0.0.0:443\n    pool: { size: 1 }\n    routes:\n      - backends: [b:1]\n        proxy_protocol: v1\n",
			[]string{`pj.yaml:6: proxy "edge", route "edge#1": pool: cannot be used with proxy_protocol: the PROXY header names the client, unknown when a warm connection is opened; remove one of them`}, config.Pool{}},
		{"too large", "proxies:\n  - listen: 0.0.0.0:25\n    backends: [b:25]\n    pool: { size: 5000 }\n",
			[]string{`pool.size: 5000 is more than 1024 warm connections per backend (0 turns the pool off)`}, config.Pool{}},
		{"a max_age of 0", "proxies:\n  - listen: 0.0.0.0:25\n    backends: [b:25]\n    pool: { size: 1, max_age: 0s }\n",
			[]string{`pool.max_age: 0s must be positive`}, config.Pool{}},
		{"with backend_tls", "proxies:\n  - name: db\n    listen: 0.0.0.0:5432\n    backends: [b:5432]\n    backend_tls: { server_name: db.example }\n    pool: { size: 1 }\n",
			nil, config.Pool{Size: 1, MaxAge: 30 * time.Second}},
		{"on UDP", "proxies:\n  - name: dns\n    listen: 0.0.0.0:53/udp\n    backends: [b:53]\n    pool: { size: 1 }\n",
			[]string{`pj.yaml:2: proxy "dns": pool: applies to TCP proxies only; a UDP proxy relays datagrams as they are (a UDP session has no connection to open ahead)`}, config.Pool{}},
	})
}

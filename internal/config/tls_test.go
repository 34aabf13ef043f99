package config_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

func TestTLSKeysDecode(t *testing.T) {
	c, problems := load(t, `proxies:
  - name: edge
    listen: "127.0.0.1:8443"
    tls:
      certificates: [{ cert: a.pem, key: a.key }, { cert: b.pem, key: b.key }]
      client_ca: clients.pem
      min_version: "1.3"
      alpn: ["h2", "http/1.1"]
      acme: { domains: ["app.example.com"], email: ops@example.com, directory: "https://127.0.0.1:14000/dir", ca_roots: roots.pem, storage: /var/lib/pj/acme, http_listen: ":80" }
    backend_tls: { server_name: db.internal, ca: ca.pem, cert: c.pem, key: c.key }
    routes:
      - match: { sni: ["db.example.com"] }
        backends: ["127.0.0.1:5432"]
      - match: { sni: ["app.example.com"] }
        backend_tls: { insecure_skip_verify: true }
        backends: ["127.0.0.1:8080"]
`)
	if problems != nil {
		t.Fatal(problems)
	}
	p := c.Proxies[0]
	want := &config.TLS{
		Certificates: []config.Certificate{{Cert: "a.pem", Key: "a.key"}, {Cert: "b.pem", Key: "b.key"}},
		ClientCA:     "clients.pem", MinVersion: "1.3", ALPN: []string{"h2", "http/1.1"},
		ACME: &config.ACME{Domains: []string{"app.example.com"}, Email: "ops@example.com",
			Directory: "https://127.0.0.1:14000/dir", CARoots: "roots.pem", Storage: "/var/lib/pj/acme", HTTPListen: ":80"},
	}
	if !reflect.DeepEqual(p.TLS, want) {
		t.Errorf("tls = %+v, want %+v", p.TLS, want)
	}
	// Routes inherit the proxy's tls and backend_tls, and override them.
	if !reflect.DeepEqual(p.Routes[0].TLS, want) {
		t.Errorf("route 0 tls = %+v, want the proxy's", p.Routes[0].TLS)
	}
	if b := p.Routes[0].BackendTLS; b == nil || b.ServerName != "db.internal" || b.CA != "ca.pem" || b.Cert != "c.pem" {
		t.Errorf("route 0 backend_tls = %+v, want the proxy's", b)
	}
	if b := p.Routes[1].BackendTLS; b == nil || !b.InsecureSkipVerify {
		t.Errorf("route 1 backend_tls = %+v, want insecure_skip_verify", b)
	}
}

func TestTLSKeysRefuse(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"no certificates", `tls: { min_version: "1.3" }`, "tls: no certificates"},
		{"cert without key", `tls: { certificates: [{ cert: a.pem }] }`, "needs both cert"},
		{"certificate not an object", `tls: { certificates: ["a.pem"] }`, "an object {cert, key}"},
		{"bad version", `tls: { certificates: [{ cert: a.pem, key: a.key }], min_version: "1.1" }`, "TLS version"},
		{"unknown key", `tls: { certificates: [{ cert: a.pem, key: a.key }], ciphers: [x] }`, "tls.ciphers: unknown key"},
		{"acme without storage", `tls: { acme: { domains: [a.example.com] } }`, "storage is missing"},
		{"acme without domains", `tls: { acme: { storage: /tmp/x } }`, "domains lists no names"},
		{"client cert without key", `backend_tls: { cert: c.pem }`, "cert and key go together"},
		{"http_listen not an address", `tls: { acme: { domains: [a.example.com], storage: /tmp/x, http_listen: "port 80" } }`, "tls.acme.http_listen"},
		{"http_listen on a proxy's address", `tls: { acme: { domains: [a.example.com], storage: /tmp/x, http_listen: "127.0.0.1:8443" } }`,
			"tls.acme.http_listen 127.0.0.1:8443 is the listen address of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, problems := load(t, "proxies:\n  - listen: \"127.0.0.1:8443\"\n    backends: [\"127.0.0.1:80\"]\n    "+tc.text+"\n")
			if !strings.Contains(strings.Join(problems, "\n"), tc.want) {
				t.Errorf("problems = %q, want one containing %q", problems, tc.want)
			}
		})
	}
}

func TestTLSIsForTCPProxies(t *testing.T) {
	_, problems := load(t, `proxies:
  - listen: "127.0.0.1:5353/udp"
    backends: ["127.0.0.1:53"]
    tls: { certificates: [{ cert: a.pem, key: a.key }] }
    backend_tls: { ca: ca.pem }
`)
	text := strings.Join(problems, "\n")
	for _, want := range []string{"tls: applies to TCP proxies only", "backend_tls: applies to TCP proxies only"} {
		if !strings.Contains(text, want) {
			t.Errorf("problems = %q, want one containing %q", problems, want)
		}
	}
}

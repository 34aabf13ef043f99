package admin

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	tu "github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

// send makes one request to the admin listener with the given Host and
// extra headers, and returns the status and body.
func (p *pj) send(t *testing.T, method, path, host, body string, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, p.admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *pj) port(t *testing.T) string {
	t.Helper()
	_, port, err := net.SplitHostPort(strings.TrimPrefix(p.admin, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// TestDNSRebindingIsRefused replays what a web page does after rebinding
// its own name to 127.0.0.1: the browser sends the attacker's name as the
// Host (and, for a change, as the Origin, which then matches the Host).
// Neither reading nor changing anything may work for a name the admin
// listener does not know as its own.
func TestDNSRebindingIsRefused(t *testing.T) {
	echo := tu.StartEcho(t)
	p := start(t, Options{Hosts: []string{"pj.example.net"}}, pjconf.Proxy("web", "127.0.0.1:0", echo))
	port := p.port(t)
	state := "/api/v1/proxies/web/backends/" + echo + "/state"

	refused := []string{"evil.example:" + port, "evil.example", "localhost.evil.example:" + port, "127.0.0.1.nip.io:" + port, "pj.example.net.evil.example"}
	for _, host := range refused {
		t.Run("refused "+host, func(t *testing.T) {
			origin := map[string]string{"Origin": "http://" + host}
			if code, body := p.send(t, "PUT", state, host, "drain", origin); code != http.StatusForbidden || !strings.Contains(body, "DNS rebinding") || !strings.Contains(body, "admin.hosts") {
				t.Errorf("PUT with Host %q: %d %s; want 403 saying why and what to do", host, code, body)
			}
			if code, _ := p.send(t, "DELETE", "/api/v1/connections/c1", host, "", origin); code != http.StatusForbidden {
				t.Errorf("DELETE with Host %q: %d; want 403", host, code)
			}
			for _, path := range []string{"/api/v1/connections", "/api/v1/proxies", "/metrics", "/"} {
				if code, _ := p.send(t, "GET", path, host, "", nil); code != http.StatusForbidden {
					t.Errorf("GET %s with Host %q: %d; want 403", path, host, code)
				}
			}
		})
	}
	if got := p.proxies(t).Proxies[0].Backends[0].State; got != "up" {
		t.Fatalf("the backend is %s after refused requests; want up", got)
	}

	allowed := []string{"127.0.0.1:" + port, "127.0.0.1", "localhost:" + port, "LOCALHOST", "localhost.:" + port,
		"status.localhost:" + port, "[::1]:" + port, "192.0.2.7:" + port, "pj.example.net:" + port, "PJ.Example.Net"}
	for _, host := range allowed {
		t.Run("allowed "+host, func(t *testing.T) {
			if code, body := p.send(t, "GET", "/api/v1/proxies", host, "", nil); code != http.StatusOK {
				t.Errorf("GET with Host %q: %d %s; want 200", host, code, body)
			}
			if code, body := p.send(t, "PUT", state, host, "up", map[string]string{"Origin": "http://" + host}); code != http.StatusOK {
				t.Errorf("same-origin PUT with Host %q: %d %s; want 200", host, code, body)
			}
		})
	}
}

// TestCrossOriginChangesAreRefused is a page on another origin making the
// operator's browser send a change to the admin listener by its real
// address (a form post, or fetch without reading the answer).
func TestCrossOriginChangesAreRefused(t *testing.T) {
	echo := tu.StartEcho(t)
	p := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", echo))
	host := strings.TrimPrefix(p.admin, "http://")
	state := "/api/v1/proxies/web/backends/" + echo + "/state"
	tests := []struct {
		name    string
		headers map[string]string
		want    int
	}{
		{"another origin", map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"another port of this host", map[string]string{"Origin": "http://127.0.0.1:1"}, http.StatusForbidden},
		{"a null origin (sandboxed frame)", map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"cross-site fetch metadata", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"same-site fetch metadata", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://sub.localhost"}, http.StatusForbidden},
		{"same origin", map[string]string{"Origin": "http://" + host}, http.StatusOK},
		{"same-origin fetch metadata", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://" + host}, http.StatusOK},
		{"not a browser (curl)", nil, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := p.send(t, "PUT", state, "", "drain", tt.headers)
			if code != tt.want {
				t.Fatalf("PUT: %d %s; want %d", code, body, tt.want)
			}
			if tt.want == http.StatusForbidden {
				if !strings.Contains(body, "origin") {
					t.Errorf("the refusal %q does not say why", body)
				}
				if code, _ := p.send(t, "DELETE", "/api/v1/connections/c1", "", "", tt.headers); code != http.StatusForbidden {
					t.Errorf("DELETE: %d; want 403", code)
				}
				if got := p.proxies(t).Proxies[0].Backends[0].State; got != "up" {
					t.Fatalf("the refused request drained the backend (%s)", got)
				}
				return
			}
			if code, body := p.send(t, "PUT", state, "", "up", tt.headers); code != http.StatusOK {
				t.Fatalf("PUT up: %d %s", code, body)
			}
		})
	}
}

// TestNothingCanBeFramed: a page of another site must not show the status
// page (or anything else of the admin listener) in a frame, where a
// click meant for the attacker's page would press pj's buttons.
func TestNothingCanBeFramed(t *testing.T) {
	echo := tu.StartEcho(t)
	p := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", echo))
	for _, path := range []string{"/", "/index.html", "/app.js", "/api/v1/proxies", "/metrics", "/healthz", "/no-such-page"} {
		resp, err := http.Get(p.admin + path)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if got := resp.Header.Get("X-Frame-Options"); got != "DENY" {
			t.Errorf("%s: X-Frame-Options %q, want DENY", path, got)
		}
		if got := resp.Header.Get("Content-Security-Policy"); !strings.Contains(got, "frame-ancestors 'none'") {
			t.Errorf("%s: Content-Security-Policy %q, want frame-ancestors 'none'", path, got)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options %q, want nosniff", path, got)
		}
	}
}

package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// startPebble runs Let's Encrypt's test ACME server (Debian package
// "pebble") on loopback; it resolves names with dnsAddr and validates
// http-01 on httpPort and tls-alpn-01 on tlsPort. It returns the directory
// URL, a PEM file of the CA of its HTTPS listener, and its management
// address.
func startPebble(t *testing.T, httpPort, tlsPort int, dnsAddr string) (dir, caRoots, mgmt string, client *http.Client) {
	t.Helper()
	bin, err := exec.LookPath("pebble")
	if err != nil {
		if os.Getenv("PJ_REQUIRE_PEBBLE") != "" {
			t.Fatal("pebble is not installed, and PJ_REQUIRE_PEBBLE is set: apt-get install pebble")
		}
		t.Skip("pebble (Let's Encrypt's test ACME server) is not installed: apt-get install pebble to run the ACME tests")
	}
	tmp := t.TempDir()
	ca := testutil.NewCA(t, "pebble's HTTPS CA")
	c, k := ca.Issue(t, testutil.Leaf{Names: []string{"localhost"}, IPs: []string{"127.0.0.1"}})
	listen, mgmt := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	b, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress": listen, "managementListenAddress": mgmt,
		"certificate": testutil.WriteFileIn(t, tmp, "pebble.pem", c), "privateKey": testutil.WriteFileIn(t, tmp, "pebble.key", k),
		"httpPort": httpPort, "tlsPort": tlsPort, "ocspResponderURL": "", "externalAccountBindingRequired": false,
	}})
	cmd := exec.Command(bin, "-config", testutil.WriteFileIn(t, tmp, "pebble.json", b), "-dnsserver", dnsAddr)
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	out := &testutil.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pebble: %v", err)
	}
	client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		client.CloseIdleConnections()
		if t.Failed() {
			t.Logf("pebble's output:\n%s", out)
		}
	})
	dir = "https://" + listen + "/dir"
	testutil.WaitFor(t, 20*time.Second, "pebble to listen", func() bool {
		resp, err := client.Get(dir)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return dir, testutil.WriteFileIn(t, tmp, "pebble-ca.pem", ca.PEM), mgmt, client
}

// TestACMEOnARoutedPort has pj obtain a certificate from pebble through a
// port whose first route passes the same names through: the CA's
// tls-alpn-01 hello is answered by pj all the same, and clients then get
// the certificate pebble issued.
func TestACMEOnARoutedPort(t *testing.T) {
	const domain = "app.pj.test"
	dns := testutil.StartDNS(t)
	dns.SetIPs(domain, "127.0.0.1")
	x := testutil.ClosedAddr(t)
	dir, caRoots, mgmt, client := startPebble(t, portOf(t, testutil.ClosedAddr(t)), portOf(t, x), dns.Addr)

	passthrough := pjconf.Route("others", config.Match{SNI: []string{"*.pj.test"}, ALPN: []string{"acme-tls/1"}}, testutil.ClosedAddr(t))
	app := pjconf.Route("app", config.Match{SNI: []string{domain}}, testutil.StartEcho(t))
	px := pjconf.Routed("edge", x, passthrough, app)
	px.Routes[1].TLS = &config.TLS{ACME: &config.ACME{Domains: []string{domain}, Email: "ops@pj.test",
		Directory: dir, CARoots: caRoots, Storage: filepath.Join(t.TempDir(), "acme")}}
	r := pjtest.Start(t, pjconf.Config(px), server.Options{})
	r.Logs.WaitLines(t, "ACME certificate ready", 1)

	c, err := dialTLS(t, x, domain, pebbleRoots(t, client, mgmt))
	if err != nil {
		t.Fatalf("a client that trusts pebble's root refuses pj's certificate: %v", err)
	}
	if got := testutil.RoundTrip(t, c, "issued"); got != "issued" {
		t.Fatalf("echo %q", got)
	}
	r.Logs.WaitLines(t, "route=app", 1)
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// pebbleRoots returns the root pebble issues under (made anew at each
// start), from its management address.
func pebbleRoots(t *testing.T, client *http.Client, mgmt string) *x509.CertPool {
	t.Helper()
	resp, err := client.Get("https://" + mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	pemRoot, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	roots := x509.NewCertPool()
	if err != nil || !roots.AppendCertsFromPEM(pemRoot) {
		t.Fatalf("pebble's root: %v %q", err, pemRoot)
	}
	return roots
}

// TestACMEHTTP01 has pj obtain a certificate from pebble with the http-01
// challenge alone: nothing answers on pebble's tls-alpn-01 port, and pj
// answers pebble's HTTP request on its http_listen address. That address
// also sends every other request to https.
func TestACMEHTTP01(t *testing.T) {
	const domain = "web.pj.test"
	dns := testutil.StartDNS(t)
	dns.SetIPs(domain, "127.0.0.1")
	httpAddr := testutil.ClosedAddr(t)
	dir, caRoots, mgmt, client := startPebble(t, portOf(t, httpAddr), portOf(t, testutil.ClosedAddr(t)), dns.Addr)

	x := testutil.ClosedAddr(t)
	px := pjtest.Proxy("web", x, testutil.StartEcho(t))
	px.TLS = &config.TLS{ACME: &config.ACME{Domains: []string{domain}, Email: "ops@pj.test",
		Directory: dir, CARoots: caRoots, Storage: filepath.Join(t.TempDir(), "acme"), HTTPListen: httpAddr}}
	r := pjtest.Start(t, pjtest.Config(px), server.Options{})
	r.Logs.WaitLines(t, "answering ACME http-01 challenges", 1)
	r.Logs.WaitLines(t, "ACME certificate ready", 1)

	c, err := dialTLS(t, x, domain, pebbleRoots(t, client, mgmt))
	if err != nil {
		t.Fatalf("a client that trusts pebble's root refuses pj's certificate: %v", err)
	}
	if got := testutil.RoundTrip(t, c, "issued"); got != "issued" {
		t.Fatalf("echo %q", got)
	}

	plain := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer plain.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/cart", nil)
	req.Host = domain
	resp, err := plain.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || loc != "https://"+domain+"/cart" {
		t.Errorf("GET /cart on the http-01 listener: %d to %q, want a redirect to https", resp.StatusCode, loc)
	}
}

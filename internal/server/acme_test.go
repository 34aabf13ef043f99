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
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// startPebble runs Let's Encrypt's test ACME server (Debian package
// "pebble") on loopback; it resolves names with dnsAddr and validates
// tls-alpn-01 on tlsPort. It returns the directory URL, a PEM file of the
// CA of its HTTPS listener, and its management address.
func startPebble(t *testing.T, tlsPort int, dnsAddr string) (dir, caRoots, mgmt string, client *http.Client) {
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
	_, httpPort, _ := net.SplitHostPort(testutil.ClosedAddr(t))
	hp, _ := strconv.Atoi(httpPort)
	b, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress": listen, "managementListenAddress": mgmt,
		"certificate": testutil.WriteFileIn(t, tmp, "pebble.pem", c), "privateKey": testutil.WriteFileIn(t, tmp, "pebble.key", k),
		"httpPort": hp, "tlsPort": tlsPort, "ocspResponderURL": "", "externalAccountBindingRequired": false,
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
	_, p, _ := net.SplitHostPort(x)
	tlsPort, _ := strconv.Atoi(p)
	dir, caRoots, mgmt, client := startPebble(t, tlsPort, dns.Addr)

	passthrough := pjtest.Route("others", config.Match{SNI: []string{"*.pj.test"}, ALPN: []string{"acme-tls/1"}}, testutil.ClosedAddr(t))
	app := pjtest.Route("app", config.Match{SNI: []string{domain}}, testutil.StartEcho(t))
	px := pjtest.Routed("edge", x, passthrough, app)
	px.Routes[1].TLS = &config.TLS{ACME: &config.ACME{Domains: []string{domain}, Email: "ops@pj.test",
		Directory: dir, CARoots: caRoots, Storage: filepath.Join(t.TempDir(), "acme")}}
	r := pjtest.Start(t, pjtest.Config(px), server.Options{})
	r.Logs.WaitLines(t, "ACME certificate ready", 1)

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
	c, err := dialTLS(t, x, domain, roots)
	if err != nil {
		t.Fatalf("a client that trusts pebble's root refuses pj's certificate: %v", err)
	}
	if got := testutil.RoundTrip(t, c, "issued"); got != "issued" {
		t.Fatalf("echo %q", got)
	}
	r.Logs.WaitLines(t, "route=app", 1)
}

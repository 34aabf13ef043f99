package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// Pebble is Let's Encrypt's test ACME server (Debian package "pebble"),
// run on loopback for one test. It validates challenges for real: it
// resolves the domain with the test's DNS server (every name is
// 127.0.0.1) and connects to the test's listeners on httpPort (http-01)
// and tlsPort (tls-alpn-01).
type Pebble struct {
	Dir     string       // the ACME directory URL
	CARoots string       // PEM file of the CA of pebble's own HTTPS listener
	Mgmt    string       // management listener, HOST:PORT
	Client  *http.Client // trusts pebble's HTTPS listener
	out     *Buffer
}

// StartPebble runs pebble for the test, or skips the test where pebble is
// not installed (and fails it if PJ_REQUIRE_PEBBLE is set).
func StartPebble(t testing.TB, httpPort, tlsPort int, dnsAddr string) *Pebble {
	t.Helper()
	bin, err := exec.LookPath("pebble")
	if err != nil {
		if os.Getenv("PJ_REQUIRE_PEBBLE") != "" {
			t.Fatal("pebble is not installed, and PJ_REQUIRE_PEBBLE is set: apt-get install pebble")
		}
		t.Skip("pebble (Let's Encrypt's test ACME server) is not installed: apt-get install pebble to run the ACME tests")
	}
	dir := t.TempDir()
	ca := NewCA(t, "pebble's HTTPS CA")
	c, k := ca.Issue(t, Leaf{Names: []string{"localhost"}, IPs: []string{"127.0.0.1"}})
	listen, mgmt := ClosedAddr(t), ClosedAddr(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        mgmt,
		"certificate":                    WriteFileIn(t, dir, "pebble.pem", c),
		"privateKey":                     WriteFileIn(t, dir, "pebble.key", k),
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}}
	b, _ := json.Marshal(cfg)
	cfgFile := WriteFileIn(t, dir, "pebble-config.json", b)

	p := &Pebble{Dir: "https://" + listen + "/dir", CARoots: WriteFileIn(t, dir, "pebble-ca.pem", ca.PEM), Mgmt: mgmt, out: &Buffer{}}
	p.Client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	cmd := exec.Command(bin, "-config", cfgFile, "-dnsserver", dnsAddr)
	// No artificial pause before validating; no nonces refused at random
	// (a client must cope with them, but a test needs to be repeatable);
	// no authorisation reused, so every order is validated anew.
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pebble: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		p.Client.CloseIdleConnections()
		if t.Failed() {
			t.Logf("pebble's output:\n%s", p.out.String())
		}
	})
	WaitFor(t, 20*time.Second, "pebble to listen", func() bool {
		resp, err := p.Client.Get(p.Dir)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// PebbleFor runs pebble for one domain: a DNS server of the test's
// resolves domain to 127.0.0.1, and pebble validates http-01 on the port
// of httpAddr and tls-alpn-01 on the port of tlsAddr (loopback addresses
// the test listens on, or reserved ones where nothing answers).
func PebbleFor(t testing.TB, domain, httpAddr, tlsAddr string) *Pebble {
	t.Helper()
	dns := StartDNS(t)
	dns.SetIPs(domain, "127.0.0.1")
	return StartPebble(t, portOf(t, httpAddr), portOf(t, tlsAddr), dns.Addr)
}

func portOf(t testing.TB, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("the port of %s: %v", addr, err)
	}
	return n
}

// WantHTTPSRedirect fails the test unless a GET of path for host at addr
// (an ACME http-01 listener) is redirected to https://host+path.
func WantHTTPSRedirect(t testing.TB, addr, host, path string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || loc != "https://"+host+path {
		t.Errorf("GET %s on %s: %d to %q, want a redirect to https", path, addr, resp.StatusCode, loc)
	}
}

// Roots returns the root that pebble issues under (made anew at each
// start), from its management listener.
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.Client.Get("https://" + p.Mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("get pebble's root: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble's root is not PEM: %q", b)
	}
	return pool
}

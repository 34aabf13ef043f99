package server_test

import (
	"path/filepath"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// TestACMEOnARoutedPort has pj obtain a certificate from pebble through a
// port whose first route passes the same names through: the CA's
// tls-alpn-01 hello is answered by pj all the same, and clients then get
// the certificate pebble issued.
func TestACMEOnARoutedPort(t *testing.T) {
	const domain = "app.pj.test"
	x := testutil.ClosedAddr(t)
	pb := testutil.PebbleFor(t, domain, testutil.ClosedAddr(t), x)

	passthrough := pjconf.Route("others", config.Match{SNI: []string{"*.pj.test"}, ALPN: []string{"acme-tls/1"}}, testutil.ClosedAddr(t))
	app := pjconf.Route("app", config.Match{SNI: []string{domain}}, testutil.StartEcho(t))
	px := pjconf.Routed("edge", x, passthrough, app)
	px.Routes[1].TLS = &config.TLS{ACME: &config.ACME{Domains: []string{domain}, Email: "ops@pj.test",
		Directory: pb.Dir, CARoots: pb.CARoots, Storage: filepath.Join(t.TempDir(), "acme")}}
	r := pjtest.Start(t, pjconf.Config(px), server.Options{})
	wantIssued(t, r, x, domain, pb)
	r.Logs.WaitLines(t, "route=app", 1)
}

// wantIssued waits for pj to have its certificate for domain, then has a
// client that trusts pebble's root through x to the echo behind it.
func wantIssued(t *testing.T, r *pjtest.Server, x, domain string, pb *testutil.Pebble) {
	t.Helper()
	r.Logs.WaitLines(t, "ACME certificate ready", 1)
	c, err := dialTLS(t, x, domain, pb.Roots(t))
	if err != nil {
		t.Fatalf("a client that trusts pebble's root refuses pj's certificate: %v", err)
	}
	if got := testutil.RoundTrip(t, c, "issued"); got != "issued" {
		t.Fatalf("echo %q", got)
	}
}

// TestACMEHTTP01 has pj obtain a certificate from pebble with the http-01
// challenge alone: nothing answers on pebble's tls-alpn-01 port, and pj
// answers pebble's HTTP request on its http_listen address. That address
// also sends every other request to https.
func TestACMEHTTP01(t *testing.T) {
	const domain = "web.pj.test"
	httpAddr := testutil.ClosedAddr(t)
	pb := testutil.PebbleFor(t, domain, httpAddr, testutil.ClosedAddr(t))

	x := testutil.ClosedAddr(t)
	px := pjtest.Proxy("web", x, testutil.StartEcho(t))
	px.TLS = &config.TLS{ACME: &config.ACME{Domains: []string{domain}, Email: "ops@pj.test",
		Directory: pb.Dir, CARoots: pb.CARoots, Storage: filepath.Join(t.TempDir(), "acme"), HTTPListen: httpAddr}}
	r := pjtest.Start(t, pjtest.Config(px), server.Options{})
	r.Logs.WaitLines(t, "answering ACME http-01 challenges", 1)
	wantIssued(t, r, x, domain, pb)

	// Every other request on the http-01 listener is sent to https.
	testutil.WantHTTPSRedirect(t, httpAddr, domain, "/cart")
}

package certs

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// serveHandshakes completes TLS handshakes with cfg on ln until the test
// ends, and greets each connection as serveTLS does.
func serveHandshakes(t *testing.T, ln net.Listener, cfg *tls.Config) {
	testutil.ServeTLS(t, ln, cfg, func(tc *tls.Conn) {
		if tc.ConnectionState().NegotiatedProtocol == ChallengeProto {
			return // a challenge ends with the handshake
		}
		_, _ = io.WriteString(tc, "hello\n")
	})
}

func TestACMEIssuesWithTLSALPN01AndKeepsItOnDisk(t *testing.T) {
	const domain = "app.pj.test"
	tlsLn := testutil.Listen(t, "tcp4")
	pb := testutil.PebbleFor(t, domain, testutil.ClosedAddr(t), tlsLn.Addr().String())
	storage := filepath.Join(t.TempDir(), "acme")
	opt := ServerOptions{ALPN: []string{"http/1.1"}, ACME: &ACMEOptions{
		Domains: []string{domain}, Email: "ops@pj.test", Directory: pb.Dir, CARoots: pb.CARoots, Storage: storage,
	}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := NewStore(opt, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	// Handshakes for the domain fail at once until the certificate is
	// in hand: pebble validates only once it is served here.
	serveHandshakes(t, tlsLn, s.TLSConfig())
	testutil.WaitFor(t, 60*time.Second, "the ACME certificate", func() bool { return s.ACME().Ready(domain) })
	s.Close()
	s.ACME().wait()

	roots := pb.Roots(t)
	st, err := shake(tlsLn.Addr().String(), &tls.Config{ServerName: domain, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("a client that trusts pebble's root refuses the certificate: %v", err)
	}
	if st.NegotiatedProtocol != "http/1.1" {
		t.Errorf("negotiated %q beside ACME, want http/1.1", st.NegotiatedProtocol)
	}
	exp := s.Expiries()
	if len(exp) != 1 || exp[0].Certificate != "acme:"+domain || !exp[0].NotAfter.After(time.Now()) {
		t.Errorf("Expiries = %+v", exp)
	}

	// A restart finds the certificate in storage: pebble is not asked.
	ents, err := os.ReadDir(storage)
	if err != nil || len(ents) < 2 {
		t.Fatalf("storage holds %d entries (%v), want the account key and the certificate", len(ents), err)
	}
	dead := opt
	deadACME := *opt.ACME
	deadACME.Directory = "https://" + testutil.ClosedAddr(t) + "/dir"
	dead.ACME = &deadACME
	s2, err := NewStore(dead, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2.Start()
	defer s2.Close()
	testutil.WaitFor(t, 10*time.Second, "the stored certificate", func() bool { return s2.ACME().Ready(domain) })
	s2.Close()
	s2.ACME().wait()
}

func TestACMEFallsBackToHTTP01(t *testing.T) {
	// Pebble's tls-alpn-01 port has nothing behind it here, so the
	// challenge that works is http-01, answered on HTTPListen.
	const domain = "web.pj.test"
	httpAddr := testutil.ClosedAddr(t)
	pb := testutil.PebbleFor(t, domain, httpAddr, testutil.ClosedAddr(t))
	s, err := NewStore(ServerOptions{ACME: &ACMEOptions{
		Domains: []string{domain}, Directory: pb.Dir, CARoots: pb.CARoots, Storage: t.TempDir(), HTTPListen: httpAddr,
	}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Close)
	testutil.WaitFor(t, 60*time.Second, "the ACME certificate", func() bool { return s.ACME().Ready(domain) })

	// Any other request is sent to https.
	testutil.WantHTTPSRedirect(t, httpAddr, domain, "/shop?item=1")
	s.Close()
	s.ACME().wait()
	if c, err := net.DialTimeout("tcp", httpAddr, 5*time.Second); err == nil {
		c.Close()
		t.Error("the http-01 listener still accepts after its store closed")
	}

	tlsLn := testutil.Listen(t, "tcp4")
	serveHandshakes(t, tlsLn, s.TLSConfig())
	if _, err := shake(tlsLn.Addr().String(), &tls.Config{ServerName: domain, RootCAs: pb.Roots(t)}); err != nil {
		t.Fatalf("the certificate obtained with http-01 is refused: %v", err)
	}
}

func TestACMEHandshakeBeforeTheCertificateFailsAtOnce(t *testing.T) {
	// Nothing answers at the directory: the certificate never comes, and
	// a client is refused without waiting for it.
	s, err := NewStore(ServerOptions{ACME: &ACMEOptions{
		Domains: []string{"slow.pj.test"}, Directory: "https://" + testutil.ClosedAddr(t) + "/dir", Storage: t.TempDir(),
	}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	ln := testutil.Listen(t, "tcp4")
	serveHandshakes(t, ln, s.TLSConfig())
	start := time.Now()
	_, err = shake(ln.Addr().String(), &tls.Config{ServerName: "slow.pj.test", InsecureSkipVerify: true}) //nolint:gosec // no certificate is expected
	if err == nil {
		t.Fatal("a handshake succeeded without a certificate")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the refusal took %s", d)
	}
	if s.ACME().Ready("slow.pj.test") {
		t.Error("Ready without a certificate")
	}
	s.Close()
	s.ACME().wait()
}

func TestIsChallengeAndWants(t *testing.T) {
	a, err := NewACME(ACMEOptions{Domains: []string{"App.pj.test"}, Storage: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tests := []struct {
		sni  string
		alpn []string
		want bool
	}{
		{"app.pj.test", []string{"acme-tls/1"}, true},
		{"APP.pj.test.", []string{"acme-tls/1"}, true},
		{"app.pj.test", []string{"h2", "acme-tls/1"}, false}, // a validation offers nothing else
		{"app.pj.test", []string{"h2"}, false},
		{"other.pj.test", []string{"acme-tls/1"}, false},
		{"app.pj.test", nil, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %v", tt.sni, tt.alpn), func(t *testing.T) {
			if got := a.Wants(tt.sni, tt.alpn); got != tt.want {
				t.Errorf("Wants = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestACMEClientIsSharedAcrossReloadsAndStopsWithTheLastStore(t *testing.T) {
	// Nothing answers at the directory: the client keeps trying, which
	// is a goroutine to see stop. A store built on a reload shares its
	// predecessor's client when the ACME options are the same; closing
	// one of the two (a failed reload discards the new one; a successful
	// one closes the old) leaves the other's client running.
	opt := ServerOptions{ACME: &ACMEOptions{
		Domains: []string{"app.pj.test"}, Directory: "https://" + testutil.ClosedAddr(t) + "/dir", Storage: t.TempDir(),
	}}
	running := func(a *ACME) bool { return a.ctx.Err() == nil }
	for _, closeFirst := range []string{"the new store", "the old store"} {
		t.Run("close "+closeFirst, func(t *testing.T) {
			old, err := NewStore(opt, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			old.Start()
			next, err := NewStore(opt, nil, old)
			if err != nil {
				t.Fatal(err)
			}
			if next.ACME() != old.ACME() {
				t.Fatal("the same ACME options made a second client")
			}
			first, second := next, old
			if closeFirst == "the old store" {
				first, second = old, next
				next.Start()
			}
			first.Close()
			first.Close() // twice is once
			if !running(second.ACME()) {
				t.Fatal("closing one store stopped the client the other still uses")
			}
			second.Close()
			if running(second.ACME()) {
				t.Fatal("the client runs on after its last store closed")
			}
			second.ACME().wait()
		})
	}

	t.Run("a store never started contacts nobody", func(t *testing.T) {
		old, err := NewStore(opt, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		old.Start()
		t.Cleanup(func() {
			old.Close()
			old.ACME().wait() // before the storage is removed: it may be writing there
		})
		changed := opt
		other := *opt.ACME
		other.Email = "new@pj.test"
		changed.ACME = &other
		next, err := NewStore(changed, nil, old)
		if err != nil {
			t.Fatal(err)
		}
		if next.ACME() == old.ACME() {
			t.Fatal("changed ACME options kept the old client")
		}
		next.Close() // a reload that failed: its store never started
		next.ACME().wait()
		if _, err := next.ACME().m.Client.HTTPClient.Get(opt.ACME.Directory); err == nil || !strings.Contains(err.Error(), "stopped") {
			t.Fatalf("a closed client's request = %v, want it refused", err)
		}
		if !running(old.ACME()) {
			t.Fatal("the running store's client stopped")
		}
	})
}

func TestHTTP01ListenerIsSharedAndClosedByTheLastClient(t *testing.T) {
	addr := testutil.ClosedAddr(t)
	newACME := func(domain string) *ACME {
		a, err := NewACME(ACMEOptions{Domains: []string{domain}, Storage: t.TempDir(), HTTPListen: addr}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Close)
		return a
	}
	get := func(host string) (int, error) {
		c := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		defer c.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	a, b := newACME("a.pj.test"), newACME("b.pj.test")
	for _, host := range []string{"a.pj.test", "b.pj.test", "other.pj.test"} {
		if code, err := get(host); err != nil || code != http.StatusFound {
			t.Fatalf("GET / for %s: %d, %v; want a redirect to https", host, code, err)
		}
	}
	a.Close()
	if code, err := get("b.pj.test"); err != nil || code != http.StatusFound {
		t.Fatalf("after one of two clients closed: %d, %v", code, err)
	}
	b.Close()
	if _, err := get("b.pj.test"); err == nil {
		t.Fatal("the listener still answers after its last client closed")
	}

	busy := testutil.Listen(t, "tcp4").Addr().String()
	_, err := NewACME(ACMEOptions{Domains: []string{"c.pj.test"}, Storage: t.TempDir(), HTTPListen: busy}, nil)
	if err == nil || !strings.Contains(err.Error(), "http_listen "+busy) || !strings.Contains(err.Error(), "to itself") {
		t.Fatalf("NewACME on a busy address = %v", err)
	}
}

func TestHTTP01TokenOfEitherClientForOneName(t *testing.T) {
	// Two proxies obtain certificates for one name, each with its own
	// client and tokens: the CA's request is answered by the one that
	// holds the token it asks for. (autocert keeps a token in its
	// storage too, as TOKEN+http-01: that is how the tokens are planted.)
	addr := testutil.ClosedAddr(t)
	newACME := func(token string) *ACME {
		dir := t.TempDir()
		testutil.WriteFileIn(t, dir, token+"+http-01", []byte(token+".key-authorization"))
		a, err := NewACME(ACMEOptions{Domains: []string{"app.pj.test"}, Storage: dir, HTTPListen: addr}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Close)
		return a
	}
	newACME("older")
	newACME("newer")
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	for _, tt := range []struct {
		token string
		code  int
	}{{"older", 200}, {"newer", 200}, {"nobody", 404}} {
		t.Run(tt.token, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/.well-known/acme-challenge/"+tt.token, nil)
			req.Host = "app.pj.test"
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code || tt.code == 200 && string(body) != tt.token+".key-authorization" {
				t.Fatalf("token %s: %d %q", tt.token, resp.StatusCode, body)
			}
		})
	}
}

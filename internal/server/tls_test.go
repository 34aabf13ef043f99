package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// pki is a CA and certificate files for the names a test serves.
type pki struct {
	ca  *testutil.CA
	dir string
}

func newPKI(t *testing.T) *pki { return &pki{ca: testutil.NewCA(t, "test CA"), dir: t.TempDir()} }

// cert writes a server certificate for names and returns its files.
func (p *pki) cert(t *testing.T, file string, names ...string) config.Certificate {
	c, k := p.ca.Issue(t, testutil.Leaf{Names: names})
	return config.Certificate{Cert: testutil.WriteFileIn(t, p.dir, file+".pem", c),
		Key: testutil.WriteFileIn(t, p.dir, file+".key", k)}
}

// caFile writes the CA certificate and returns its file.
func (p *pki) caFile(t *testing.T) string { return testutil.WriteFileIn(t, p.dir, "ca.pem", p.ca.PEM) }

// dialTLS completes a TLS handshake with pj at addr asking for name.
func dialTLS(t *testing.T, addr, name string, roots *x509.CertPool, certs ...tls.Certificate) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots, Certificates: certs})
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { _ = c.Close() })
	return c, nil
}

func TestTLSTerminatesAndChoosesTheCertificateByName(t *testing.T) {
	p := newPKI(t)
	app, db := p.cert(t, "app", "app.example.com"), p.cert(t, "db", "db.example.com", "*.db.example.com")
	backend, _ := countingEcho(t)
	x := testutil.ClosedAddr(t)
	px := pjtest.Proxy("edge", x, backend)
	px.TLS = &config.TLS{Certificates: []config.Certificate{app, db}}
	r := pjtest.Start(t, pjtest.Config(px), server.Options{})

	for _, tc := range []struct{ ask, want string }{
		{"app.example.com", "app.example.com"},
		{"db.example.com", "db.example.com"},
		{"x.db.example.com", "db.example.com"},
		{"", "app.example.com"}, // no name: the first certificate
	} {
		t.Run("sni="+tc.ask, func(t *testing.T) {
			roots := p.ca.Pool()
			verifyName := tc.ask
			if verifyName == "" {
				verifyName = tc.want
			}
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", x, &tls.Config{
				ServerName: tc.ask, RootCAs: roots, InsecureSkipVerify: tc.ask == "",
				VerifyConnection: func(cs tls.ConnectionState) error {
					_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: verifyName, Roots: roots})
					return err
				},
			})
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if got := c.ConnectionState().PeerCertificates[0].Subject.CommonName; got != tc.want {
				t.Errorf("certificate for %q, want the one for %q", got, tc.want)
			}
			// The backend gets the plaintext: the echo comes back through TLS.
			if got := testutil.RoundTrip(t, c, "hello over TLS"); got != "hello over TLS" {
				t.Errorf("echo %q", got)
			}
		})
	}
	line := r.Logs.WaitLines(t, "sni=db.example.com", 1)[0]
	if !strings.Contains(line, "[ok]") || !strings.Contains(line, "tls=1.3") || !strings.Contains(line, backend) {
		t.Errorf("log line %q, want [ok], the backend, tls=1.3 and sni=", line)
	}
}

func TestTLSRequiresClientCertificates(t *testing.T) {
	p := newPKI(t)
	backend, reached := countingEcho(t)
	x := testutil.ClosedAddr(t)
	px := pjtest.Proxy("mtls", x, backend)
	px.TLS = &config.TLS{Certificates: []config.Certificate{p.cert(t, "app", "app.example.com")}, ClientCA: p.caFile(t)}
	r := pjtest.Start(t, pjtest.Config(px), server.Options{})

	t.Run("with a certificate", func(t *testing.T) {
		c, err := dialTLS(t, x, "app.example.com", p.ca.Pool(), p.ca.KeyPair(t, testutil.Leaf{Client: true}))
		if err != nil {
			t.Fatal(err)
		}
		if got := testutil.RoundTrip(t, c, "ping"); got != "ping" {
			t.Fatalf("echo %q", got)
		}
	})
	t.Run("without", func(t *testing.T) {
		before := reached.Load()
		c, err := dialTLS(t, x, "app.example.com", p.ca.Pool())
		if err == nil {
			// TLS 1.3: the client learns of the refusal at its first read.
			_, _ = c.Write([]byte("ping"))
			_, err = c.Read(make([]byte, 1))
		}
		if err == nil {
			t.Fatal("a client without a certificate was served")
		}
		line := r.Logs.WaitLines(t, "[tls_failed]", 1)[0]
		if !strings.Contains(line, "error=") || !strings.Contains(line, "certificate") || !strings.Contains(line, " -> - ") {
			t.Errorf("log line %q, want no backend and the reason", line)
		}
		if got := reached.Load(); got != before {
			t.Errorf("the backend took %d connections from a refused client", got-before)
		}
	})
}

func TestTLSCutsASilentClientAtTheHandshakeTimeout(t *testing.T) {
	p := newPKI(t)
	backend, reached := countingEcho(t)
	x := testutil.ClosedAddr(t)
	px := pjtest.Proxy("silent", x, backend)
	px.ConnectTimeout = 300 * time.Millisecond
	px.TLS = &config.TLS{Certificates: []config.Certificate{p.cert(t, "app", "app.example.com")}}
	r := pjtest.Start(t, pjtest.Config(px), server.Options{})

	c := testutil.Dial(t, x)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || testutil.IsTimeout(err) {
		t.Fatalf("read %d bytes, %v: want the connection closed by pj", n, err)
	}
	line := r.Logs.WaitLines(t, "[tls_failed]", 1)[0]
	if !strings.Contains(line, "not completed within 300ms") {
		t.Errorf("log line %q, want the handshake timeout as the reason", line)
	}
	if reached.Load() != 0 {
		t.Error("a silent client reached the backend")
	}
	testutil.WaitFor(t, 5*time.Second, "the connection to be released", func() bool { return r.Active() == 0 })
}

package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
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
	px := pjconf.Proxy("edge", x, backend)
	px.TLS = &config.TLS{Certificates: []config.Certificate{app, db}}
	r := pjtest.Start(t, pjconf.Config(px), server.Options{})

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
	px := pjconf.Proxy("mtls", x, backend)
	px.TLS = &config.TLS{Certificates: []config.Certificate{p.cert(t, "app", "app.example.com")}, ClientCA: p.caFile(t)}
	r := pjtest.Start(t, pjconf.Config(px), server.Options{})

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
	px := pjconf.Proxy("silent", x, backend)
	px.ConnectTimeout = 300 * time.Millisecond
	px.TLS = &config.TLS{Certificates: []config.Certificate{p.cert(t, "app", "app.example.com")}}
	r := pjtest.Start(t, pjconf.Config(px), server.Options{})

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

// tlsEcho starts a TLS echo backend with a certificate for names from ca,
// asking for a client certificate signed by clientCA if not nil; it
// returns its address and the connections it completed a handshake with.
func tlsEcho(t *testing.T, ca *testutil.CA, clientCA *testutil.CA, names ...string) (string, *atomic.Int64) {
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.KeyPair(t, testutil.Leaf{Names: names})}}
	if clientCA != nil {
		cfg.ClientCAs, cfg.ClientAuth = clientCA.Pool(), tls.RequireAndVerifyClientCert
	}
	ln := testutil.Listen(t, "tcp4")
	n := new(atomic.Int64)
	testutil.Serve(t, tls.NewListener(ln, cfg), func(c net.Conn) {
		tc := c.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if tc.Handshake() != nil {
			return
		}
		n.Add(1)
		_, _ = io.Copy(tc, tc)
		_ = tc.CloseWrite()
	})
	return ln.Addr().String(), n
}

func TestTLSOriginatesToBackends(t *testing.T) {
	p := newPKI(t)
	other := testutil.NewCA(t, "another CA")
	backend, handshakes := tlsEcho(t, p.ca, p.ca, "backend.test")
	cc, ck := p.ca.Issue(t, testutil.Leaf{Client: true})
	good, wrongCA := testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	pg := pjconf.Proxy("good", good, backend)
	pg.BackendTLS = &config.BackendTLS{ServerName: "backend.test", CA: p.caFile(t),
		Cert: testutil.WriteFileIn(t, p.dir, "client.pem", cc), Key: testutil.WriteFileIn(t, p.dir, "client.key", ck)}
	pw := pjconf.Proxy("wrong-ca", wrongCA, backend)
	pw.BackendTLS = &config.BackendTLS{ServerName: "backend.test",
		CA: testutil.WriteFileIn(t, p.dir, "other.pem", other.PEM)}
	r := pjtest.Start(t, pjconf.Config(pg, pw), server.Options{})

	t.Run("verified", func(t *testing.T) {
		c := testutil.Dial(t, good)
		if got := testutil.RoundTrip(t, c, "plain in, TLS out"); got != "plain in, TLS out" {
			t.Fatalf("echo %q", got)
		}
		if handshakes.Load() != 1 {
			t.Errorf("the backend completed %d handshakes, want 1", handshakes.Load())
		}
	})
	t.Run("not verified", func(t *testing.T) {
		c := testutil.Dial(t, wrongCA)
		if got := testutil.ReadAll(t, c); got != "" {
			t.Fatalf("read %q from a backend pj could not verify", got)
		}
		line := r.Logs.WaitLines(t, "[connect_failed]", 1)[0]
		if !strings.Contains(line, "certificate") || !strings.Contains(line, "proxy=wrong-ca") {
			t.Errorf("log line %q, want the verification failure", line)
		}
	})
}

func TestTLSReencrypts(t *testing.T) {
	p := newPKI(t)
	backendCA := testutil.NewCA(t, "backend CA")
	backend, handshakes := tlsEcho(t, backendCA, nil, "backend.test")
	x := testutil.ClosedAddr(t)
	px := pjconf.Proxy("re", x, backend)
	px.TLS = &config.TLS{Certificates: []config.Certificate{p.cert(t, "app", "app.example.com")}}
	px.BackendTLS = &config.BackendTLS{ServerName: "backend.test", CA: testutil.WriteFileIn(t, p.dir, "backend-ca.pem", backendCA.PEM)}
	r := pjtest.Start(t, pjconf.Config(px), server.Options{})

	c, err := dialTLS(t, x, "app.example.com", p.ca.Pool())
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.RoundTrip(t, c, "TLS both ways"); got != "TLS both ways" {
		t.Fatalf("echo %q", got)
	}
	_ = c.Close()
	if handshakes.Load() != 1 {
		t.Errorf("the backend completed %d handshakes, want 1", handshakes.Load())
	}
	r.Logs.WaitLines(t, "tls=1.3 sni=app.example.com", 1)
}

func TestTLSPassthroughRouteBesideATerminatingRoute(t *testing.T) {
	p := newPKI(t)
	dbCA := testutil.NewCA(t, "database CA")
	plain, _ := countingEcho(t)
	db, dbHandshakes := tlsEcho(t, dbCA, nil, "db.example.com")
	x := testutil.ClosedAddr(t)
	app := pjconf.Route("app", config.Match{SNI: []string{"app.example.com"}}, plain)
	pass := pjconf.Route("db", config.Match{SNI: []string{"db.example.com"}}, db)
	px := pjconf.Routed("edge", x, app, pass)
	px.Routes[0].TLS = &config.TLS{Certificates: []config.Certificate{p.cert(t, "app", "app.example.com")}}
	r := pjtest.Start(t, pjconf.Config(px), server.Options{})

	t.Run("terminated", func(t *testing.T) {
		c, err := dialTLS(t, x, "app.example.com", p.ca.Pool())
		if err != nil {
			t.Fatal(err)
		}
		if got := testutil.RoundTrip(t, c, "to the plain backend"); got != "to the plain backend" {
			t.Fatalf("echo %q", got)
		}
	})
	t.Run("passed through", func(t *testing.T) {
		// The database's own certificate, verified against its own CA:
		// pj relayed the handshake untouched.
		c, err := dialTLS(t, x, "db.example.com", dbCA.Pool())
		if err != nil {
			t.Fatal(err)
		}
		if got := testutil.RoundTrip(t, c, "end to end"); got != "end to end" {
			t.Fatalf("echo %q", got)
		}
		if dbHandshakes.Load() != 1 {
			t.Errorf("the database completed %d handshakes, want 1", dbHandshakes.Load())
		}
	})
	if got := r.Logs.Lines("sni=db.example.com"); len(got) > 0 && strings.Contains(got[0], "tls=") {
		t.Errorf("a passed-through connection is logged as terminated: %q", got[0])
	}
}

func TestTLSCertificatesReload(t *testing.T) {
	p := newPKI(t)
	backend, _ := countingEcho(t)
	first := p.cert(t, "app", "app.example.com")
	serial := func(t *testing.T, addr string) string {
		c, err := dialTLS(t, addr, "app.example.com", p.ca.Pool())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	replace := func(t *testing.T) {
		c, k := p.ca.Issue(t, testutil.Leaf{Names: []string{"app.example.com"}})
		testutil.ReplaceFile(t, first.Key, k)
		testutil.ReplaceFile(t, first.Cert, c)
	}
	for _, watch := range []bool{false, true} {
		name := "SIGHUP"
		if watch {
			name = "watch"
		}
		t.Run(name, func(t *testing.T) {
			x := testutil.ClosedAddr(t)
			px := pjconf.Proxy("app", x, backend)
			px.TLS = &config.TLS{Certificates: []config.Certificate{first}}
			cfg := pjconf.Config(px)
			cfg.Watch = watch
			r := pjtest.Start(t, cfg, server.Options{})
			before := serial(t, x)
			// An established connection is not touched by a reload.
			open, err := dialTLS(t, x, "app.example.com", p.ca.Pool())
			if err != nil {
				t.Fatal(err)
			}
			replace(t)
			if !watch {
				if _, err := r.Reload(cfg); err != nil {
					t.Fatal(err)
				}
				if got := serial(t, x); got == before {
					t.Fatal("the old certificate is still served after a reload")
				}
			} else {
				testutil.WaitFor(t, 10*time.Second, "the new certificate", func() bool { return serial(t, x) != before })
			}
			if got := testutil.RoundTrip(t, open, "still here"); got != "still here" {
				t.Errorf("established connection: echo %q", got)
			}
			// A bad file keeps the certificate in use, and says so.
			now := serial(t, x)
			testutil.ReplaceFile(t, first.Cert, []byte("not a certificate\n"))
			if !watch {
				if _, err := r.Reload(cfg); err != nil {
					t.Fatal(err)
				}
			}
			r.Logs.WaitLines(t, "the one loaded before stays in use", 1)
			if got := serial(t, x); got != now {
				t.Errorf("a bad file replaced the certificate in use")
			}
			replace(t) // for the next subtest
		})
	}
}

func TestTLSConnectionsAreCutWhenTheGracePeriodEnds(t *testing.T) {
	p := newPKI(t)
	backend, _ := countingEcho(t)
	x := testutil.ClosedAddr(t)
	px := pjconf.Proxy("app", x, backend)
	px.TLS = &config.TLS{Certificates: []config.Certificate{p.cert(t, "app", "app.example.com")}}
	cfg := pjconf.Config(px)
	cfg.GracePeriod = 200 * time.Millisecond
	r := pjtest.Start(t, cfg, server.Options{})
	c, err := dialTLS(t, x, "app.example.com", p.ca.Pool())
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.RoundTrip(t, c, "open"); got != "open" {
		t.Fatalf("echo %q", got)
	}
	r.Shutdown()
	// The shutdown waits for the TLS connection as for any other, then
	// cuts it when the grace period is over.
	select {
	case <-r.Stopped():
	case <-time.After(10 * time.Second):
		t.Fatal("pj did not stop within 10s of a 200ms grace period")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the TLS connection is still open after shutdown")
	}
	if got := r.Logs.Lines("[shutdown]"); len(got) != 1 || !strings.Contains(got[0], "tls=1.3") {
		t.Errorf("shutdown lines %q, want the TLS connection's", got)
	}
}

func TestTLSHalfCloseTimeout(t *testing.T) {
	// half_close_timeout holds on terminated connections as on plain
	// ones: the client has finished, the backend hangs, pj ends it.
	p := newPKI(t)
	ln := testutil.Listen(t, "tcp4")
	x := testutil.ClosedAddr(t)
	px := pjconf.Proxy("edge", x, ln.Addr().String())
	px.TLS = &config.TLS{Certificates: []config.Certificate{p.cert(t, "app", "app.example.com")}}
	px.HalfCloseTimeout = 300 * time.Millisecond
	r := pjtest.Start(t, pjconf.Config(px), server.Options{})

	c, err := dialTLS(t, x, "app.example.com", p.ca.Pool())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "request"); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	backend := testutil.Accept(t, ln)
	if got := testutil.ReadAll(t, backend); got != "request" {
		t.Fatalf("backend read %q", got)
	}
	// The backend never answers nor closes.
	if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
		t.Fatalf("client read %q, %v; want the connection closed", got, err)
	}
	r.Logs.WaitLines(t, "[timeout]", 1)
	r.Logs.WaitLines(t, "half-close timeout: the backend sent nothing for 300ms after the client finished", 1)
}

func TestTLSBackendFilesReload(t *testing.T) {
	// backend_tls files are read again like certificates: on SIGHUP, and
	// with --watch when they change; a bad file keeps what was loaded.
	p := newPKI(t)
	other := testutil.NewCA(t, "another CA")
	backend, _ := tlsEcho(t, p.ca, nil, "backend.test")
	for _, watch := range []bool{false, true} {
		name := "SIGHUP"
		if watch {
			name = "watch"
		}
		t.Run(name, func(t *testing.T) {
			caFile := testutil.WriteFileIn(t, t.TempDir(), "backend-ca.pem", other.PEM) // the wrong CA
			x := testutil.ClosedAddr(t)
			px := pjtest.Proxy("db", x, backend)
			px.BackendTLS = &config.BackendTLS{ServerName: "backend.test", CA: caFile}
			cfg := pjtest.Config(px)
			cfg.Watch = watch
			r := pjtest.Start(t, cfg, server.Options{})
			if got := testutil.ReadAll(t, testutil.Dial(t, x)); got != "" {
				t.Fatalf("read %q through a backend pj cannot verify", got)
			}
			r.Logs.WaitLines(t, "[connect_failed]", 1)
			reload := func() {
				t.Helper()
				if !watch {
					if _, err := r.Reload(cfg); err != nil {
						t.Fatal(err)
					}
				}
			}

			testutil.ReplaceFile(t, caFile, p.ca.PEM)
			reload()
			if watch {
				r.Logs.WaitLines(t, "backend_tls files reloaded", 1)
			}
			if got := testutil.RoundTrip(t, testutil.Dial(t, x), "verified now"); got != "verified now" {
				t.Fatalf("echo %q after the CA file was replaced", got)
			}

			testutil.ReplaceFile(t, caFile, []byte("not a certificate\n"))
			reload()
			r.Logs.WaitLines(t, "a backend_tls file could not be loaded; what was loaded before stays in use", 1)
			if got := testutil.RoundTrip(t, testutil.Dial(t, x), "still verified"); got != "still verified" {
				t.Fatalf("echo %q after a bad CA file", got)
			}
		})
	}
}

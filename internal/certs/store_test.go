package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// autocert cleans up challenges and authorisations in goroutines
		// of its own after an order; they end by themselves.
		goleak.IgnoreTopFunction("golang.org/x/crypto/acme/autocert.(*Manager).deactivatePendingAuthz"),
		goleak.IgnoreAnyFunction("golang.org/x/crypto/acme/autocert.(*Manager).deleteCertToken"),
		goleak.IgnoreAnyFunction("golang.org/x/crypto/acme/autocert.(*Manager).deleteHTTPToken"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"), // idle keep-alive connections to the test CA
	)
}

// pki is a CA and files written for one test.
type pki struct {
	t   *testing.T
	ca  *testutil.CA
	dir string
}

func newPKI(t *testing.T) *pki {
	return &pki{t: t, ca: testutil.NewCA(t, "pj test CA"), dir: t.TempDir()}
}

// pair issues a certificate for names and writes it as base.pem, base.key.
func (p *pki) pair(base string, l testutil.Leaf) Pair {
	c, k := p.ca.Issue(p.t, l)
	return Pair{Cert: testutil.WriteFileIn(p.t, p.dir, base+".pem", c), Key: testutil.WriteFileIn(p.t, p.dir, base+".key", k)}
}

// serveTLS runs a TLS server with cfg on loopback: each connection, once
// its handshake is done, is greeted with "hello\n".
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	testutil.ServeTLS(t, ln, cfg, func(tc *tls.Conn) {
		_, _ = io.WriteString(tc, "hello\n")
		_, _ = io.Copy(io.Discard, tc)
	})
	return ln.Addr().String()
}

// shake connects to addr with cfg and returns the connection state, or the
// handshake's error, once it has read the server's greeting.
func shake(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// A TLS 1.3 server that refuses the client's certificate says so
	// after the client's handshake is done: read to see it.
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil {
		return c.ConnectionState(), err
	}
	return c.ConnectionState(), nil
}

// served returns the first DNS name of the certificate the server showed
// for a hello with serverName.
func served(t *testing.T, addr string, roots *x509.CertPool, serverName string) string {
	t.Helper()
	st, err := shake(addr, &tls.Config{ServerName: serverName, RootCAs: roots, InsecureSkipVerify: true}) //nolint:gosec // the test looks at which certificate came
	if err != nil {
		t.Fatalf("handshake for %q: %v", serverName, err)
	}
	return st.PeerCertificates[0].DNSNames[0]
}

func newStore(t *testing.T, opt ServerOptions) *Store {
	t.Helper()
	s, err := NewStore(opt, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestCertificateChosenBySNI(t *testing.T) {
	p := newPKI(t)
	s := newStore(t, ServerOptions{Certificates: []Pair{
		p.pair("default", testutil.Leaf{Names: []string{"default.test"}}),
		p.pair("app", testutil.Leaf{Names: []string{"app.example.com", "www.app.example.com"}}),
		p.pair("wild", testutil.Leaf{Names: []string{"*.example.org"}}),
		p.pair("exact-over-wild", testutil.Leaf{Names: []string{"db.example.org"}}),
	}})
	addr := serveTLS(t, s.TLSConfig())
	tests := []struct{ sni, want string }{
		{"app.example.com", "app.example.com"},
		{"www.app.example.com", "app.example.com"},
		{"APP.Example.COM", "app.example.com"},  // names are case-insensitive
		{"app.example.com.", "app.example.com"}, // a trailing dot is the same name
		{"api.example.org", "*.example.org"},
		{"db.example.org", "db.example.org"},    // an exact name wins over a wildcard
		{"a.b.example.org", "default.test"},     // a wildcard is one label
		{"example.org", "default.test"},         // and not the domain itself
		{"unknown.example.net", "default.test"}, // the first is the fallback
		{"", "default.test"},                    // as for a client that sends no name
		{"127.0.0.1", "default.test"},           // clients send no IP as SNI
		{"other.example.com", "default.test"},
	}
	for _, tt := range tests {
		t.Run(tt.sni, func(t *testing.T) {
			if got := served(t, addr, p.ca.Pool(), tt.sni); got != tt.want {
				t.Errorf("for SNI %q the server showed %q, want %q", tt.sni, got, tt.want)
			}
		})
	}
}

func TestVerifiedHandshake(t *testing.T) {
	// A client that verifies accepts what the store chose.
	p := newPKI(t)
	s := newStore(t, ServerOptions{Certificates: []Pair{p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})}})
	addr := serveTLS(t, s.TLSConfig())
	st, err := shake(addr, &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != tls.VersionTLS13 {
		t.Errorf("version %s, want TLS 1.3 by default", VersionName(st.Version))
	}
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	clients := testutil.NewCA(t, "clients CA")
	other := testutil.NewCA(t, "someone else's CA")
	s := newStore(t, ServerOptions{
		Certificates: []Pair{p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})},
		ClientCA:     testutil.WriteFileIn(t, p.dir, "clients.pem", clients.PEM),
	})
	addr := serveTLS(t, s.TLSConfig())
	good := clients.KeyPair(t, testutil.Leaf{Client: true})
	bad := other.KeyPair(t, testutil.Leaf{Client: true})
	tests := []struct {
		name  string
		certs []tls.Certificate
		ok    bool
	}{
		{"a certificate of the client CA", []tls.Certificate{good}, true},
		{"no certificate", nil, false},
		{"a certificate of another CA", []tls.Certificate{bad}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool(),
				// Show the certificate whatever CAs the server names
				// (Go's client would otherwise send none of another CA).
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					if len(tt.certs) == 0 {
						return &tls.Certificate{}, nil
					}
					return &tt.certs[0], nil
				}}
			_, err := shake(addr, cfg)
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && err == nil {
				t.Fatal("accepted a client that should have been refused")
			}
		})
	}
}

func TestMinVersionAndALPN(t *testing.T) {
	p := newPKI(t)
	s := newStore(t, ServerOptions{
		Certificates: []Pair{p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})},
		MinVersion:   "1.3",
		ALPN:         []string{"h2", "http/1.1"},
	})
	addr := serveTLS(t, s.TLSConfig())
	base := func() *tls.Config { return &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool()} }

	t.Run("a TLS 1.2 client is refused", func(t *testing.T) {
		c := base()
		c.MaxVersion = tls.VersionTLS12
		if _, err := shake(addr, c); err == nil || !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("handshake = %v, want a protocol version alert", err)
		}
	})
	t.Run("the server's preference wins", func(t *testing.T) {
		c := base()
		c.NextProtos = []string{"http/1.1", "h2"}
		st, err := shake(addr, c)
		if err != nil {
			t.Fatal(err)
		}
		if st.NegotiatedProtocol != "h2" {
			t.Errorf("negotiated %q, want h2", st.NegotiatedProtocol)
		}
	})
	t.Run("a client that offers no protocol of the list is refused", func(t *testing.T) {
		c := base()
		c.NextProtos = []string{"imap"}
		if _, err := shake(addr, c); err == nil {
			t.Fatal("handshake succeeded")
		}
	})
	t.Run("a client that offers none at all is served", func(t *testing.T) {
		if _, err := shake(addr, base()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestMinVersion12AllowsBoth(t *testing.T) {
	p := newPKI(t)
	s := newStore(t, ServerOptions{Certificates: []Pair{p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})}, MinVersion: "1.2"})
	addr := serveTLS(t, s.TLSConfig())
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		st, err := shake(addr, &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool(), MaxVersion: v})
		if err != nil || st.Version != v {
			t.Errorf("client of at most %s: version %s, %v", VersionName(v), VersionName(st.Version), err)
		}
	}
	old := &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11} //nolint:gosec // the point of the test
	if _, err := shake(addr, old); err == nil {
		t.Error("a TLS 1.1 client was served")
	}
}

// serial returns the serial number of the certificate shown for name.
func serialFor(t *testing.T, addr string, roots *x509.CertPool, name string) string {
	t.Helper()
	st, err := shake(addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return st.PeerCertificates[0].SerialNumber.String()
}

// openConn opens a TLS connection that stays up, to show that a reload
// does not touch it.
func openConn(t *testing.T, addr string, roots *x509.CertPool, name string) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestReloadByRenameKeepsConnectionsAndBadFilesKeepTheOld(t *testing.T) {
	p := newPKI(t)
	pair := p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})
	s := newStore(t, ServerOptions{Certificates: []Pair{pair}})
	addr := echoTLS(t, s.TLSConfig())
	first := serialFor(t, addr, p.ca.Pool(), "app.example.com")
	up := openEcho(t, addr, p.ca.Pool(), "app.example.com")

	// certbot and cert-manager write new files and rename them over the old.
	c2, k2 := p.ca.Issue(t, testutil.Leaf{Names: []string{"app.example.com"}})
	testutil.ReplaceFile(t, pair.Cert, c2)
	testutil.ReplaceFile(t, pair.Key, k2)
	if err := s.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	second := serialFor(t, addr, p.ca.Pool(), "app.example.com")
	if second == first {
		t.Fatal("the reloaded certificate is not served")
	}
	if got := testutil.RoundTrip(t, up, "still here"); got != "still here" {
		t.Fatalf("the connection opened before the reload echoed %q", got)
	}

	tests := []struct {
		name      string
		cert, key []byte
		want      error
	}{
		{"a key of another certificate", c2, mustKey(t, p), ErrMismatch},
		{"a truncated certificate", c2[:len(c2)/2], k2, ErrNoCert},
		{"an empty key", c2, nil, ErrNoKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.ReplaceFile(t, pair.Cert, tt.cert)
			testutil.ReplaceFile(t, pair.Key, tt.key)
			err := s.Reload()
			if !errors.Is(err, tt.want) {
				t.Fatalf("Reload = %v, want %v", err, tt.want)
			}
			if got := serialFor(t, addr, p.ca.Pool(), "app.example.com"); got != second {
				t.Fatalf("after a bad reload the store serves serial %s, want the old %s", got, second)
			}
		})
	}
	t.Run("a removed file", func(t *testing.T) {
		if err := os.Remove(pair.Key); err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(); !errors.Is(err, ErrUnreadable) {
			t.Fatalf("Reload = %v, want ErrUnreadable", err)
		}
		if got := serialFor(t, addr, p.ca.Pool(), "app.example.com"); got != second {
			t.Fatalf("serial %s, want the old %s", got, second)
		}
	})
	if got := testutil.RoundTrip(t, up, "and still"); got != "and still" {
		t.Fatalf("the connection echoed %q", got)
	}
}

func mustKey(t *testing.T, p *pki) []byte {
	_, k := p.ca.Issue(t, testutil.Leaf{Names: []string{"other.example.com"}})
	return k
}

// echoTLS is serveTLS whose connections echo after the greeting.
func echoTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	testutil.ServeTLS(t, ln, cfg, func(tc *tls.Conn) {
		_, _ = io.WriteString(tc, "hello\n")
		_, _ = io.Copy(tc, tc)
	})
	return ln.Addr().String()
}

func openEcho(t *testing.T, addr string, roots *x509.CertPool, name string) *tls.Conn {
	return openConn(t, addr, roots, name)
}

func TestWatchFollowsAKubernetesSecretSwap(t *testing.T) {
	// A Kubernetes secret volume: tls.crt -> ..data/tls.crt, ..data ->
	// ..v1; an update writes ..v2 and renames a new ..data link over the
	// old one.
	p := newPKI(t)
	dir := p.dir
	version := func(name string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		c, k := p.ca.Issue(t, testutil.Leaf{Names: []string{"app.example.com"}})
		testutil.WriteFileIn(t, filepath.Join(dir, name), "tls.crt", c)
		testutil.WriteFileIn(t, filepath.Join(dir, name), "tls.key", k)
	}
	version("..v1")
	must(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
	must(t, os.Symlink("..data/tls.crt", filepath.Join(dir, "tls.crt")))
	must(t, os.Symlink("..data/tls.key", filepath.Join(dir, "tls.key")))
	s := newStore(t, ServerOptions{Certificates: []Pair{{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key")}}})
	addr := echoTLS(t, s.TLSConfig())
	first := serialFor(t, addr, p.ca.Pool(), "app.example.com")
	up := openEcho(t, addr, p.ca.Pool(), "app.example.com")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, 20*time.Millisecond) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	n := 1
	testutil.WaitFor(t, 15*time.Second, "the swapped secret to be served", func() bool {
		if serialFor(t, addr, p.ca.Pool(), "app.example.com") != first {
			return true
		}
		if n < 50 { // the watcher may not be up yet: swap again
			n++
			name := "..v" + strings.Repeat("x", n)
			version(name)
			tmp := filepath.Join(dir, "..data_tmp")
			must(t, os.Symlink(name, tmp))
			must(t, os.Rename(tmp, filepath.Join(dir, "..data")))
		}
		return false
	})
	if got := testutil.RoundTrip(t, up, "untouched"); got != "untouched" {
		t.Fatalf("the connection opened before the swap echoed %q", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestNewStoreOverAPreviousKeepsWhatFailsNow(t *testing.T) {
	p := newPKI(t)
	pair := p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})
	opt := ServerOptions{Certificates: []Pair{pair}}
	prev := newStore(t, opt)
	testutil.ReplaceFile(t, pair.Cert, []byte("not a certificate"))

	if _, err := NewStore(opt, slog.New(slog.DiscardHandler), nil); !errors.Is(err, ErrNoCert) {
		t.Fatalf("at start-up NewStore = %v, want ErrNoCert", err)
	}
	s, err := NewStore(opt, slog.New(slog.DiscardHandler), prev)
	if err != nil {
		t.Fatalf("NewStore over a previous store: %v", err)
	}
	if got, want := s.Expiries()[0].NotAfter, prev.Expiries()[0].NotAfter; !got.Equal(want) {
		t.Errorf("kept certificate expires %v, want %v", got, want)
	}
	// A new pair has nothing to fall back on.
	bad := Pair{Cert: pair.Cert, Key: filepath.Join(p.dir, "missing.key")}
	if _, err := NewStore(ServerOptions{Certificates: []Pair{bad}}, nil, prev); !errors.Is(err, ErrUnreadable) {
		t.Errorf("NewStore with a new unreadable pair = %v, want ErrUnreadable", err)
	}
}

func TestClientCAReloadKeepsOldOnBadFile(t *testing.T) {
	p := newPKI(t)
	clients := testutil.NewCA(t, "clients")
	caFile := testutil.WriteFileIn(t, p.dir, "clients.pem", clients.PEM)
	s := newStore(t, ServerOptions{
		Certificates: []Pair{p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})},
		ClientCA:     caFile,
	})
	addr := serveTLS(t, s.TLSConfig())
	good := clients.KeyPair(t, testutil.Leaf{Client: true})
	cfg := &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool(), Certificates: []tls.Certificate{good}}

	testutil.ReplaceFile(t, caFile, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	if err := s.Reload(); !errors.Is(err, ErrNoCert) {
		t.Fatalf("Reload = %v, want ErrNoCert", err)
	}
	if _, err := shake(addr, cfg); err != nil {
		t.Fatalf("after a bad client_ca the old one should still accept: %v", err)
	}
	next := testutil.NewCA(t, "next clients")
	testutil.ReplaceFile(t, caFile, next.PEM)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := shake(addr, cfg); err == nil {
		t.Fatal("a client of the replaced CA is still accepted")
	}
	cfg.Certificates = []tls.Certificate{next.KeyPair(t, testutil.Leaf{Client: true})}
	if _, err := shake(addr, cfg); err != nil {
		t.Fatalf("a client of the new CA is refused: %v", err)
	}
}

func TestExpiries(t *testing.T) {
	p := newPKI(t)
	end := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	a := p.pair("a", testutil.Leaf{Names: []string{"a.test"}, NotAfter: end})
	b := p.pair("b", testutil.Leaf{Names: []string{"b.test"}, NotAfter: end.Add(time.Hour)})
	s := newStore(t, ServerOptions{Certificates: []Pair{a, b}})
	got := s.Expiries()
	if len(got) != 2 || got[0].Certificate != a.Cert || !got[0].NotAfter.Equal(end) ||
		got[1].Certificate != b.Cert || !got[1].NotAfter.Equal(end.Add(time.Hour)) {
		t.Fatalf("Expiries = %+v", got)
	}
	// A renewed certificate's expiry shows after a reload.
	renewed := end.Add(30 * 24 * time.Hour)
	c, k := p.ca.Issue(t, testutil.Leaf{Names: []string{"a.test"}, NotAfter: renewed})
	testutil.ReplaceFile(t, a.Key, k)
	testutil.ReplaceFile(t, a.Cert, c)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := s.Expiries(); len(got) != 2 || !got[0].NotAfter.Equal(renewed) {
		t.Fatalf("after the renewal, Expiries = %+v", got)
	}
}

func TestNewStoreRefuses(t *testing.T) {
	p := newPKI(t)
	pair := p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})
	tests := []struct {
		name string
		opt  ServerOptions
		want string
	}{
		{"nothing", ServerOptions{}, "no certificates"},
		{"min_version", ServerOptions{Certificates: []Pair{pair}, MinVersion: "1.1"}, `min_version "1.1"`},
		{"client_ca", ServerOptions{Certificates: []Pair{pair}, ClientCA: pair.Key}, "client_ca " + pair.Key + ": no certificate in it; it holds a private key"},
		{"swapped", ServerOptions{Certificates: []Pair{{Cert: pair.Key, Key: pair.Cert}}}, "are cert and key swapped?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewStore(tt.opt, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewStore = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestClientsResumeAcrossReloads(t *testing.T) {
	p := newPKI(t)
	opt := ServerOptions{Certificates: []Pair{p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})}}
	s := newStore(t, opt)
	addr := serveTLS(t, s.TLSConfig())
	cfg := &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool(), ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	if st, err := shake(addr, cfg); err != nil || st.DidResume {
		t.Fatalf("first handshake: resumed %v, %v", st.DidResume, err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if st, err := shake(addr, cfg); err != nil || !st.DidResume {
		t.Fatalf("after Reload: resumed %v, %v", st.DidResume, err)
	}
	// A configuration reload builds a new store over the old one; the
	// listener keeps its config, and clients keep resuming.
	s2, err := NewStore(opt, nil, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s2.Close)
	if s2.TLSConfig() != s.TLSConfig() {
		t.Fatal("the new store has a listener config of its own")
	}
	if st, err := shake(addr, cfg); err != nil || !st.DidResume {
		t.Fatalf("after a new store: resumed %v, %v", st.DidResume, err)
	}
}

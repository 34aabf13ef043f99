package tlsproxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/certs"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// pki is a CA with certificate files in a directory of the test.
type pki struct {
	t   *testing.T
	ca  *testutil.CA
	dir string
}

func newPKI(t *testing.T, name string) *pki {
	return &pki{t: t, ca: testutil.NewCA(t, name), dir: t.TempDir()}
}

func (p *pki) pair(base string, l testutil.Leaf) certs.Pair {
	c, k := p.ca.Issue(p.t, l)
	return certs.Pair{Cert: testutil.WriteFileIn(p.t, p.dir, base+".pem", c), Key: testutil.WriteFileIn(p.t, p.dir, base+".key", k)}
}

func (p *pki) caFile() string { return testutil.WriteFileIn(p.t, p.dir, "ca.pem", p.ca.PEM) }

func (p *pki) terminator(opt certs.ServerOptions) *Terminator {
	p.t.Helper()
	s, err := certs.NewStore(opt, nil, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(s.Close)
	return NewTerminator(s, nil)
}

// app is a terminator of opt serving app.example.com.
func (p *pki) app(opt certs.ServerOptions) *Terminator {
	opt.Certificates = []certs.Pair{p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})}
	return p.terminator(opt)
}

// echoApp is a CA and a route to an echo backend that terminates TLS
// for app.example.com.
func echoApp(t *testing.T) (*pki, *Route) {
	t.Helper()
	p := newPKI(t, "ca")
	r := route(t, testutil.StartEcho(t))
	r.Terminate = p.app(certs.ServerOptions{})
	return p, r
}

// dialApp opens a TLS connection to addr as a client of app.example.com
// that trusts the CA.
func (p *pki) dialApp(t *testing.T, addr string) *tls.Conn {
	t.Helper()
	return tlsDial(t, addr, &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool()})
}

func dialer(t *testing.T, opt certs.ClientOptions) *Dialer {
	t.Helper()
	c, err := certs.NewClient(opt, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return NewDialer(c)
}

// route returns a route to backends (HOST:PORT), with checks off.
func route(t *testing.T, backends ...string) *Route {
	t.Helper()
	var bs []config.Backend
	for _, b := range backends {
		bs = append(bs, config.Backend{Address: b, Weight: 1})
	}
	settings := config.Default().Defaults
	settings.HealthCheck.Interval = 0
	set, err := balance.NewSet(context.Background(), "web", bs, settings, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Route{
		Proxy:          "web",
		Backends:       set,
		Rise:           2,
		Fall:           3,
		ConnectTimeout: 5 * time.Second,
		Stats:          observe.NewProxyStats(),
	}
}

// proxy plays the engine: it accepts on loopback and hands every
// connection over as a descriptor, the way the engine does.
type proxy struct {
	addr     string
	srv      *Server
	log      *testutil.Buffer
	released atomic.Int64
	peek     int // bytes to read before the hand-over, passed as Peeked
}

func startProxy(t *testing.T, r *Route) *proxy {
	return startProxyPeek(t, r, 0)
}

func startProxyPeek(t *testing.T, r *Route, peek int) *proxy {
	t.Helper()
	p := &proxy{log: &testutil.Buffer{}, peek: peek}
	l, err := observe.NewLogger(p.log, "text", "info")
	if err != nil {
		t.Fatal(err)
	}
	p.srv = NewServer(l)
	// Secluded: the tests count connections, and no stray one of another
	// process may come.
	ln := testutil.ListenSecluded(t)
	p.addr = ln.Addr().String()
	var ids atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var peeked []byte
			if p.peek > 0 {
				peeked = make([]byte, p.peek)
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _ := io.ReadFull(c, peeked)
				peeked = peeked[:n]
				_ = c.SetReadDeadline(time.Time{})
			}
			nc := handOver(t, c.(*net.TCPConn))
			p.srv.Serve(Handoff{
				Conn: nc, ID: ids.Add(1), Client: nc.RemoteAddr().(*net.TCPAddr).AddrPort(),
				Listener: p.addr, Accepted: time.Now(), Peeked: peeked, Route: r,
				Done: func() { p.released.Add(1) },
			})
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		p.srv.Cut("", nil)
		p.srv.Wait()
	})
	return p
}

// handOver turns c into a descriptor and back, as the engine will: a
// non-blocking duplicate of the socket goes through FromFD, and c closes.
func handOver(t *testing.T, c *net.TCPConn) net.Conn {
	rc, err := c.SyscallConn()
	if err != nil {
		t.Error(err)
		return c
	}
	var fd int
	var derr error
	_ = rc.Control(func(s uintptr) { fd, derr = unix.Dup(int(s)) })
	_ = c.Close()
	if derr != nil {
		t.Error(derr)
		return c
	}
	_ = unix.SetNonblock(fd, true)
	nc, err := FromFD(fd, "client")
	if err != nil {
		t.Error(err)
		return c
	}
	return nc
}

// line waits for the one access-log line of the proxy's n-th connection.
// A connection that closed without sending a byte is not counted: under
// a parallel "go test ./...", a health check of another test's pj may
// still probe a port that was its backend's and is now this listener's.
func (p *proxy) line(t *testing.T, n int) string {
	t.Helper()
	var lines []string
	testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("%d access-log lines", n), func() bool {
		lines = slices.DeleteFunc(p.log.Lines("] duration="), func(l string) bool {
			return strings.Contains(l, `error="TLS handshake: EOF"`)
		})
		return len(lines) >= n
	})
	return lines[n-1]
}

func wantFields(t *testing.T, line string, fields ...string) {
	t.Helper()
	for _, f := range fields {
		if !strings.Contains(line, f) {
			t.Errorf("log line %q lacks %q", line, f)
		}
	}
}

// tlsDial opens a TLS connection to the proxy.
func tlsDial(t *testing.T, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS to the proxy: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// startTLSEcho runs a TLS echo backend with cfg; it half-closes after the
// client's end of stream.
func startTLSEcho(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	testutil.ServeTLS(t, ln, cfg, func(tc *tls.Conn) {
		if st := tc.ConnectionState(); st.NegotiatedProtocol != "" {
			_, _ = io.WriteString(tc, "alpn="+st.NegotiatedProtocol+";")
		}
		if len(tc.ConnectionState().PeerCertificates) > 0 {
			_, _ = io.WriteString(tc, "client="+tc.ConnectionState().PeerCertificates[0].Subject.CommonName+";")
		}
		_, _ = io.Copy(tc, tc)
		_ = tc.CloseWrite()
	})
	return ln.Addr().String()
}

func TestTerminateToPlainBackendHalfCloseAndRecord(t *testing.T) {
	p, r := echoApp(t)
	px := startProxy(t, r)

	c := p.dialApp(t, px.addr)
	if got := testutil.RoundTrip(t, c, "hello"); got != "hello" {
		t.Fatalf("echo %q", got)
	}
	// Half-close: the client is done sending; the echo backend sees the
	// end, answers it with its own, and the client reads to EOF.
	if _, err := io.WriteString(c, " world"); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ReadAll(t, c); got != " world" {
		t.Fatalf("after the half-close the client read %q", got)
	}
	line := px.line(t, 1)
	wantFields(t, line, "[ok]", "up=11 down=11", "proxy=web", "tls=1.3", "sni=app.example.com", "closed_by=client", "-> "+px.addr+" -> 127.0.0.1:")
	testutil.WaitFor(t, 5*time.Second, "the connection to be released", func() bool { return px.released.Load() == 1 })
	st := r.Stats
	if st.Conns[observe.StatusIndex(observe.StatusOK)].Load() != 1 || st.BytesUp.Load() != 11 || st.BytesDown.Load() != 11 {
		t.Errorf("stats: ok=%d up=%d down=%d", st.Conns[observe.StatusIndex(observe.StatusOK)].Load(), st.BytesUp.Load(), st.BytesDown.Load())
	}
	if n := r.Terminate.Stats().Success.Load(); n != 1 {
		t.Errorf("%d successful handshakes counted, want 1", n)
	}
	if px.srv.Active() != 0 {
		t.Errorf("%d connections still in the table", px.srv.Active())
	}
}

func TestBulkBytesAreExact(t *testing.T) {
	// 8 MiB each way through a terminated and re-encrypted connection.
	p := newPKI(t, "ca")
	bp := newPKI(t, "backend ca")
	backendCert := bp.ca.KeyPair(t, testutil.Leaf{Names: []string{"localhost"}, IPs: []string{"127.0.0.1"}})
	r := route(t, startTLSEcho(t, &tls.Config{Certificates: []tls.Certificate{backendCert}}))
	r.Terminate = p.app(certs.ServerOptions{})
	r.Originate = dialer(t, certs.ClientOptions{CA: bp.caFile()})
	px := startProxy(t, r)

	const n = 8 << 20
	c := p.dialApp(t, px.addr)
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, testutil.NewPattern(7, n))
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got != n || [32]byte(h.Sum(nil)) != testutil.PatternSum(7, n) {
		t.Fatalf("read back %d bytes, want %d, same content: %v", got, n, [32]byte(h.Sum(nil)) == testutil.PatternSum(7, n))
	}
	wantFields(t, px.line(t, 1), "[ok]", "up=8388608 down=8388608", "tls=1.3")
}

func TestOriginateVerifiesTheBackend(t *testing.T) {
	p := newPKI(t, "ca")
	bp := newPKI(t, "backend ca")
	other := newPKI(t, "another ca")
	clients := newPKI(t, "client ca")
	// The backend is configured as localhost:PORT, so the name verified
	// by default is localhost; it wants a client certificate of clients.
	backend := startTLSEcho(t, &tls.Config{
		Certificates: []tls.Certificate{bp.ca.KeyPair(t, testutil.Leaf{Names: []string{"localhost", "db.internal"}})},
		ClientAuth:   tls.VerifyClientCertIfGiven, ClientCAs: clients.ca.Pool(),
	})
	_, port, _ := net.SplitHostPort(backend)
	byName := "localhost:" + port
	clientPair := clients.pair("pj-client", testutil.Leaf{Client: true})

	tests := []struct {
		name    string
		opt     certs.ClientOptions
		backend string
		want    string // the echo's greeting, or the error in the log
		ok      bool
	}{
		{"the backend's CA", certs.ClientOptions{CA: bp.caFile()}, byName, "ping", true},
		{"another CA", certs.ClientOptions{CA: other.caFile()}, byName, "certificate signed by unknown authority", false},
		{"system roots", certs.ClientOptions{}, byName, "certificate signed by unknown authority", false},
		{"insecure_skip_verify", certs.ClientOptions{InsecureSkipVerify: true}, byName, "ping", true},
		{"an IP address is not the certificate's", certs.ClientOptions{CA: bp.caFile()}, backend, "doesn't contain any IP SANs", false},
		{"server_name given", certs.ClientOptions{CA: bp.caFile(), ServerName: "db.internal"}, backend, "ping", true},
		{"server_name wrong", certs.ClientOptions{CA: bp.caFile(), ServerName: "web.internal"}, byName, "not web.internal", false},
		{"client certificate", certs.ClientOptions{CA: bp.caFile(), Cert: clientPair.Cert, Key: clientPair.Key}, byName, "client=client;ping", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := route(t, tt.backend)
			r.Terminate = p.app(certs.ServerOptions{})
			r.Originate = dialer(t, tt.opt)
			px := startProxy(t, r)
			c := p.dialApp(t, px.addr)
			if tt.ok {
				_, _ = io.WriteString(c, "ping")
				_ = c.CloseWrite()
				if got := testutil.ReadAll(t, c); got != tt.want {
					t.Fatalf("read %q, want %q", got, tt.want)
				}
				wantFields(t, px.line(t, 1), "[ok]")
				return
			}
			if got, _ := io.ReadAll(c); len(got) != 0 {
				t.Fatalf("read %q from a backend that should not be reached", got)
			}
			wantFields(t, px.line(t, 1), "[connect_failed]", "error=", tt.want, "tls=1.3")
		})
	}
}

func TestALPNIsPassedToTheBackend(t *testing.T) {
	p := newPKI(t, "ca")
	backend := startTLSEcho(t, &tls.Config{
		Certificates: []tls.Certificate{p.ca.KeyPair(t, testutil.Leaf{Names: []string{"localhost"}})},
		NextProtos:   []string{"h2", "http/1.1"},
	})
	r := route(t, backend)
	r.Terminate = p.app(certs.ServerOptions{ALPN: []string{"h2", "http/1.1"}})
	r.Originate = dialer(t, certs.ClientOptions{InsecureSkipVerify: true})
	px := startProxy(t, r)
	c := tlsDial(t, px.addr, &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool(), NextProtos: []string{"http/1.1"}})
	if c.ConnectionState().NegotiatedProtocol != "http/1.1" {
		t.Fatalf("negotiated %q with pj", c.ConnectionState().NegotiatedProtocol)
	}
	_ = c.CloseWrite()
	if got := testutil.ReadAll(t, c); got != "alpn=http/1.1;" {
		t.Fatalf("the backend said %q, want that it agreed http/1.1 too", got)
	}
}

func TestPlainClientToTLSBackend(t *testing.T) {
	// Origination alone: the engine hands a plain connection over.
	bp := newPKI(t, "backend ca")
	backend := startTLSEcho(t, &tls.Config{Certificates: []tls.Certificate{bp.ca.KeyPair(t, testutil.Leaf{Names: []string{"localhost"}, IPs: []string{"127.0.0.1"}})}})
	r := route(t, backend)
	r.Originate = dialer(t, certs.ClientOptions{CA: bp.caFile()})
	px := startProxy(t, r)
	c := testutil.Dial(t, px.addr)
	if got := testutil.RoundTrip(t, c, "plain in, TLS out"); got != "plain in, TLS out" {
		t.Fatalf("echo %q", got)
	}
	_ = c.CloseWrite()
	if got := testutil.ReadAll(t, c); got != "" {
		t.Fatalf("after the half-close: %q", got)
	}
	line := px.line(t, 1)
	wantFields(t, line, "[ok]", "up=17 down=17")
	if strings.Contains(line, "tls=") {
		t.Errorf("a connection pj did not terminate says tls=: %q", line)
	}
}

func TestHandshakeTimeoutForASilentClient(t *testing.T) {
	p := newPKI(t, "ca")
	backendLn := testutil.ListenSecluded(t)
	var reached atomic.Int64
	testutil.Serve(t, backendLn, func(net.Conn) { reached.Add(1) })
	r := route(t, backendLn.Addr().String())
	r.ConnectTimeout = 200 * time.Millisecond
	r.Terminate = p.app(certs.ServerOptions{})
	px := startProxy(t, r)

	c := testutil.Dial(t, px.addr) // and says nothing
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || testutil.IsTimeout(err) {
		t.Fatalf("read from a silent client's connection = %v, want it closed by pj", err)
	}
	wantFields(t, px.line(t, 1), "-> - [tls_failed]", `error="TLS handshake: not completed within 200ms"`, "closed_by=pj")
	if reached.Load() != 0 {
		t.Error("a failed handshake reached the backend")
	}
	if n := r.Terminate.Stats().Failure.Load(); n != 1 {
		t.Errorf("%d failed handshakes counted, want 1", n)
	}
	if n := r.Stats.Conns[observe.StatusIndex(observe.StatusTLSFailed)].Load(); n != 1 {
		t.Errorf("%d tls_failed connections counted, want 1", n)
	}
}

func TestFailedHandshakesAreLoggedWithTheReason(t *testing.T) {
	p := newPKI(t, "ca")
	clients := newPKI(t, "client ca")
	r := route(t, testutil.StartEcho(t))
	r.Terminate = p.terminator(certs.ServerOptions{
		Certificates: []certs.Pair{p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}})},
		MinVersion:   "1.3", ClientCA: clients.caFile(),
	})
	px := startProxy(t, r)
	good := clients.ca.KeyPair(t, testutil.Leaf{Client: true})
	tests := []struct {
		name string
		cfg  *tls.Config
		want string
	}{
		{"TLS 1.2", &tls.Config{ServerName: "old.example.com", MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true}, "sni=old.example.com closed_by=pj error=\"TLS handshake: tls: client offered only unsupported versions"},
		{"no client certificate", &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool()}, "sni=app.example.com closed_by=pj error=\"TLS handshake: tls: client didn't provide a certificate\""},
		{"plain text", nil, "error=\"TLS handshake: tls: first record does not look like a TLS handshake\""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cfg == nil {
				c := testutil.Dial(t, px.addr)
				_, _ = io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
				_, _ = io.ReadAll(c)
			} else {
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", px.addr, tt.cfg)
				if err == nil {
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					_, err = c.Read(make([]byte, 1))
					_ = c.Close()
				}
				if err == nil {
					t.Fatal("the handshake succeeded")
				}
			}
			wantFields(t, px.line(t, i+1), px.addr+" -> - [tls_failed]", tt.want)
		})
	}
	// None of them reached the backend.
	if n := r.Backends.Pool().Backends()[0].Total.Load(); n != 0 {
		t.Fatalf("failed handshakes made %d backend connections", n)
	}
	c := tlsDial(t, px.addr, &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool(), Certificates: []tls.Certificate{good}})
	if got := testutil.RoundTrip(t, c, "mtls"); got != "mtls" {
		t.Fatalf("a client with a certificate got %q", got)
	}
}

func TestPeekedBytesAreReadFirst(t *testing.T) {
	// A route decider read the start of the ClientHello before the
	// hand-over; the handshake still sees the whole hello.
	p, r := echoApp(t)
	px := startProxyPeek(t, r, 100)
	c := p.dialApp(t, px.addr)
	if got := testutil.RoundTrip(t, c, "peeked"); got != "peeked" {
		t.Fatalf("echo %q", got)
	}
}

func TestIdleTimeoutPassesNothingOnOnceItFired(t *testing.T) {
	// A byte that arrives as the idle timeout fires is either counted (and
	// the connection stays) or dropped with the connection; it is never
	// passed on just before pj ends the connection as quiet. The hook
	// makes the byte arrive in that moment and gives it time to go
	// through, which it must not.
	const idle = 200 * time.Millisecond
	clients := make(chan net.Conn, 1)
	passed := make(chan struct{})
	hook := func() {
		client := <-clients
		_, _ = io.WriteString(client, "x")
		select {
		case <-passed:
		case <-time.After(idle):
		}
	}
	testHookIdleFired.Store(&hook)
	t.Cleanup(func() { testHookIdleFired.Store(nil) })

	p := newPKI(t, "ca")
	ln := testutil.Listen(t, "tcp4")
	r := route(t, ln.Addr().String())
	r.Terminate = p.app(certs.ServerOptions{})
	r.IdleTimeout = idle
	px := startProxy(t, r)
	client := p.dialApp(t, px.addr)
	if _, err := io.WriteString(client, "hi"); err != nil {
		t.Fatal(err)
	}
	backend := testutil.Accept(t, ln)
	_ = backend.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(backend, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	clients <- client
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(backend)
		if len(b) > 0 {
			close(passed)
		}
		got <- string(b)
	}()
	if b := <-got; b != "" {
		t.Fatalf("the backend read %q after the idle timeout fired; the connection then ended as quiet", b)
	}
	wantFields(t, px.line(t, 1), "[timeout]", "up=2 down=0")
}

func TestIdleTimeoutKillAndTable(t *testing.T) {
	p, r := echoApp(t)
	r.IdleTimeout = 300 * time.Millisecond
	px := startProxy(t, r)

	// Idle: traffic keeps it open, silence closes it.
	c := p.dialApp(t, px.addr)
	for range 3 {
		testutil.RoundTrip(t, c, "tick")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil || testutil.IsTimeout(err) {
		t.Fatalf("read on an idle connection = %v, want it closed", err)
	}
	wantFields(t, px.line(t, 1), "[timeout]", "up=12 down=12")

	// Kill, after the table shows the connection.
	r.IdleTimeout = 0
	c2 := p.dialApp(t, px.addr)
	testutil.RoundTrip(t, c2, "hi")
	var id uint64
	testutil.WaitFor(t, 5*time.Second, "the connection in the table", func() bool {
		for _, ci := range px.srv.Connections() {
			if ci.SNI == "app.example.com" && ci.Backend != "" && ci.Up == 2 {
				id = ci.ID
				return true
			}
		}
		return false
	})
	if !px.srv.Kill(id) {
		t.Fatal("Kill found no connection")
	}
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("a killed connection still reads")
	}
	wantFields(t, px.line(t, 2), "[killed]", "closed_by=pj")
	if px.srv.Kill(id) {
		t.Error("Kill of a closed connection reported true")
	}
}

func TestFailoverAndNoBackend(t *testing.T) {
	p := newPKI(t, "ca")
	term := p.app(certs.ServerOptions{})
	cfg := &tls.Config{ServerName: "app.example.com", RootCAs: p.ca.Pool()}

	r := route(t, testutil.ClosedAddr(t), testutil.StartEcho(t))
	r.Terminate = term
	px := startProxy(t, r)
	for range 2 { // whichever the round robin starts with
		c := tlsDial(t, px.addr, cfg)
		if got := testutil.RoundTrip(t, c, "x"); got != "x" {
			t.Fatalf("echo %q", got)
		}
		_ = c.Close()
	}

	dead := testutil.ClosedAddr(t)
	r2 := route(t, dead)
	r2.Terminate = term
	px2 := startProxy(t, r2)
	c := tlsDial(t, px2.addr, cfg)
	if got, _ := io.ReadAll(c); len(got) != 0 {
		t.Fatalf("read %q", got)
	}
	wantFields(t, px2.line(t, 1), "-> "+dead+" [connect_failed]", "connection refused")

	// Its only backend drained: the log line says where to look.
	r3 := route(t, testutil.StartEcho(t))
	r3.Terminate = term
	r3.Backends.Pool().Backends()[0].SetAdmin(balance.AdminDrain)
	px3 := startProxy(t, r3)
	c = tlsDial(t, px3.addr, cfg)
	if got, _ := io.ReadAll(c); len(got) != 0 {
		t.Fatalf("read %q", got)
	}
	wantFields(t, px3.line(t, 1), "[no_backend]", "no backend is eligible", "status page", "GET /api/v1/proxies")
}

func TestCutEndsEveryConnectionAsShutdown(t *testing.T) {
	p, r := echoApp(t)
	px := startProxy(t, r)
	c := p.dialApp(t, px.addr)
	testutil.RoundTrip(t, c, "x")
	px.srv.Cut(px.addr, nil)
	wantFields(t, px.line(t, 1), "[shutdown]")
	testutil.WaitFor(t, 5*time.Second, "release", func() bool { return px.released.Load() == 1 })
}

func TestMetrics(t *testing.T) {
	p := newPKI(t, "ca")
	end := time.Now().Add(72 * time.Hour).Truncate(time.Second)
	pair := p.pair("app", testutil.Leaf{Names: []string{"app.example.com"}, NotAfter: end})
	term := p.terminator(certs.ServerOptions{Certificates: []certs.Pair{pair}})
	term.Stats().Success.Add(3)
	term.Stats().Failure.Add(1)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(func() []Terminated { return []Terminated{{Proxy: "web", Terminator: term}} }))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			if m.Counter != nil {
				got[key] = m.GetCounter().GetValue()
			} else {
				got[key] = m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{
		"pj_tls_handshakes_total,proxy=web,result=success":                                    3,
		"pj_tls_handshakes_total,proxy=web,result=failure":                                    1,
		"pj_tls_certificate_expiry_timestamp_seconds,certificate=" + pair.Cert + ",proxy=web": float64(end.Unix()),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}

func TestFromFDRefusesABadDescriptor(t *testing.T) {
	f, err := unix.Open("/dev/null", unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FromFD(f, "devnull"); err == nil {
		t.Fatal("FromFD took a descriptor that is not a socket")
	}
	// FromFD closed it whatever happened.
	if _, err := unix.FcntlInt(uintptr(f), unix.F_GETFD, 0); err == nil {
		t.Error("the descriptor is still open")
	}
}

func TestHalfCloseTimeout(t *testing.T) {
	// One side has finished sending; the other never answers nor closes
	// (hung). With half_close_timeout the connection ends once the open
	// direction has been silent that long (status timeout, the side that
	// hung named); bytes in that direction keep it open.
	const half = 500 * time.Millisecond
	p := newPKI(t, "ca")
	term := p.app(certs.ServerOptions{})
	tests := []struct {
		name           string
		clientFinishes bool // else the backend finishes first
		want           string
	}{
		{"the client finished, the backend hangs", true, "the backend sent nothing for 500ms after the client finished"},
		{"the backend finished, the client hangs", false, "the client sent nothing for 500ms after the backend finished"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := testutil.Listen(t, "tcp4")
			r := route(t, ln.Addr().String())
			r.Terminate = term
			r.HalfCloseTimeout = half
			px := startProxy(t, r)

			client := p.dialApp(t, px.addr)
			if _, err := io.WriteString(client, "request"); err != nil {
				t.Fatal(err)
			}
			backend := testutil.Accept(t, ln)
			_ = backend.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(backend, make([]byte, len("request"))); err != nil {
				t.Fatal(err)
			}

			// finisher ends its direction; talker then trickles bytes
			// for several timeouts (the connection stays), then hangs.
			var talker, listener net.Conn = backend, client
			finished := time.Now()
			if tt.clientFinishes {
				if err := client.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if got := testutil.ReadAll(t, backend); got != "" {
					t.Fatalf("backend read %q after the request", got)
				}
			} else {
				talker, listener = client, backend
				if err := backend.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if got := testutil.ReadAll(t, client); got != "" {
					t.Fatalf("client read %q", got)
				}
			}
			last := testutil.Trickle(t, talker, listener, half, finished)
			// Then it hangs: the connection ends, once quiet for the
			// timeout.
			_ = listener.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := listener.Read(make([]byte, 1)); err == nil || testutil.IsTimeout(err) {
				t.Fatalf("read after the hang = %v, want the connection closed", err)
			}
			testutil.WantQuiet(t, last, half)
			wantFields(t, px.line(t, 1), "[timeout]", "half-close timeout: "+tt.want)
		})
	}
}

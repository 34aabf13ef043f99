//go:build linux

package engine

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

// Routes through the real engine over loopback: real TLS, SSH, HTTP and
// PostgreSQL clients (or stand-ins that send their very bytes), backends
// that say who they are, and the access log's route= and sni=.

// routed is a harness whose proxy has these routes.
func routed(t testing.TB, o harnessOpt, matchTimeout time.Duration, routes ...config.Route) *harness {
	t.Helper()
	prev := o.change
	o.change = func(p *config.Proxy) {
		if prev != nil {
			prev(p)
		}
		p.Backends = nil
		p.MatchTimeout = matchTimeout
		for i := range routes {
			routes[i].Settings = p.Settings
		}
		p.Routes = routes
	}
	return newHarness(t, o)
}

// lineServer is a backend that answers the first line (or chunk) it
// reads with "name: " and that line, then closes.
func lineServer(t *testing.T, name string) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) { answerLine(c, name) })
	return ln.Addr().String()
}

func answerLine(c net.Conn, name string) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 256)
	n, err := c.Read(b)
	if err != nil {
		return
	}
	_, _ = c.Write(append([]byte(name+": "), b[:n]...))
}

// tlsLineServer is a TLS backend that answers as lineServer does.
func tlsLineServer(t *testing.T, name string, cert tls.Certificate) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	testutil.ServeTLS(t, ln, cfg, func(tc *tls.Conn) {
		answerLine(tc, name)
		_ = tc.CloseWrite()
	})
	return ln.Addr().String()
}

// tlsAsk says "ping" over TLS through addr and returns the answer.
func tlsAsk(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	c := testutil.Dial(t, addr)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake through pj (server name %q): %v", cfg.ServerName, err)
	}
	if _, err := tc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(tc)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	return string(got)
}

// clientHello is the first flight of a crypto/tls client: its ClientHello
// records, exactly as it writes them.
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	rec := &helloRecorder{}
	_ = tls.Client(rec, cfg).Handshake() // fails at the first read, after the hello
	if len(rec.out) < 5 || rec.out[0] != 22 {
		t.Fatalf("no ClientHello written: % x", rec.out)
	}
	return rec.out
}

type helloRecorder struct {
	net.Conn // nil: only Read, Write, Close and deadlines are called
	out      []byte
}

func (r *helloRecorder) Write(b []byte) (int, error) { r.out = append(r.out, b...); return len(b), nil }
func (r *helloRecorder) Read([]byte) (int, error)    { return 0, io.EOF }
func (r *helloRecorder) Close() error                { return nil }
func (r *helloRecorder) SetDeadline(time.Time) error { return nil }
func (r *helloRecorder) SetWriteDeadline(time.Time) error {
	return nil
}

// reframe carries the handshake bytes of the hello in records of at most
// size bytes each: the same hello, as a client that fragments it sends it.
func reframe(t *testing.T, hello []byte, size int) []byte {
	t.Helper()
	var msg []byte
	for b := hello; len(b) > 0; {
		n := int(binary.BigEndian.Uint16(b[3:5]))
		msg = append(msg, b[5:5+n]...)
		b = b[5+n:]
	}
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 22, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// A client is routed by the server name of its hello: several names per
// route, wildcards, and the route that takes the rest. Its handshake goes
// through untouched, to the backend's own certificate.
func TestRoutesByServerName(t *testing.T) {
	cert := testutil.SelfSigned(t, "app.example.com", "*.app.example.com", "www.example.com", "example.com", "other.org")
	h := routed(t, harnessOpt{}, 5*time.Second,
		pjconf.Route("app", config.Match{SNI: []string{"app.example.com", "*.app.example.com"}}, tlsLineServer(t, "app", cert.TLS)),
		pjconf.Route("www", config.Match{SNI: []string{"www.example.com", "Example.COM"}}, tlsLineServer(t, "www", cert.TLS)),
		pjconf.Route("rest", config.Match{}, tlsLineServer(t, "rest", cert.TLS)),
	)
	for i, tc := range []struct {
		name, route string
		classical   bool // no post-quantum key share: a hello of one segment
	}{
		{"app.example.com", "app", false},
		{"eu.app.example.com", "app", false},
		{"EU.App.Example.com", "app", true},
		{"www.example.com", "www", false},
		{"example.com", "www", true},
		{"other.org", "rest", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: tc.name, RootCAs: cert.Pool}
			if tc.classical {
				cfg.CurvePreferences = []tls.CurveID{tls.X25519}
			}
			if got := tlsAsk(t, h.addr, cfg); got != tc.route+": ping" {
				t.Fatalf("answer %q, want route %s", got, tc.route)
			}
			line := h.log.WaitLines(t, "[ok]", i+1)[i]
			if !strings.Contains(line, " route="+tc.route+" ") || !strings.Contains(strings.ToLower(line), " sni="+strings.ToLower(tc.name)+" ") {
				t.Fatalf("log line %q: want route=%s sni=%s", line, tc.route, tc.name)
			}
		})
	}
	if got := h.ln.Proxy().Routes[0].Taken.Load(); got != 3 {
		t.Fatalf("route app counted %d connections, want 3", got)
	}
}

// A hello that trickles in byte by byte, carried in many small records,
// is routed as a whole one is, and the backend receives exactly the bytes
// the client sent, followed by what it sends next. Each byte is written
// once pj has read the one before: every one is a read of its own.
func TestHelloByteByByteOverManyRecords(t *testing.T) {
	peeked := make(chan int, 1<<14)
	baddr, conns := backendConns(t)
	h := routed(t, harnessOpt{onPeek: func(n int) {
		select {
		case peeked <- n:
		default:
		}
	}}, 10*time.Second,
		pjconf.Route("ssh", config.Match{Protocol: "ssh"}, testutil.ClosedAddr(t)),
		pjconf.Route("app", config.Match{SNI: []string{"app.example.com"}}, baddr),
	)
	hello := reframe(t, clientHello(t, &tls.Config{ServerName: "app.example.com"}), 64)
	if len(hello) < 1500 {
		t.Fatalf("a post-quantum hello of %d bytes; want one of more than a segment", len(hello))
	}
	c := testutil.Dial(t, h.addr)
	_ = c.SetNoDelay(true)
	deadline := time.After(30 * time.Second)
	for i := range hello {
		if _, err := c.Write(hello[i : i+1]); err != nil {
			t.Fatal(err)
		}
		if i == len(hello)-1 {
			break // the last byte decides: the connection leaves the peek
		}
		for got := 0; got < i+1; {
			select {
			case got = <-peeked:
			case <-deadline:
				t.Fatalf("pj read %d of the %d bytes written", got, i+1)
			}
		}
	}
	backend := accepted(t, conns)
	_ = backend.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(hello))
	if _, err := io.ReadFull(backend, got); err != nil || !bytes.Equal(got, hello) {
		t.Fatalf("the backend read %d bytes (%v), not the hello as sent", len(got), err)
	}
	if _, err := io.WriteString(c, "after"); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	if rest := testutil.ReadAll(t, backend); rest != "after" {
		t.Fatalf("then the backend read %q", rest)
	}
	_ = backend.Close()
	testutil.ReadAll(t, c)
	// Every byte is counted up.
	h.wantLine(t, "[ok]", "route=app sni=app.example.com", " up="+strconv.Itoa(len(hello)+5)+" ")
}

// SSH, TLS and HTTP clients share one port: each goes where its first
// bytes say.
func TestSSHTLSAndHTTPOnOnePort(t *testing.T) {
	cert := testutil.SelfSigned(t, "app.example.com")
	web := testutil.ServeHTTP(t, "web")
	h := routed(t, harnessOpt{}, 5*time.Second,
		pjconf.Route("ssh", config.Match{Protocol: "ssh"}, lineServer(t, "ssh")),
		pjconf.Route("https", config.Match{Protocol: "tls"}, tlsLineServer(t, "https", cert.TLS)),
		pjconf.Route("http", config.Match{Protocol: "http"}, web),
	)
	t.Run("ssh", func(t *testing.T) {
		c := testutil.Dial(t, h.addr)
		banner := "SSH-2.0-OpenSSH_9.6\r\n"
		if _, err := io.WriteString(c, banner); err != nil {
			t.Fatal(err)
		}
		_ = c.CloseWrite()
		if got := testutil.ReadAll(t, c); got != "ssh: "+banner {
			t.Fatalf("answer %q", got)
		}
	})
	t.Run("tls", func(t *testing.T) {
		if got := tlsAsk(t, h.addr, &tls.Config{ServerName: "app.example.com", RootCAs: cert.Pool}); got != "https: ping" {
			t.Fatalf("answer %q", got)
		}
	})
	t.Run("http", func(t *testing.T) {
		if body := testutil.Get(t, "http://"+h.addr+"/"); body != "web" {
			t.Fatalf("body %q", body)
		}
	})
	for _, r := range []string{"route=ssh", "route=https", "route=http"} {
		h.log.WaitLines(t, r, 1)
	}
}

// OpenSSH's own client, when installed, is routed by its identification
// string to an SSH route.
func TestRealSSHClientIsRouted(t *testing.T) {
	ssh := testutil.LookTool(t, "ssh")
	banner := make(chan string, 1)
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		banner <- line
	})
	h := routed(t, harnessOpt{}, 5*time.Second,
		pjconf.Route("https", config.Match{Protocol: "tls"}, testutil.ClosedAddr(t)),
		pjconf.Route("ssh", config.Match{Protocol: "ssh"}, ln.Addr().String()),
	)
	host, port, _ := net.SplitHostPort(h.addr)
	cmd := exec.CommandContext(t.Context(), ssh, "-F", "/dev/null", "-p", port,
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=10", "u@"+host, "true")
	go func() { _ = cmd.Run() }() // it fails: the backend is no SSH server
	select {
	case line := <-banner:
		if !strings.HasPrefix(line, "SSH-2.0-") {
			t.Fatalf("the SSH backend read %q", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the SSH backend got no identification string; log:\n%s", h.log)
	}
}

// The PostgreSQL SSLRequest a client sends before its ClientHello.
var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// pgStandIn answers an SSLRequest as a PostgreSQL server does (answer
// 'S': with ssl=on), then, if 'S', speaks TLS as lineServer does. It
// counts the SSLRequests it got.
func pgStandIn(t *testing.T, name string, answer byte, cert tls.Certificate) (string, *atomic.Int64) {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	var asked atomic.Int64
	testutil.Serve(t, ln, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		req := make([]byte, 8)
		if _, err := io.ReadFull(c, req); err != nil || !bytes.Equal(req, sslRequest) {
			return
		}
		asked.Add(1)
		if _, err := c.Write([]byte{answer}); err != nil || answer != 'S' {
			return
		}
		tc := tls.Server(c, cfg)
		answerLine(tc, name)
		_ = tc.CloseWrite()
	})
	return ln.Addr().String(), &asked
}

// A PostgreSQL client is answered 'S' by pj, routed by the name in the
// hello that follows, and its SSLRequest is replayed to the backend,
// whose 'S' pj swallows: TLS runs from client to database. A backend that
// answers anything else is a failed connect, and the next is tried.
func TestPostgresBySNIThroughTheEngine(t *testing.T) {
	cert := testutil.SelfSigned(t, "db.example.com", "other.example.com")
	noTLS, refused := pgStandIn(t, "no-tls", 'N', cert.TLS)
	db, _ := pgStandIn(t, "db", 'S', cert.TLS)
	pg, _ := pgStandIn(t, "pg", 'S', cert.TLS)
	h := routed(t, harnessOpt{}, 5*time.Second,
		pjconf.Route("db", config.Match{Protocol: "postgres", SNI: []string{"db.example.com"}}, noTLS, db),
		pjconf.Route("pg", config.Match{Protocol: "postgres"}, pg),
	)
	// Round robin starts one of the two db clients at the backend that
	// refuses TLS: it must fail over to the other.
	for i, tc := range []struct{ sni, answer string }{
		{"db.example.com", "db: ping"},
		{"db.example.com", "db: ping"},
		{"other.example.com", "pg: ping"},
	} {
		c := testutil.Dial(t, h.addr)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(sslRequest); err != nil {
			t.Fatal(err)
		}
		s := make([]byte, 1)
		if _, err := io.ReadFull(c, s); err != nil || s[0] != 'S' {
			t.Fatalf("pj answered %q (%v) to the SSLRequest, want 'S'", s, err)
		}
		tc2 := tls.Client(c, &tls.Config{ServerName: tc.sni, RootCAs: cert.Pool})
		if _, err := tc2.Write([]byte("ping")); err != nil {
			t.Fatalf("TLS through pj to %s: %v", tc.sni, err)
		}
		got, _ := io.ReadAll(tc2)
		_ = c.Close()
		if string(got) != tc.answer {
			t.Fatalf("answer %q, want %q", got, tc.answer)
		}
		line := h.log.WaitLines(t, "[ok]", i+1)[i]
		if !strings.Contains(line, "sni="+tc.sni) || !strings.Contains(line, "up=") {
			t.Fatalf("log line %q", line)
		}
	}
	// The backend that answered 'N' was asked once, and counts as a
	// failed connect: no connection of it was relayed.
	if n := refused.Load(); n != 1 {
		t.Fatalf("the backend that refuses TLS got %d SSLRequests, want 1", n)
	}
	for _, b := range h.ln.Proxy().Routes[0].Pool().Backends() {
		if want := map[bool]uint64{true: 0, false: 2}[b.Address == noTLS]; b.Total.Load() != want {
			t.Fatalf("backend %s relayed %d connections, want %d", b.Address, b.Total.Load(), want)
		}
	}
}

// psql reaches a real PostgreSQL server through pj, routed by the name it
// gives (sslmode=verify-full: it checks the database's own certificate).
func TestPsqlThroughTheEngine(t *testing.T) {
	psql := testutil.LookTool(t, "psql")
	pg := testutil.StartPostgres(t, testutil.SelfSigned(t, "db.example.com"))
	h := routed(t, harnessOpt{}, 5*time.Second,
		pjconf.Route("ssh", config.Match{Protocol: "ssh"}, testutil.ClosedAddr(t)),
		pjconf.Route("db", config.Match{Protocol: "postgres", SNI: []string{"db.example.com"}}, pg.Addr),
	)
	host, port, _ := net.SplitHostPort(h.addr)
	cmd := exec.CommandContext(t.Context(), psql, "-Atc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
		"host=db.example.com hostaddr="+host+" port="+port+" user=postgres dbname=postgres "+
			"sslmode=verify-full sslrootcert="+pg.CAFile+" connect_timeout=10")
	cmd.Env = append(os.Environ(), "PGGSSENCMODE=disable")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "t" {
		t.Fatalf("psql through pj: %v\n%s\nlog:\n%s", err, out, h.log)
	}
	h.wantLine(t, "route=db", "sni=db.example.com")
}

// A client that sends nothing (the server speaks first, as in SMTP) is
// routed, once the match timeout has passed, to the first route that
// needs no bytes, and the backend's greeting reaches it.
func TestSilentClientGetsTheServerFirstRoute(t *testing.T) {
	smtp := testutil.Listen(t, "tcp4")
	testutil.Serve(t, smtp, func(c net.Conn) {
		_, _ = io.WriteString(c, "220 mail ready\r\n")
		answerLine(c, "smtp")
	})
	h := routed(t, harnessOpt{}, 100*time.Millisecond,
		pjconf.Route("app", config.Match{SNI: []string{"app.example.com"}}, testutil.ClosedAddr(t)),
		pjconf.Route("office", config.Match{Source: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, testutil.ClosedAddr(t)),
		pjconf.Route("mail", config.Match{}, smtp.Addr().String()),
	)
	c := testutil.Dial(t, h.addr)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "220 mail ready\r\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	if _, err := io.WriteString(c, "EHLO x"); err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(r); string(got) != "smtp: EHLO x" {
		t.Fatalf("answer %q", got)
	}
	_ = c.Close()
	line := h.log.WaitLines(t, "[ok]", 1)[0]
	if !strings.Contains(line, "route=mail") || strings.Contains(line, "sni=") {
		t.Fatalf("log line %q", line)
	}
}

// A route that needs no bytes and takes the client at once (source only,
// first) makes no client wait: the backend's greeting comes without the
// match timeout, which here is longer than the test.
func TestSourceRouteFirstNeverWaits(t *testing.T) {
	baddr, conns := backendConns(t)
	h := routed(t, harnessOpt{}, time.Hour,
		pjconf.Route("local", config.Match{Source: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, baddr),
		pjconf.Route("app", config.Match{SNI: []string{"app.example.com"}}, testutil.ClosedAddr(t)),
	)
	c := testutil.Dial(t, h.addr)
	backend := accepted(t, conns)
	if _, err := io.WriteString(backend, "hello"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	_ = backend.Close()
	_ = c.Close()
	h.log.WaitLines(t, "route=local", 1)
}

// A client that no route takes is closed, logged no_route with the name
// it asked for, and counted.
func TestNoRoute(t *testing.T) {
	h := routed(t, harnessOpt{}, 5*time.Second,
		pjconf.Route("app", config.Match{SNI: []string{"app.example.com"}}, testutil.ClosedAddr(t)),
		pjconf.Route("ssh", config.Match{Protocol: "ssh"}, testutil.ClosedAddr(t)),
	)
	c := testutil.Dial(t, h.addr)
	if _, err := c.Write(clientHello(t, &tls.Config{ServerName: "other.example.com"})); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ReadAll(t, c); got != "" {
		t.Fatalf("read %q", got)
	}
	line := h.wantLine(t, "[no_route]", " -> - [no_route]", "sni=other.example.com", "closed_by=pj", "no route of the proxy takes the connection")
	if strings.Contains(line, "route=") {
		t.Fatalf("log line %q names a route", line)
	}
	st := h.ln.Proxy().Stats
	testutil.WaitFor(t, 5*time.Second, "no_route counted", func() bool {
		return st.Conns[observe.StatusIndex(observe.StatusNoRoute)].Load() == 1
	})
}

// The bytes read to choose come first and unchanged, after the PROXY
// header a route sends, even when the client sent more with them and
// then ended its side.
func TestPeekedBytesComeFirstAfterTheProxyHeader(t *testing.T) {
	baddr, conns := backendConns(t)
	h := routed(t, harnessOpt{change: func(p *config.Proxy) { p.ProxyProtocol = "v1" }}, 5*time.Second,
		pjconf.Route("http", config.Match{Protocol: "http"}, baddr),
	)
	c := testutil.Dial(t, h.addr)
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("b", 40000)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	backend := accepted(t, conns)
	got := testutil.ReadAll(t, backend)
	hdr, rest, ok := strings.Cut(got, "\r\n")
	pjHost, _, _ := net.SplitHostPort(h.addr)
	if !ok || !strings.HasPrefix(hdr, "PROXY TCP4 127.0.0.1 "+pjHost+" ") || rest != req {
		t.Fatalf("the backend read %d bytes starting %q; want the PROXY header, then the request as sent", len(got), got[:min(len(got), 60)])
	}
	_ = backend.Close()
	testutil.ReadAll(t, c)
	h.wantLine(t, "[ok]", "up=40027 ")
}

// A peer that is not trusted to send a PROXY protocol header is refused
// when it sends one to a proxy with routes, as to one without.
func TestUntrustedHeaderRefusedWhileChoosing(t *testing.T) {
	baddr, _ := backendConns(t)
	h := routed(t, harnessOpt{change: func(p *config.Proxy) {
		p.AcceptProxyProtocol = &config.AcceptProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("10.9.9.9/32")}}
	}}, 5*time.Second, pjconf.Route("http", config.Match{Protocol: "http"}, baddr), pjconf.Route("rest", config.Match{}, baddr))
	c := testutil.Dial(t, h.addr)
	for _, part := range []string{"PRO", "XY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.0\r\n\r\n"} {
		if _, err := io.WriteString(c, part); err != nil && !errors.Is(err, net.ErrClosed) {
			break
		}
	}
	if got := testutil.ReadAll(t, c); got != "" {
		t.Fatalf("read %q", got)
	}
	h.log.WaitLines(t, "[denied]", 1)
}

// The connection table names the server name a routed connection asked
// for, as its log line will.
func TestConnectionsShowTheServerName(t *testing.T) {
	cert := testutil.SelfSigned(t, "app.example.com")
	h := routed(t, harnessOpt{}, 5*time.Second,
		pjconf.Route("app", config.Match{SNI: []string{"app.example.com"}}, tlsLineServer(t, "app", cert.TLS)))
	c := testutil.Dial(t, h.addr)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: "app.example.com", RootCAs: cert.Pool})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	conns := h.e.Connections()
	if len(conns) != 1 || conns[0].SNI != "app.example.com" || conns[0].Route != "app" || conns[0].TLS != "" {
		t.Fatalf("connections %+v, want the one to route app with its sni (and no tls: pj did not terminate it)", conns)
	}
}

package route

// Real clients over loopback: crypto/tls and net/http clients, the ssh and
// psql programs, and a PostgreSQL client stand-in that speaks the bytes
// libpq does. A test front end (peekFront) drives a Decider the way pj's
// event loop does: it reads what has come, calls Decide, writes Reply,
// and once decided replays the bytes to the route's backend.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// peekFront is a listener that decides each connection's route.
type peekFront struct {
	addr      string
	decisions chan Decision
}

// startFront serves tab on loopback. backends[i] is route i's backend,
// or "" to close the connection once decided.
func startFront(t *testing.T, tab *Table, timeout time.Duration, backends ...string) *peekFront {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	f := &peekFront{addr: ln.Addr().String(), decisions: make(chan Decision, 16)}
	testutil.Serve(t, ln, func(c net.Conn) {
		buf, dec, ok := decideConn(c, tab, timeout)
		if !ok {
			return
		}
		f.decisions <- dec
		if dec.Route == NoRoute || dec.Route >= len(backends) || backends[dec.Route] == "" {
			return
		}
		relayDecided(c, buf, dec, backends[dec.Route])
	})
	return f
}

// decideConn reads from c and decides, as the engine does: non-blocking
// reads become reads with the match timeout as their deadline.
func decideConn(c net.Conn, tab *Table, timeout time.Duration) ([]byte, Decision, bool) {
	var d Decider
	d.Reset(tab, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
	buf := make([]byte, 0, MaxPeek)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	dec, more := d.Decide(buf, false, false)
	for more {
		if len(dec.Reply) > 0 {
			if _, err := c.Write(dec.Reply); err != nil {
				return nil, dec, false
			}
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		eof := errors.Is(err, io.EOF)
		timedOut := errors.Is(err, os.ErrDeadlineExceeded)
		if err != nil && !eof && !timedOut {
			return nil, dec, false
		}
		dec, more = d.Decide(buf, eof, timedOut)
	}
	_ = c.SetReadDeadline(time.Time{})
	return buf, dec, true
}

// relayDecided sends the backend what the decision says, in order, then
// relays both ways.
func relayDecided(c net.Conn, buf []byte, dec Decision, backend string) {
	b, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		return
	}
	defer b.Close()
	_ = b.SetDeadline(time.Now().Add(10 * time.Second))
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if dec.Prelude > 0 {
		if _, err := b.Write(buf[dec.Skip : dec.Skip+dec.Prelude]); err != nil {
			return
		}
		got := make([]byte, len(dec.Expect))
		if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, dec.Expect) {
			return
		}
	}
	if _, err := b.Write(buf[dec.Skip+dec.Prelude:]); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(b, c)
		_ = b.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(c, b)
	_ = c.(*net.TCPConn).CloseWrite()
	<-done
}

func (f *peekFront) next(t *testing.T) Decision {
	t.Helper()
	select {
	case d := <-f.decisions:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no decision within 10 s")
	}
	return Decision{}
}

// tlsEcho is a TLS server that answers each line with "name: line".
func tlsEcho(t *testing.T, name string, cert tls.Certificate) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1", "postgresql"}}
	testutil.Serve(t, ln, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		serveTLSLine(tls.Server(c, cfg), name)
	})
	return ln.Addr().String()
}

func serveTLSLine(c *tls.Conn, name string) {
	line := make([]byte, 64)
	n, err := c.Read(line)
	if err != nil {
		return
	}
	_, _ = c.Write(append([]byte(name+": "), line[:n]...))
	_ = c.CloseWrite()
}

// pgBackend is a PostgreSQL server stand-in: it answers an SSLRequest
// with 'S', as a server with ssl=on does, then speaks TLS.
func pgBackend(t *testing.T, name string, cert tls.Certificate) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	testutil.Serve(t, ln, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		req := make([]byte, 8)
		if _, err := io.ReadFull(c, req); err != nil || !bytes.Equal(req, sslRequest) {
			return
		}
		if _, err := c.Write([]byte{'S'}); err != nil {
			return
		}
		serveTLSLine(tls.Server(c, cfg), name)
	})
	return ln.Addr().String()
}

// tlsAsk connects through addr as a TLS client, sends "ping" and returns
// the answer and the certificate the server showed.
func tlsAsk(t *testing.T, c net.Conn, cfg *tls.Config) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake through the front: %v", err)
	}
	if _, err := tc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(tc)
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

// crypto/tls clients, post-quantum or not, are routed by their names and
// offered protocols, and their handshake goes through untouched.
func TestRealTLSClients(t *testing.T) {
	cert := testutil.SelfSigned(t, "app.example.com", "db.example.com")
	tab := mustTable(t,
		Match{SNI: []string{"app.example.com"}},
		Match{ALPN: []string{"h2"}},
		Match{},
	)
	front := startFront(t, tab, 5*time.Second,
		tlsEcho(t, "app", cert.TLS), tlsEcho(t, "h2", cert.TLS), tlsEcho(t, "default", cert.TLS))
	cases := []struct {
		name   string
		sni    string
		alpn   []string
		curves []tls.CurveID
		route  int
		answer string
	}{
		{"post-quantum, by name", "app.example.com", []string{"h2", "http/1.1"}, nil, 0, "app: ping"},
		{"classical, by name", "app.example.com", nil, []tls.CurveID{tls.X25519}, 0, "app: ping"},
		{"post-quantum, by alpn", "db.example.com", []string{"http/1.1", "h2"}, nil, 1, "h2: ping"},
		{"no match", "db.example.com", []string{"http/1.1"}, nil, 2, "default: ping"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testutil.Dial(t, front.addr)
			got := tlsAsk(t, c, &tls.Config{ServerName: tc.sni, NextProtos: tc.alpn, CurvePreferences: tc.curves, RootCAs: cert.Pool})
			dec := front.next(t)
			if dec.Route != tc.route || dec.SNI != tc.sni || !slices.Equal(dec.ALPN, tc.alpn) || got != tc.answer {
				t.Fatalf("route %d sni %q alpn %q answer %q; want %d %q %q %q",
					dec.Route, dec.SNI, dec.ALPN, got, tc.route, tc.sni, tc.alpn, tc.answer)
			}
		})
	}
}

// A client that writes its hello a few bytes at a time, each write its
// own TCP segment, is routed as one that writes it at once.
func TestHelloTrickledOverLoopback(t *testing.T) {
	tab := mustTable(t, Match{SNI: []string{"app.example.com"}}, Match{})
	front := startFront(t, tab, 5*time.Second)
	hello := reframe(t, realHello(t, helloSpec{sni: "app.example.com", pq: true}), 300)
	c := testutil.Dial(t, front.addr)
	_ = c.SetNoDelay(true)
	for i := 0; i < len(hello); i += 50 {
		if _, err := c.Write(hello[i:min(i+50, len(hello))]); err != nil {
			t.Fatal(err)
		}
	}
	if dec := front.next(t); dec.Route != 0 || dec.SNI != "app.example.com" {
		t.Fatalf("route %d sni %q", dec.Route, dec.SNI)
	}
}

// The PostgreSQL client stand-in speaks libpq's bytes: SSLRequest, then,
// once told 'S', a TLS handshake naming the server. TLS runs end to end:
// the client verifies the database's certificate, not pj's.
func TestPostgresBySNI(t *testing.T) {
	cert := testutil.SelfSigned(t, "db.example.com", "app.example.com")
	tab := mustTable(t,
		Match{Protocol: ProtocolPostgres, SNI: []string{"db.example.com"}},
		Match{Protocol: ProtocolPostgres},
	)
	front := startFront(t, tab, 5*time.Second, pgBackend(t, "db", cert.TLS), pgBackend(t, "other", cert.TLS))
	for _, tc := range []struct {
		name, sni, answer string
		route             int
		gssenc            bool
	}{
		{"by name", "db.example.com", "db: ping", 0, false},
		{"another name", "app.example.com", "other: ping", 1, false},
		{"gssenc first", "db.example.com", "db: ping", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testutil.Dial(t, front.addr)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.gssenc {
				pgAsk(t, c, gssencRequest, 'N')
			}
			pgAsk(t, c, sslRequest, 'S')
			got := tlsAsk(t, c, &tls.Config{ServerName: tc.sni, RootCAs: cert.Pool})
			dec := front.next(t)
			if got != tc.answer || dec.Route != tc.route || dec.SNI != tc.sni || dec.Protocol != ProtocolPostgres {
				t.Fatalf("answer %q, decision %+v", got, dec)
			}
		})
	}
}

func pgAsk(t *testing.T, c net.Conn, req []byte, want byte) {
	t.Helper()
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1)
	if _, err := io.ReadFull(c, got); err != nil || got[0] != want {
		t.Fatalf("answer to % x: %q, %v; want %q", req, got, err, want)
	}
}

// psql itself: libpq sends the SSLRequest, takes pj's 'S', and sends a
// ClientHello naming the host it was given.
func TestPsqlBySNI(t *testing.T) {
	psql := testutil.LookTool(t, "psql")
	tab := mustTable(t, Match{Protocol: ProtocolPostgres, SNI: []string{"db.example.com"}}, Match{})
	front := startFront(t, tab, 5*time.Second)
	host, port, _ := net.SplitHostPort(front.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql,
		"host=db.example.com hostaddr="+host+" port="+port+" user=u dbname=d sslmode=require connect_timeout=10",
		"-c", "select 1")
	cmd.Env = append(os.Environ(), "PGGSSENCMODE=disable", "PGPASSWORD=x")
	out, _ := cmd.CombinedOutput() // psql fails: nothing is behind the front
	dec := front.next(t)
	if dec.Route != 0 || dec.SNI != "db.example.com" || dec.Protocol != ProtocolPostgres || dec.Prelude != 8 {
		t.Fatalf("decision %+v; psql said %s", dec, out)
	}
}

// psql through the front to a real PostgreSQL server with ssl=on: pj
// answers the SSLRequest, routes on the ClientHello, replays the request
// to the server and swallows its 'S'. psql verifies the server's own
// certificate (sslmode=verify-full): TLS runs from psql to PostgreSQL.
func TestPsqlToRealPostgres(t *testing.T) {
	psql := testutil.LookTool(t, "psql")
	pg := testutil.StartPostgres(t, testutil.SelfSigned(t, "db.example.com"))
	tab := mustTable(t, Match{Protocol: ProtocolPostgres, SNI: []string{"db.example.com"}}, Match{})
	front := startFront(t, tab, 5*time.Second, pg.Addr)
	host, port, _ := net.SplitHostPort(front.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-Atc", "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()",
		"host=db.example.com hostaddr="+host+" port="+port+" user=postgres dbname=postgres "+
			"sslmode=verify-full sslrootcert="+pg.CAFile+" connect_timeout=10")
	cmd.Env = append(os.Environ(), "PGGSSENCMODE=disable")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "t|TLSv1.3") {
		t.Fatalf("psql through the front: %v\n%s", err, out)
	}
	if dec := front.next(t); dec.Route != 0 || dec.SNI != "db.example.com" || dec.Prelude != 8 {
		t.Fatalf("decision %+v", dec)
	}
}

// OpenSSH's client sends its identification string first.
func TestSSHClient(t *testing.T) {
	ssh := testutil.LookTool(t, "ssh")
	tab := mustTable(t, Match{Protocol: ProtocolSSH}, Match{})
	front := startFront(t, tab, 5*time.Second)
	host, port, _ := net.SplitHostPort(front.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ssh, "-F", "/dev/null", "-p", port,
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=10", "u@"+host, "true")
	out, _ := cmd.CombinedOutput() // ssh fails: nothing is behind the front
	if dec := front.next(t); dec.Route != 0 || dec.Protocol != ProtocolSSH {
		t.Fatalf("decision %+v; ssh said %s", dec, out)
	}
}

// net/http's client: a request line.
func TestHTTPClient(t *testing.T) {
	tab := mustTable(t, Match{Protocol: ProtocolSSH}, Match{Protocol: ProtocolHTTP})
	front := startFront(t, tab, 5*time.Second, "", testutil.ServeHTTP(t, "web"))
	body := testutil.Get(t, "http://"+front.addr+"/")
	if dec := front.next(t); dec.Route != 1 || dec.Protocol != ProtocolHTTP || body != "web" {
		t.Fatalf("decision %+v, body %q", dec, body)
	}
}

// A client that sends nothing (the server speaks first, as in SMTP) goes,
// after the match timeout, to the first route that needs no bytes.
func TestSilentClient(t *testing.T) {
	tab := mustTable(t, Match{SNI: []string{"app.example.com"}}, Match{Source: testutil.Prefixes("10.0.0.0/8")}, Match{})
	front := startFront(t, tab, 50*time.Millisecond)
	c := testutil.Dial(t, front.addr)
	if dec := front.next(t); dec.Route != 2 {
		t.Fatalf("route %d, want the default", dec.Route)
	}
	_ = c.Close()
}

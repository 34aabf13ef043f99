package admin

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	tu "github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

func TestTLSConnectionsInTheAPIAndMetrics(t *testing.T) {
	ca := tu.NewCA(t, "test CA")
	dir := t.TempDir()
	cert, key := ca.Issue(t, tu.Leaf{Names: []string{"app.example.com"}})
	px := pjconf.Proxy("secure", "127.0.0.1:0", tu.StartEcho(t))
	px.TLS = &config.TLS{Certificates: []config.Certificate{{
		Cert: tu.WriteFileIn(t, dir, "app.pem", cert), Key: tu.WriteFileIn(t, dir, "app.key", key)}}}
	p := start(t, Options{}, px)
	addr := p.proxies(t).Proxies[0].Listen

	dial := func() (*tls.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{ServerName: "app.example.com", RootCAs: ca.Pool()})
	}
	if _, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: "app.example.com"}); err == nil { // does not trust pj's CA
		t.Fatal("a client that does not trust the certificate completed a handshake")
	}
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if got := tu.RoundTrip(t, c, "0123456789"); got != "0123456789" {
		t.Fatal(got)
	}
	cj := p.onlyConnection(t, 10)
	if cj.Proxy != "secure" || cj.Client != c.LocalAddr().String() || cj.TLS != "1.3" || cj.SNI != "app.example.com" {
		t.Fatalf("connection %+v", cj)
	}
	fams := p.metrics(t)
	if v := value(t, fams, "pj_tls_handshakes_total", map[string]string{"proxy": "secure", "result": "success"}); v != 1 {
		t.Errorf("successful handshakes = %v, want 1", v)
	}
	// Under a parallel go test ./..., another test process may still dial
	// a port that was its own (a health check, a warm pool of another pj)
	// and is now this listener's: such a connection, which sends nothing,
	// is one more failed handshake, and is logged as one.
	strays := len(p.logs.Lines(`error="TLS handshake: EOF"`))
	if v := value(t, fams, "pj_tls_handshakes_total", map[string]string{"proxy": "secure", "result": "failure"}); v != float64(1+strays) {
		t.Errorf("failed handshakes = %v, want 1 (and %d from connections that sent nothing)", v, strays)
	}
	exp := value(t, fams, "pj_tls_certificate_expiry_timestamp_seconds", map[string]string{"proxy": "secure", "certificate": dir + "/app.pem"})
	if exp < float64(time.Now().Unix()) || exp > float64(time.Now().Add(25*time.Hour).Unix()) {
		t.Errorf("expiry %v, want within the certificate's day", exp)
	}

	if code, body := p.do(t, "DELETE", "/api/v1/connections/"+cj.ID, "", ""); code != 204 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if b, err := io.ReadAll(c); len(b) != 0 || err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the killed connection read %q, %v; want its end", b, err)
	}
	p.logs.WaitLines(t, "[killed]", 1)
}

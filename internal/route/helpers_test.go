package route

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// helloSpec is a client whose ClientHello a test needs.
type helloSpec struct {
	sni   string
	alpn  []string
	pq    bool // offer X25519MLKEM768, as Go's and Chrome's clients do by default
	max12 bool // a TLS 1.2 client
}

var (
	hellosMu sync.Mutex
	hellos   = map[string][]byte{}
)

// realHello is the first flight of a crypto/tls client configured by
// spec, captured over loopback by a crypto/tls server that stops after
// reading it: the bytes a client really sends, record framing included.
func realHello(tb testing.TB, spec helloSpec) []byte {
	tb.Helper()
	key := fmt.Sprint(spec)
	hellosMu.Lock()
	defer hellosMu.Unlock()
	if b, ok := hellos[key]; ok {
		return b
	}
	cfg := &tls.Config{
		ServerName:         spec.sni,
		NextProtos:         spec.alpn,
		InsecureSkipVerify: true, //nolint:gosec // the handshake never completes; only the hello matters
	}
	if !spec.pq {
		cfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	}
	if spec.max12 {
		cfg.MaxVersion = tls.VersionTLS12
	}
	b := captureFirstFlight(tb, func(c net.Conn) { _ = tls.Client(c, cfg).Handshake() })
	hellos[key] = b
	return b
}

// captureFirstFlight runs client against a loopback listener and returns
// what a crypto/tls server read before it had a whole ClientHello.
func captureFirstFlight(tb testing.TB, client func(net.Conn)) []byte {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		client(c)
	}()
	defer func() { <-done }()
	if tl, ok := ln.(*net.TCPListener); ok {
		_ = tl.SetDeadline(time.Now().Add(5 * time.Second))
	}
	c, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	rec := &recorder{Conn: c}
	seen := false
	stop := errors.New("stop")
	_ = tls.Server(rec, &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		seen = true
		return nil, stop
	}}).Handshake()
	if !seen {
		tb.Fatalf("the client's hello did not parse; read %d bytes", len(rec.read))
	}
	return rec.read
}

// recorder keeps what is read through it and writes nothing.
type recorder struct {
	net.Conn
	read []byte
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.read = append(r.read, p[:n]...)
	return n, err
}

func (r *recorder) Write(p []byte) (int, error) { return len(p), nil }

// handshakeOf returns the handshake bytes the records of b carry.
func handshakeOf(tb testing.TB, b []byte) []byte {
	tb.Helper()
	var out []byte
	for len(b) > 0 {
		if len(b) < 5 || b[0] != recordHandshake {
			tb.Fatalf("not a handshake record: % x", b[:min(len(b), 5)])
		}
		n := int(binary.BigEndian.Uint16(b[3:5]))
		out = append(out, b[5:5+n]...)
		b = b[5+n:]
	}
	return out
}

// reframe carries the handshake bytes of the hello in records of at most
// size bytes each: the same hello, as a client that fragments it sends it.
func reframe(tb testing.TB, b []byte, size int) []byte {
	tb.Helper()
	msg := handshakeOf(tb, b)
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, recordHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// helloWith is a ClientHello in one record, offering TLS_AES_128_GCM_SHA256
// and these extensions, each made by ext.
func helloWith(exts ...[]byte) []byte {
	b := []byte{3, 3}
	b = append(b, make([]byte, 32)...)       // random
	b = append(b, 0, 0, 2, 0x13, 0x01, 1, 0) // no session id, one suite, null compression
	e := cat(exts...)
	b = append(b, byte(len(e)>>8), byte(len(e)))
	b = append(b, e...)
	msg := append([]byte{typeClientHello, 0, byte(len(b) >> 8), byte(len(b))}, b...)
	return append([]byte{recordHandshake, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

// ext is an extension of type typ carrying data.
func ext(typ uint16, data ...byte) []byte {
	return append([]byte{byte(typ >> 8), byte(typ), byte(len(data) >> 8), byte(len(data))}, data...)
}

// sniExt is a server_name extension (RFC 6066 3) listing these host names.
func sniExt(names ...string) []byte {
	var list []byte
	for _, n := range names {
		list = append(append(list, 0, byte(len(n)>>8), byte(len(n))), n...)
	}
	return ext(extServerName, append([]byte{byte(len(list) >> 8), byte(len(list))}, list...)...)
}

// sslRequest is the eight bytes a PostgreSQL client sends to ask for TLS.
var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// gssencRequest asks for GSSAPI encryption.
var gssencRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}

// startup is a StartupMessage of protocol 3.0 for user "u", database "d".
func startup() []byte {
	body := []byte{0, 3, 0, 0}
	for _, s := range []string{"user", "u", "database", "d"} {
		body = append(body, s...)
		body = append(body, 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(4+len(body))), body...)
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func mustTable(tb testing.TB, matches ...Match) *Table {
	tb.Helper()
	t, err := NewTable(matches)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

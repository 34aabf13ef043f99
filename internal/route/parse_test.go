package route

import (
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// pj reads ClientHellos with a parser of its own (parseHello): crypto/tls's
// costs several microseconds and dozens of allocations per connection. These
// tests hold it to crypto/tls's: on any bytes, what crypto/tls reads (the
// server name and the protocols it hands GetConfigForClient), parseHello
// reads the same; what parseHello refuses, crypto/tls refuses too.

// stdHello reads the hello whose records b holds whole with crypto/tls: a
// server handshake over a connection that replays b and refuses writes,
// stopped by GetConfigForClient once the hello is parsed.
func stdHello(b []byte) (sni string, alpn []string, ok bool) {
	r := &replay{b: b}
	_ = tls.Server(r, &tls.Config{GetConfigForClient: func(info *tls.ClientHelloInfo) (*tls.Config, error) {
		r.seen, r.sni, r.alpn = true, info.ServerName, info.SupportedProtos
		return nil, errors.New("stop: the hello is read")
	}}).Handshake()
	return r.sni, r.alpn, r.seen
}

// replay is a net.Conn that reads the bytes of one ClientHello and goes
// nowhere.
type replay struct {
	net.Conn // nil: crypto/tls calls only the methods below
	b        []byte
	seen     bool
	sni      string
	alpn     []string
}

func (r *replay) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, net.ErrClosed
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func (r *replay) Write([]byte) (int, error)        { return 0, net.ErrClosed }
func (r *replay) SetDeadline(time.Time) error      { return nil }
func (r *replay) SetReadDeadline(time.Time) error  { return nil }
func (r *replay) SetWriteDeadline(time.Time) error { return nil }

// ownHello reads b as pj does: the walk over the records, then parseHello.
func ownHello(b []byte) (sni string, alpn []string, ok bool) {
	var h hello
	if h.read(b, MaxPeek) != helloDone {
		return "", nil, false
	}
	return h.sni, h.alpn, true
}

// agree fails the test when parseHello and crypto/tls disagree on b.
func agree(t *testing.T, b []byte) {
	t.Helper()
	sni, alpn, ok := ownHello(b)
	ssni, salpn, sok := stdHello(b)
	switch {
	case sok && !ok:
		t.Fatalf("crypto/tls reads sni %q alpn %q; pj refuses the hello", ssni, salpn)
	case sok && (sni != ssni || !slices.Equal(alpn, salpn)):
		t.Fatalf("pj reads sni %q alpn %q; crypto/tls %q %q", sni, alpn, ssni, salpn)
	}
}

func TestParseHelloAgreesWithCryptoTLS(t *testing.T) {
	for _, tc := range helloSpecs {
		t.Run(tc.name, func(t *testing.T) {
			b := realHello(t, tc.spec)
			if _, _, ok := stdHello(b); !ok {
				t.Fatal("crypto/tls does not read a hello crypto/tls wrote")
			}
			agree(t, b)
			agree(t, reframe(t, b, 7))
		})
	}
}

// Hellos crypto/tls refuses for the fields routing reads are refused too.
func TestParseHelloRefuses(t *testing.T) {
	body := func(exts ...[]byte) []byte {
		b := []byte{3, 3}
		b = append(b, make([]byte, 32)...)       // random
		b = append(b, 0, 0, 2, 0x13, 0x01, 1, 0) // no session id, one suite, null compression
		var e []byte
		for _, x := range exts {
			e = append(e, x...)
		}
		b = append(b, byte(len(e)>>8), byte(len(e)))
		b = append(b, e...)
		msg := append([]byte{typeClientHello, 0, byte(len(b) >> 8), byte(len(b))}, b...)
		return append([]byte{recordHandshake, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
	}
	ext := func(typ uint16, data ...byte) []byte {
		return append([]byte{byte(typ >> 8), byte(typ), byte(len(data) >> 8), byte(len(data))}, data...)
	}
	name := func(ns ...string) []byte { // a server_name list of host names
		var list []byte
		for _, n := range ns {
			list = append(append(list, 0, byte(len(n)>>8), byte(len(n))), n...)
		}
		return append([]byte{byte(len(list) >> 8), byte(len(list))}, list...)
	}
	good := ext(extServerName, name("app.example.com")...)
	cases := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"one name", body(good), true},
		{"protocols", body(good, ext(extALPN, 0, 6, 2, 'h', '2', 2, 'h', '3')), true},
		{"no extensions", body(), true},
		{"a name ending in a dot", body(ext(extServerName, name("app.example.com.")...)), false},
		{"server_name twice", body(good, good), false},
		{"two host names", body(ext(extServerName, name("a.example", "b.example")...)), false},
		{"an empty name list", body(ext(extServerName, 0, 0)), false},
		{"an empty protocol", body(ext(extALPN, 0, 1, 0)), false},
		{"alpn with bytes after its list", body(ext(extALPN, 0, 3, 2, 'h', '2', 9)), false},
		{"an extension longer than its list", body(ext(extServerName, 0, 40)), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, ok := ownHello(tc.b)
			_, _, sok := stdHello(tc.b)
			if ok != tc.ok || sok != tc.ok {
				t.Fatalf("pj reads it: %v, crypto/tls: %v; want %v", ok, sok, tc.ok)
			}
			agree(t, tc.b)
		})
	}
}

// FuzzParseHello holds parseHello to crypto/tls on hostile hellos, seeded
// with real ones and cut-down forms of them.
func FuzzParseHello(f *testing.F) {
	for _, tc := range helloSpecs {
		b := realHello(f, tc.spec)
		f.Add(b)
		f.Add(reframe(f, b, 100))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > MaxPeek {
			b = b[:MaxPeek]
		}
		// One hello may cost at most a second and 64 MiB: more is a finding.
		testutil.WithinBudget(t, func() { agree(t, b) })
	})
}

package route

import (
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
	"golang.org/x/crypto/cryptobyte"
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
	case ok && !sok:
		// pj does not check the extensions routing does not read, but it
		// does refuse what no TLS server accepts: an extension twice.
		if typ, twice := repeatedExtension(b); twice {
			t.Fatalf("pj reads a hello with extension %d twice; crypto/tls refuses it", typ)
		}
	}
}

// repeatedExtension returns an extension type that the ClientHello whose
// records b holds carries twice; it reads the extensions with cryptobyte,
// not with parseHello's reader.
func repeatedExtension(b []byte) (uint16, bool) {
	var h hello
	if h.read(b, MaxPeek) != helloDone {
		return 0, false
	}
	s := cryptobyte.String(helloBytes(b[:h.next], h.want))
	var skipped, exts cryptobyte.String
	if !s.Skip(handshakeHeadLen+2+32) || !s.ReadUint8LengthPrefixed(&skipped) || // session id
		!s.ReadUint16LengthPrefixed(&skipped) || !s.ReadUint8LengthPrefixed(&skipped) || // suites, compression
		!s.ReadUint16LengthPrefixed(&exts) {
		return 0, false
	}
	seen := map[uint16]bool{}
	for !exts.Empty() {
		var typ uint16
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&skipped) {
			return 0, false
		}
		if seen[typ] {
			return typ, true
		}
		seen[typ] = true
	}
	return 0, false
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

// Hellos crypto/tls refuses for the fields routing reads, or for an
// extension they carry twice, are refused too.
func TestParseHelloRefuses(t *testing.T) {
	good := sniExt("app.example.com")
	cases := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"one name", helloWith(good), true},
		{"protocols", helloWith(good, ext(extALPN, 0, 6, 2, 'h', '2', 2, 'h', '3')), true},
		{"no extensions", helloWith(), true},
		{"a name ending in a dot", helloWith(sniExt("app.example.com.")), false},
		{"server_name twice", helloWith(good, good), false},
		{"server_name twice, naming two servers", helloWith(sniExt("a.example"), sniExt("b.example")), false},
		{"alpn twice", helloWith(good, ext(extALPN, 0, 3, 2, 'h', '2'), ext(extALPN, 0, 3, 2, 'h', '3')), false},
		{"other extensions once each", helloWith(ext(23), good, ext(0x1234), ext(0x1235, 1)), true},
		{"extended_master_secret twice", helloWith(ext(23), good, ext(23)), false},
		{"an unknown extension twice", helloWith(ext(0x1234), ext(0x1235), good, ext(0x1234, 1)), false},
		{"two host names", helloWith(sniExt("a.example", "b.example")), false},
		{"an empty name list", helloWith(ext(extServerName, 0, 0)), false},
		{"an empty protocol", helloWith(ext(extALPN, 0, 1, 0)), false},
		{"alpn with bytes after its list", helloWith(ext(extALPN, 0, 3, 2, 'h', '2', 9)), false},
		{"an extension longer than its list", helloWith(ext(extServerName, 0, 40)), false},
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
	f.Add(helloWith(sniExt("a.example"), ext(0x1234), sniExt("b.example")))
	f.Add(helloWith(ext(0x1234), ext(23), ext(0x1234)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > MaxPeek {
			b = b[:MaxPeek]
		}
		// One hello may cost at most a second and 64 MiB: more is a finding.
		testutil.WithinBudget(t, func() { agree(t, b) })
	})
}

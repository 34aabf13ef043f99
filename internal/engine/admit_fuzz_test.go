package engine

import (
	"testing"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/pj-proxy/pj/internal/testutil"
)

// FuzzProxyHeader feeds arbitrary first bytes of a connection to the
// PROXY protocol reader of trusted peers (parseHeader) and to the check of
// untrusted ones (signatureOf). Whatever the input: no panic, and within
// the fuzz budget; a header is no longer than the input nor than
// maxHeader, reads the same from its own bytes, and is incomplete (not an
// error) in every shorter prefix; and every header the reader accepts is
// one the untrusted check refuses, judged on its first bytes however
// they are split.
//
// More seeds live in testdata/fuzz/FuzzProxyHeader, including anything
// the fuzzer has found.
func FuzzProxyHeader(f *testing.F) {
	for _, s := range []string{
		"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\nhello",
		"PROXY TCP6 2001:db8::1 ::1 51234 8080\r\n",
		"PROXY UNKNOWN\r\n",
		"PROXY TCP4 not-an-address\r\n",
		"PRO", "PROXY", "PROXY \r\n", "GET / HTTP/1.1\r\n\r\n",
		string(proxyproto.SIGV2), string(proxyproto.SIGV2) + "\x20\x00\x00\x00",
	} {
		f.Add([]byte(s))
	}
	f.Add(testutil.ProxyV2(f, nil, false))
	f.Add(testutil.ProxyV2(f, []byte{0x02, 0, 3, 'a', '.', 'b'}, true))
	f.Add(testutil.ProxyV2(f, []byte{0x20, 0, 11, 0x01, 0, 0, 0, 0, 0x21, 0, 3, '1', '.', '3'}, false))
	f.Add(testutil.ProxyV2(f, []byte{0x02, 0, 32, 'a'}, false))

	f.Fuzz(func(t *testing.T, b []byte) {
		testutil.WithinBudget(t, func() { checkHeader(t, b) })
	})
}

func checkHeader(t *testing.T, b []byte) {
	size, h, err := parseHeader(b)
	if err != nil {
		if size != 0 || h != nil {
			t.Fatalf("an error with a header: size %d, %v", size, err)
		}
		return
	}
	if size == 0 {
		if h != nil {
			t.Fatal("an incomplete header with a header")
		}
		return
	}
	if h == nil || size > len(b) || size > maxHeader {
		t.Fatalf("size %d of %d bytes (at most %d), header %v", size, len(b), maxHeader, h)
	}
	again, h2, err := parseHeader(b[:size])
	if err != nil || again != size || !h.EqualsTo(h2) {
		t.Fatalf("the header's own %d bytes read as size %d, %v", size, again, err)
	}
	for _, k := range []int{0, 1, size / 2, size - 1} {
		if n, ph, err := parseHeader(b[:k]); n != 0 || ph != nil || err != nil {
			t.Fatalf("the prefix of %d bytes of a %d-byte header: size %d, %v; want incomplete", k, size, n, err)
		}
	}
	// An untrusted peer that sends this header is refused, whatever the
	// reads it comes in: every prefix is the start of a signature, until
	// the prefix is one.
	for k := 1; k <= min(size, 12); k++ {
		switch s := signatureOf(b[:k]); {
		case s == notSignature:
			t.Fatalf("a header's first %d bytes %q are not judged the start of a signature", k, b[:k])
		case k == 12 && s != isSignature:
			t.Fatalf("a header's first 12 bytes %q are not judged a signature", b[:k])
		}
	}
}

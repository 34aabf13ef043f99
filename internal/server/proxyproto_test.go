package server_test

import (
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

// recordingEcho is an echo server that counts the bytes it received.
func recordingEcho(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			n.Add(int64(k))
			if k > 0 {
				_, _ = c.Write(buf[:k])
			}
			if err != nil {
				return
			}
		}
	})
	return ln.Addr().String(), &n
}

// closedByPJ reports whether c was closed without anything relayed: it
// reads EOF or a reset, and no byte.
func closedByPJ(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return len(b) == 0 && (err == nil || !testutil.IsTimeout(err))
}

func TestUntrustedHeaderIsRefusedHoweverItIsSplit(t *testing.T) {
	echo, received := recordingEcho(t)
	r, x := startOne(t, "untrusting", func(p *config.Proxy) {
		p.AcceptProxyProtocol = &config.AcceptProxyProtocol{Trusted: testutil.Prefixes("10.0.0.0/8")}
	}, echo)

	header := "PROXY TCP4 6.6.6.6 127.0.0.1 51234 8080\r\n"
	v2 := string(proxyproto.SIGV2)
	for i, parts := range [][]string{
		{header + "GET /"},
		{"PRO", "XY TCP4 6.6.6.6 127.0.0.1 51234 8080\r\nGET /"},
		{"P", "R", "O", "X", "Y", " TCP4 6.6.6.6 127.0.0.1 51234 8080\r\n"},
		{v2[:1], v2[1:7], v2[7:] + "\x21\x11\x00\x0c"},
	} {
		c := testutil.Dial(t, x)
		for j, part := range parts {
			if _, err := io.WriteString(c, part); err != nil {
				t.Fatalf("case %d: write: %v", i, err)
			}
			if j < len(parts)-1 {
				// Before the fix, a first read that was only the start of
				// a signature went through: its echo came back.
				_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				if n, _ := c.Read(make([]byte, 64)); n > 0 {
					t.Fatalf("case %d: %q was relayed before the rest of the signature came", i, part)
				}
			}
		}
		if !closedByPJ(t, c) {
			t.Fatalf("case %d: a header split as %q was not refused", i, parts)
		}
		_ = c.Close()
	}
	lines := r.Logs.WaitLines(t, "not in accept_proxy_protocol.trusted", 4)
	for _, l := range lines {
		if !strings.Contains(l, "[denied]") || !strings.Contains(l, "closed_by=pj") {
			t.Errorf("line %q: want [denied] and closed_by=pj", l)
		}
	}
	if n := received.Load(); n != 0 {
		t.Fatalf("the backend received %d bytes of refused connections", n)
	}

	// Bytes that only start like a signature are the client's own.
	for _, send := range []string{"PRO", "PROTOCOL 1\r\n", "PROXY\r\n", "\r\n\r\nhello", "\r\n"} {
		c := testutil.Dial(t, x)
		_, _ = io.WriteString(c, send)
		_ = c.CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got, err := io.ReadAll(c); string(got) != send {
			t.Errorf("%q: echoed %q, %v", send, got, err)
		}
	}
}

func TestProxyV2TLVsAreValidated(t *testing.T) {
	echo, received := recordingEcho(t)
	r, x := startOne(t, "trusting", func(p *config.Proxy) {
		p.AcceptProxyProtocol = &config.AcceptProxyProtocol{Trusted: testutil.Prefixes("127.0.0.0/8")}
	}, echo)

	authority := append([]byte{0x02, 0x00, 0x0b}, "example.net"...)
	badCRC := testutil.ProxyV2(t, nil, true)
	badCRC[len(badCRC)-1] ^= 0xff
	shortCRC := testutil.ProxyV2(t, []byte{0x03, 0x00, 0x02, 0xab, 0xcd}, false)
	truncated := testutil.ProxyV2(t, []byte{0x02, 0x00, 0x20, 'a', 'b'}, false) // says 32 bytes, has 2
	// An SSL TLV whose sub-TLV says 200 bytes and has 3.
	badSSL := testutil.ProxyV2(t, []byte{0x20, 0x00, 0x0b, 0x01, 0, 0, 0, 0, 0x21, 0x00, 0xc8, '1', '.', '3'}, false)

	for _, tc := range []struct {
		name   string
		header []byte
		ok     bool
	}{
		{"no TLVs", testutil.ProxyV2(t, nil, false), true},
		{"an authority", testutil.ProxyV2(t, authority, false), true},
		{"a right CRC32c", testutil.ProxyV2(t, authority, true), true},
		{"a wrong CRC32c", badCRC, false},
		{"a CRC32c of 2 bytes", shortCRC, false},
		{"a truncated TLV", truncated, false},
		{"a malformed SSL TLV", badSSL, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := received.Load()
			c := testutil.Dial(t, x)
			if _, err := c.Write(append(tc.header, "hi"...)); err != nil {
				t.Fatal(err)
			}
			if tc.ok {
				if got := make([]byte, 2); !readFull(c, got) || string(got) != "hi" {
					t.Fatalf("a valid header: echo %q", got)
				}
				return
			}
			if !closedByPJ(t, c) {
				t.Fatal("served")
			}
			if got := received.Load(); got != before {
				t.Fatalf("the backend received %d bytes", got-before)
			}
		})
	}
	if n := len(r.Logs.WaitLines(t, "no valid PROXY protocol header", 4)); n != 4 {
		t.Fatalf("%d lines for 4 bad headers", n)
	}
	for _, want := range []string{"CRC32c", "truncated"} {
		if len(r.Logs.Lines(want)) == 0 {
			t.Errorf("no line says %q:\n%s", want, r.Logs)
		}
	}
}

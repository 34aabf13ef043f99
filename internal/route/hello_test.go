package route

import (
	"bytes"
	"slices"
	"strconv"
	"testing"
)

// The clients whose hellos the tests read.
var helloSpecs = []struct {
	name string
	spec helloSpec
}{
	{"post-quantum", helloSpec{sni: "app.example.com", alpn: []string{"h2", "http/1.1"}, pq: true}},
	{"classical", helloSpec{sni: "app.example.com", alpn: []string{"h2", "http/1.1"}}},
	{"tls1.2", helloSpec{sni: "app.example.com", alpn: []string{"http/1.1"}, max12: true}},
	{"many-alpn", helloSpec{sni: "db.example.com", alpn: []string{"postgresql", "h2", "http/1.1", "acme-tls/1", "imap", "smtp"}, pq: true}},
	{"no-sni", helloSpec{alpn: []string{"h2"}, pq: true}},
}

func TestHelloFromRealClients(t *testing.T) {
	for _, tc := range helloSpecs {
		t.Run(tc.name, func(t *testing.T) {
			b := realHello(t, tc.spec)
			var h hello
			if st := h.read(b, MaxPeek); st != helloDone {
				t.Fatalf("state %d after %d bytes, want done", st, len(b))
			}
			if h.next != len(b) {
				t.Errorf("the hello ends at %d, the capture at %d", h.next, len(b))
			}
			if h.sni != tc.spec.sni || !slices.Equal(h.alpn, tc.spec.alpn) {
				t.Errorf("read sni %q alpn %q, want %q %q", h.sni, h.alpn, tc.spec.sni, tc.spec.alpn)
			}
		})
	}
}

// A post-quantum hello does not fit in one TCP segment of an Ethernet
// path (1460 bytes), which is what trips peekers that read one segment.
func TestPostQuantumHelloSpansSegments(t *testing.T) {
	b := realHello(t, helloSpec{sni: "app.example.com", pq: true})
	if len(b) <= 1460 {
		t.Fatalf("a post-quantum hello of %d bytes: the client no longer sends an X25519MLKEM768 key share", len(b))
	}
}

// However the bytes arrive, the hello is read once they are all here, and
// not before.
func TestHelloInPieces(t *testing.T) {
	whole := realHello(t, helloSpec{sni: "app.example.com", alpn: []string{"h2"}, pq: true})
	forms := map[string][]byte{"one record": whole}
	for _, size := range []int{1, 7, 512, 1000} {
		forms["records of "+strconv.Itoa(size)] = reframe(t, whole, size)
	}
	for name, b := range forms {
		for _, seg := range []int{1, 3, 100, 1460, len(b)} {
			t.Run(name+"/segments of "+strconv.Itoa(seg), func(t *testing.T) {
				var h hello
				for n := min(seg, len(b)); ; n = min(n+seg, len(b)) {
					st := h.read(b[:n], MaxPeek)
					if n < len(b) && st != helloPartial {
						t.Fatalf("state %d after %d of %d bytes, want partial", st, n, len(b))
					}
					if n == len(b) {
						if st != helloDone || h.sni != "app.example.com" || !slices.Equal(h.alpn, []string{"h2"}) {
							t.Fatalf("state %d sni %q alpn %q after the whole hello", st, h.sni, h.alpn)
						}
						return
					}
				}
			})
		}
	}
}

func TestHelloUnreadable(t *testing.T) {
	whole := realHello(t, helloSpec{sni: "app.example.com"})
	corrupt := bytes.Clone(whole)
	corrupt[5+4+2+32] = 200 // session id longer than 32 bytes
	big := []byte{22, 3, 1, 0x40, 0x00, 1, 0, 0x40, 0}
	cases := []struct {
		name  string
		b     []byte
		limit int
	}{
		{"alert record", []byte{21, 3, 1, 0, 2, 2, 40}, MaxPeek},
		{"not tls", []byte("GET / HTTP/1.1\r\n"), MaxPeek},
		{"empty record", []byte{22, 3, 1, 0, 0}, MaxPeek},
		{"record too long", []byte{22, 3, 1, 0x40, 0x01}, MaxPeek},
		{"server hello", []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, MaxPeek},
		{"hello longer than the peek", big, MaxPeek},
		{"record past the limit", whole, len(whole) - 1},
		{"header past the limit", cat(reframe(t, whole, 100)), 100 + 5 + 2},
		{"record of another type mid-hello", cat(reframe(t, whole, 100)[:105], []byte{23, 3, 3, 0, 1, 0}), MaxPeek},
		{"malformed hello", corrupt, MaxPeek},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h hello
			if st := h.read(tc.b, tc.limit); st != helloBad {
				t.Fatalf("state %d, want unreadable", st)
			}
		})
	}
}

package route

import (
	"net/netip"
	"testing"

	"github.com/pj-proxy/pj/internal/testutil"
)

// BenchmarkDecide is the cost of routing one connection: a Reset, then
// the calls of Decide the engine makes as the bytes come.
func BenchmarkDecide(b *testing.B) {
	tab := edgeTable(&testing.T{})
	src := netip.MustParseAddr("192.0.2.1")
	pq := realHello(b, helloSpec{sni: "app.example.com", alpn: []string{"h2", "http/1.1"}, pq: true})
	classical := realHello(b, helloSpec{sni: "www.example.com", alpn: []string{"http/1.1"}})
	db := realHello(b, helloSpec{sni: "db.example.com"})
	cases := []struct {
		name   string
		pieces [][]byte // what each read brings
	}{
		{"sni/post-quantum", [][]byte{pq}},
		{"sni/post-quantum-in-two-segments", [][]byte{pq[:1460], pq[1460:]}},
		{"sni/classical-to-default", [][]byte{classical}},
		{"postgres-sni", [][]byte{sslRequest, db}},
		{"ssh", [][]byte{[]byte("SSH-2.0-OpenSSH_9.2p1\r\n")}},
		{"source-only", nil},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			table := tab
			if tc.pieces == nil {
				table = mustTable(b, Match{Source: testutil.Prefixes("10.0.0.0/8")}, Match{})
			}
			var buf []byte
			for _, p := range tc.pieces {
				buf = append(buf, p...)
			}
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			var d Decider
			for b.Loop() {
				d.Reset(table, src)
				n := 0
				dec, more := d.Decide(buf[:0], false, false)
				for _, p := range tc.pieces {
					n += len(p)
					dec, more = d.Decide(buf[:n], false, false)
				}
				if more || dec.Route == NoRoute {
					b.Fatalf("undecided: %+v", dec)
				}
			}
		})
	}
}

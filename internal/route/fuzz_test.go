package route

import (
	"net/netip"
	"testing"

	"github.com/pj-proxy/pj/internal/testutil"
)

// FuzzDecide drives a Decider with hostile bytes cut into hostile pieces:
// it must never panic, must decide by the final call, and what it decides
// must stay within the bytes it was given.
func FuzzDecide(f *testing.F) {
	pq := realHello(f, helloSpec{sni: "app.example.com", alpn: []string{"h2", "http/1.1"}, pq: true})
	db := realHello(f, helloSpec{sni: "db.example.com", alpn: []string{"postgresql"}})
	for _, seed := range [][]byte{
		pq, reframe(f, pq, 3), cat(sslRequest, db), cat(gssencRequest, sslRequest, db), db,
		startup(), []byte("SSH-2.0-x\r\n"), []byte("GET / HTTP/1.1\r\n\r\n"), {22, 3, 1, 0, 1, 1}, nil,
	} {
		f.Add(seed, []byte{7, 100, 0}, false)
		f.Add(seed, []byte{1}, true)
	}
	tab := edgeTable(&testing.T{})
	src := netip.MustParseAddr("192.0.2.1")
	f.Fuzz(func(t *testing.T, data, cuts []byte, timeout bool) {
		// One input may cost at most a second and 64 MiB: more is a finding.
		testutil.WithinBudget(t, func() {
			if len(data) > MaxPeek {
				data = data[:MaxPeek] // the engine never holds more
			}
			var d Decider
			d.Reset(tab, src)
			n := 0
			for {
				var step int
				if len(cuts) > 0 {
					step, cuts = int(cuts[0]), cuts[1:]
				} else {
					step = len(data) - n
				}
				n = min(n+step, len(data))
				final := n == len(data)
				dec, more := d.Decide(data[:n], final && !timeout, final && timeout)
				if more {
					if final {
						t.Fatalf("undecided on the final call: %+v", dec)
					}
					continue
				}
				if dec.Route < NoRoute || dec.Route >= tab.Len() {
					t.Fatalf("route %d of %d", dec.Route, tab.Len())
				}
				if dec.Skip < 0 || dec.Prelude < 0 || dec.Skip+dec.Prelude > n {
					t.Fatalf("skip %d prelude %d beyond the %d bytes read", dec.Skip, dec.Prelude, n)
				}
				if (dec.Prelude > 0) != (len(dec.Expect) > 0) {
					t.Fatalf("prelude %d with expect %q", dec.Prelude, dec.Expect)
				}
				if len(dec.Reply) > 0 {
					t.Fatalf("a reply with a decision: %+v", dec)
				}
				return
			}
		})
	})
}

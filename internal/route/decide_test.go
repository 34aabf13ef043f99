package route

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/testutil"
)

// step is one call of Decide: the bytes that arrived since the last call
// and what the call must return.
type step struct {
	add      []byte
	eof      bool
	timedOut bool

	more  bool
	reply string // with more
	route int    // without more
}

// want is the decision's details checked at the last step.
type want struct {
	proto   Protocol
	sni     string
	alpn    []string
	skip    int
	prelude int
	expect  string
}

func drive(t *testing.T, tab *Table, src string, steps []step, w want) {
	t.Helper()
	var d Decider
	d.Reset(tab, netip.MustParseAddr(src))
	var buf []byte
	for i, s := range steps {
		buf = append(buf, s.add...)
		dec, more := d.Decide(buf, s.eof, s.timedOut)
		if more != s.more {
			t.Fatalf("step %d: more = %v, want %v (decision %+v)", i, more, s.more, dec)
		}
		if more {
			if string(dec.Reply) != s.reply {
				t.Fatalf("step %d: reply %q, want %q", i, dec.Reply, s.reply)
			}
			continue
		}
		if dec.Route != s.route {
			t.Fatalf("step %d: route %d, want %d (decision %+v)", i, dec.Route, s.route, dec)
		}
		if i != len(steps)-1 {
			t.Fatalf("step %d decided; the test has more steps", i)
		}
		if dec.Protocol != w.proto || dec.SNI != w.sni || !slices.Equal(dec.ALPN, w.alpn) ||
			dec.Skip != w.skip || dec.Prelude != w.prelude || string(dec.Expect) != w.expect {
			t.Fatalf("decision %+v, want %+v", dec, w)
		}
		return
	}
	t.Fatalf("undecided after %d steps", len(steps))
}

// The routes of a typical edge on port 443, in order.
const (
	rApp = iota
	rDB
	rSSH
	rHTTP
	rH2
	rOffice
	rDefault
)

func edgeTable(t *testing.T) *Table {
	return mustTable(t,
		Match{SNI: []string{"app.example.com", "*.app.example.com"}},
		Match{Protocol: ProtocolPostgres, SNI: []string{"db.example.com"}},
		Match{Protocol: ProtocolSSH},
		Match{Protocol: ProtocolHTTP},
		Match{ALPN: []string{"h2"}},
		Match{Source: testutil.Prefixes("10.1.0.0/16")},
		Match{},
	)
}

func TestDecide(t *testing.T) {
	tab := edgeTable(t)
	app := realHello(t, helloSpec{sni: "app.example.com", alpn: []string{"h2", "http/1.1"}, pq: true})
	deep := realHello(t, helloSpec{sni: "API.v2.App.Example.com", pq: true})
	other := realHello(t, helloSpec{sni: "www.example.com", alpn: []string{"h2"}})
	plain := realHello(t, helloSpec{sni: "www.example.com", alpn: []string{"http/1.1"}})
	db := realHello(t, helloSpec{sni: "db.example.com"})
	dbDirect := realHello(t, helloSpec{sni: "db.example.com", alpn: []string{"postgresql"}})
	h2 := []string{"h2", "http/1.1"}
	tlsOnly := want{proto: ProtocolTLS}

	cases := []struct {
		name  string
		src   string
		steps []step
		want  want
	}{
		{"app by sni", "192.0.2.1", []step{{add: app, route: rApp}}, want{ProtocolTLS, "app.example.com", h2, 0, 0, ""}},
		{"wildcard, any case and depth", "192.0.2.1", []step{{add: deep, route: rApp}}, want{proto: ProtocolTLS, sni: "API.v2.App.Example.com"}},
		{"alpn h2 after the sni routes", "192.0.2.1", []step{{add: other, route: rH2}}, want{ProtocolTLS, "www.example.com", []string{"h2"}, 0, 0, ""}},
		{"no route matches: the default", "192.0.2.1", []step{{add: plain, route: rDefault}}, want{ProtocolTLS, "www.example.com", []string{"http/1.1"}, 0, 0, ""}},
		{"office source after the bytes routes", "10.1.2.3", []step{{add: plain, route: rOffice}}, want{ProtocolTLS, "www.example.com", []string{"http/1.1"}, 0, 0, ""}},
		{"hello in three pieces", "192.0.2.1", []step{
			{add: app[:1], more: true}, {add: app[1:1000], more: true}, {add: app[1000:], route: rApp},
		}, want{ProtocolTLS, "app.example.com", h2, 0, 0, ""}},
		{"ssh banner", "192.0.2.1", []step{{add: []byte("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"), route: rSSH}}, want{proto: ProtocolSSH}},
		{"ssh, a byte at a time", "192.0.2.1", []step{
			{add: []byte("S"), more: true}, {add: []byte("S"), more: true}, {add: []byte("H"), more: true}, {add: []byte("-"), route: rSSH},
		}, want{proto: ProtocolSSH}},
		{"http request", "192.0.2.1", []step{{add: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), route: rHTTP}}, want{proto: ProtocolHTTP}},
		{"unknown bytes: the default at once", "192.0.2.1", []step{{add: []byte("EHLO mail\r\n"), route: rDefault}}, want{}},
		{"silent client: the first route that needs no bytes", "192.0.2.1", []step{{more: true}, {timedOut: true, route: rDefault}}, want{}},
		{"silent client in the office", "10.1.0.9", []step{{more: true}, {timedOut: true, route: rOffice}}, want{}},
		{"closed without a byte", "192.0.2.1", []step{{more: true}, {eof: true, route: rDefault}}, want{}},
		{"partial hello at the timeout", "192.0.2.1", []step{{add: app[:700], more: true}, {timedOut: true, route: rDefault}}, tlsOnly},
		{"partial hello, then eof", "192.0.2.1", []step{{add: app[:700], more: true}, {eof: true, route: rDefault}}, tlsOnly},
		{"ssh prefix at the timeout", "192.0.2.1", []step{{add: []byte("SS"), more: true}, {timedOut: true, route: rDefault}}, want{}},
		{"postgres: pj answers S, routes on the hello, replays the request", "192.0.2.1", []step{
			{add: sslRequest, more: true, reply: "S"}, {add: db[:100], more: true}, {add: db[100:], route: rDB},
		}, want{ProtocolPostgres, "db.example.com", nil, 0, 8, "S"}},
		{"postgres to another name: the default, still with the prelude", "192.0.2.1", []step{
			{add: sslRequest, more: true, reply: "S"}, {add: other, route: rDefault},
		}, want{ProtocolPostgres, "www.example.com", []string{"h2"}, 0, 8, "S"}},
		{"postgres silent after S", "192.0.2.1", []step{
			{add: sslRequest, more: true, reply: "S"}, {timedOut: true, route: rDefault},
		}, want{ProtocolPostgres, "", nil, 0, 8, "S"}},
		{"postgres ssl request in two pieces", "192.0.2.1", []step{
			{add: sslRequest[:3], more: true}, {add: sslRequest[3:], more: true, reply: "S"}, {add: db, route: rDB},
		}, want{ProtocolPostgres, "db.example.com", nil, 0, 8, "S"}},
		{"postgres gssenc: pj says N, then S", "192.0.2.1", []step{
			{add: gssencRequest, more: true, reply: "N"}, {add: sslRequest, more: true, reply: "S"}, {add: db, route: rDB},
		}, want{ProtocolPostgres, "db.example.com", nil, 8, 8, "S"}},
		{"postgres gssenc, then in the clear", "192.0.2.1", []step{
			{add: gssencRequest, more: true, reply: "N"}, {add: startup(), route: rDefault},
		}, want{ProtocolPostgres, "", nil, 8, 0, ""}},
		{"postgres in the clear", "192.0.2.1", []step{{add: startup(), route: rDefault}}, want{proto: ProtocolPostgres}},
		{"postgres direct tls (alpn postgresql)", "192.0.2.1", []step{{add: dbDirect, route: rDB}}, want{ProtocolTLS, "db.example.com", []string{"postgresql"}, 0, 0, ""}},
		{"tls to the db name without postgresql alpn", "192.0.2.1", []step{{add: db, route: rDefault}}, want{proto: ProtocolTLS, sni: "db.example.com"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { drive(t, tab, tc.src, tc.steps, tc.want) })
	}
}

// A hello split at every byte is read whole once its last byte comes.
func TestDecideEverySplit(t *testing.T) {
	tab := edgeTable(t)
	b := realHello(t, helloSpec{sni: "app.example.com", alpn: []string{"h2", "http/1.1"}, pq: true})
	var d Decider
	for cut := 1; cut < len(b); cut++ {
		d.Reset(tab, netip.MustParseAddr("192.0.2.1"))
		if _, more := d.Decide(b[:cut], false, false); !more {
			t.Fatalf("decided on %d of %d bytes", cut, len(b))
		}
		if dec, more := d.Decide(b, false, false); more || dec.Route != rApp {
			t.Fatalf("cut at %d: route %d, more %v", cut, dec.Route, more)
		}
	}
}

func TestDecideMaxPeek(t *testing.T) {
	tab := mustTable(t, Match{SNI: []string{"a.example"}}, Match{})
	// A record header that promises a hello of 16 KiB: unreadable at once.
	big := []byte{22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfc}
	drive(t, tab, "192.0.2.1", []step{{add: big, route: 1}}, want{proto: ProtocolTLS})
	// Records of one byte each: the buffer fills before the hello ends.
	var alpn []string
	for i := range 40 {
		alpn = append(alpn, fmt.Sprintf("protocol-%02d-%s", i, strings.Repeat("x", 40)))
	}
	hello := realHello(t, helloSpec{sni: "a.example", alpn: alpn, pq: true})
	slow := reframe(t, hello, 1)
	if len(slow) <= MaxPeek {
		t.Fatalf("a hello of %d bytes in records of one byte fits in the peek", len(slow))
	}
	slow = slow[:MaxPeek]
	var d Decider
	d.Reset(tab, netip.MustParseAddr("192.0.2.1"))
	// Records of six bytes: two short of the end, the next one still fits.
	if _, more := d.Decide(slow[:MaxPeek-12], false, false); !more {
		t.Fatal("decided while the hello could still fit")
	}
	if dec, more := d.Decide(slow, false, false); more || dec.Route != 1 {
		t.Fatalf("a full peek: route %d, more %v; want the default", dec.Route, more)
	}
}

func TestDecideNoRoute(t *testing.T) {
	tab := mustTable(t, Match{Protocol: ProtocolSSH}, Match{Source: testutil.Prefixes("10.0.0.0/8")})
	drive(t, tab, "192.0.2.1", []step{{add: []byte("GET / HTTP/1.0\r\n"), route: NoRoute}}, want{proto: ProtocolHTTP})
	drive(t, tab, "192.0.2.1", []step{{more: true}, {timedOut: true, route: NoRoute}}, want{})
	drive(t, tab, "10.0.0.1", []step{{add: []byte("GET / HTTP/1.0\r\n"), route: 1}}, want{proto: ProtocolHTTP})
}

// Routes that need no bytes decide at once, on the first call.
func TestDecideWithoutBytes(t *testing.T) {
	cases := []struct {
		name    string
		matches []Match
		src     string
		peeks   bool
		route   int // on the first call, or -2 for "wait"
	}{
		{"one route, no match", []Match{{}}, "192.0.2.1", false, 0},
		{"source routes, then the default", []Match{{Source: testutil.Prefixes("10.0.0.0/8")}, {}}, "192.0.2.1", false, 1},
		{"source route holds", []Match{{Source: testutil.Prefixes("10.0.0.0/8")}, {}}, "10.9.9.9", false, 0},
		{"source only, none holds", []Match{{Source: testutil.Prefixes("10.0.0.0/8")}}, "192.0.2.1", false, NoRoute},
		{"default first, sni after", []Match{{}, {SNI: []string{"a.example"}}}, "192.0.2.1", false, 0},
		{"sni first", []Match{{SNI: []string{"a.example"}}, {}}, "192.0.2.1", true, -2},
		{"source holds before sni", []Match{{Source: testutil.Prefixes("10.0.0.0/8")}, {SNI: []string{"a.example"}}}, "10.0.0.1", true, 0},
		{"source fails before sni", []Match{{Source: testutil.Prefixes("10.0.0.0/8")}, {SNI: []string{"a.example"}}}, "192.0.2.1", true, -2},
		{"sni behind a source filter", []Match{{Source: testutil.Prefixes("10.0.0.0/8"), SNI: []string{"a.example"}}, {}}, "192.0.2.1", true, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tab := mustTable(t, tc.matches...)
			if tab.Peeks() != tc.peeks {
				t.Errorf("Peeks = %v, want %v", tab.Peeks(), tc.peeks)
			}
			var d Decider
			d.Reset(tab, netip.MustParseAddr(tc.src))
			dec, more := d.Decide(nil, false, false)
			switch {
			case tc.route == -2 && !more:
				t.Errorf("decided %d without bytes; want a wait", dec.Route)
			case tc.route != -2 && (more || dec.Route != tc.route):
				t.Errorf("route %d, more %v; want %d at once", dec.Route, more, tc.route)
			}
		})
	}
}

// An IPv4 client seen through an IPv6 socket (::ffff:a.b.c.d) is the IPv4
// client for source ranges.
func TestDecideMappedSource(t *testing.T) {
	tab := mustTable(t, Match{Source: testutil.Prefixes("10.1.0.0/16")}, Match{})
	drive(t, tab, "::ffff:10.1.2.3", []step{{route: 0}}, want{})
	drive(t, tab, "2001:db8::1", []step{{route: 1}}, want{})
}

// Every given matcher must hold.
func TestDecideAllMatchersHold(t *testing.T) {
	tab := mustTable(t,
		Match{SNI: []string{"app.example.com"}, ALPN: []string{"h2"}, Protocol: ProtocolTLS, Source: testutil.Prefixes("10.0.0.0/8")},
		Match{},
	)
	h2 := realHello(t, helloSpec{sni: "app.example.com", alpn: []string{"h2"}})
	h1 := realHello(t, helloSpec{sni: "app.example.com", alpn: []string{"http/1.1"}})
	drive(t, tab, "10.0.0.1", []step{{add: h2, route: 0}}, want{ProtocolTLS, "app.example.com", []string{"h2"}, 0, 0, ""})
	drive(t, tab, "10.0.0.1", []step{{add: h1, route: 1}}, want{ProtocolTLS, "app.example.com", []string{"http/1.1"}, 0, 0, ""})
	drive(t, tab, "192.0.2.1", []step{{route: 1}}, want{})
}

// Misuse (a buffer shorter than what pj answered) ends in a decision, not
// a panic.
func TestDecideShorterBuffer(t *testing.T) {
	tab := edgeTable(t)
	var d Decider
	d.Reset(tab, netip.MustParseAddr("192.0.2.1"))
	if dec, more := d.Decide(sslRequest, false, false); !more || string(dec.Reply) != "S" {
		t.Fatalf("ssl request: %+v %v", dec, more)
	}
	if dec, more := d.Decide(sslRequest[:4], false, false); more || dec.Route != NoRoute {
		t.Fatalf("a shorter buffer: %+v %v; want no route", dec, more)
	}
}

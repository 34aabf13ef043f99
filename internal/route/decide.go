package route

import (
	"fmt"
	"net/netip"
)

// NoRoute is Decision.Route when no route takes the connection.
const NoRoute = -1

// Table is a proxy's routes, in order, ready to decide. It is immutable
// and shared by every connection of the proxy.
type Table struct {
	rules []rule
	peeks bool
}

// NewTable makes a table of routes from their matches, in order.
func NewTable(matches []Match) (*Table, error) {
	t := &Table{rules: make([]rule, len(matches))}
	for i := range matches {
		r, err := newRule(&matches[i])
		if err != nil {
			return nil, fmt.Errorf("route %d: %w", i+1, err)
		}
		t.rules[i] = r
	}
	// A route that takes every client before any route needs bytes means
	// no client ever waits.
	for i := range t.rules {
		r := &t.rules[i]
		if r.bytes {
			t.peeks = true
			break
		}
		if r.source == nil {
			break
		}
	}
	return t, nil
}

// Len is the number of routes.
func (t *Table) Len() int { return len(t.rules) }

// Peeks tells whether any client may have to be read from before its
// route is known. When it is false, Decide answers at once, from the
// client's address alone, and the connection goes the way of a plain
// mapping.
func (t *Table) Peeks() bool { return t.peeks }

// Decision is what Decide found.
//
// While Decide asks for more bytes, only Reply is set. Once it has
// decided, the connection goes to Route (or is closed if NoRoute), and
// the backend receives, in order:
//
//  1. buf[Skip : Skip+Prelude] alone, when Prelude > 0; the backend must
//     then answer exactly Expect, which pj reads and drops (anything else
//     is a failed connection to that backend);
//  2. buf[Skip+Prelude:], the rest of what was read, unchanged;
//  3. the relay of both directions.
//
// buf[:Skip] were answered by pj and never reach a backend.
type Decision struct {
	Route    int      // the index of the route that takes the connection, or NoRoute
	Protocol Protocol // the protocol of the first bytes, if known
	SNI      string   // the server name of the ClientHello, if one was read
	ALPN     []string // the protocols the ClientHello offered, if one was read

	// Reply is written to the client before reading on: a PostgreSQL
	// client is told 'S' to start TLS, so that its ClientHello can be
	// read. Shared: never modify.
	Reply []byte

	Skip    int
	Prelude int
	Expect  []byte // shared: never modify
}

// The one-byte answers of a PostgreSQL server to SSLRequest and
// GSSENCRequest.
var (
	pgYes = []byte{'S'}
	pgNo  = []byte{'N'}
)

// Decider decides the route of one connection from its first bytes. It
// does no I/O: the caller reads, and calls Decide with everything read so
// far. The zero Decider is ready after Reset; a Decider may be reused for
// another connection after another Reset.
type Decider struct {
	t   *Table
	src netip.Addr

	skip    int    // bytes answered by pj that no backend sees (GSSENCRequest)
	prelude int    // bytes answered by pj that the backend must see too (SSLRequest)
	expect  []byte // the backend's answer to the prelude
	helloAt int    // where the ClientHello starts, once one is being read; -1 before
	hello   hello
}

// Reset makes d ready for a new connection from src (its address after
// any PROXY header) on table t.
func (d *Decider) Reset(t *Table, src netip.Addr) {
	*d = Decider{t: t, src: src, helloAt: -1}
}

// Decide tells which route takes the connection, given buf, every byte
// the client has sent so far (the same bytes as at the last call, and
// perhaps more). eof says the client will send no more, timedOut that the
// match timeout has passed. It returns more=true when it needs more bytes
// to tell: then the caller writes dec.Reply to the client (when it is not
// empty), reads, and calls again, at the latest when the timeout passes.
// With eof, timedOut or MaxPeek bytes, Decide always decides.
//
// Routes are tried in order; the first that holds takes the connection.
// A route that cannot be told yet makes Decide wait, unless this is the
// final call: then it does not hold, and the routes after it are tried on
// what is known.
func (d *Decider) Decide(buf []byte, eof, timedOut bool) (dec Decision, more bool) {
	final := eof || timedOut || len(buf) >= MaxPeek
	if len(buf) < d.skip+d.prelude {
		return d.decision(NoRoute, nil), false // not the bytes of the last call
	}
	for i := range d.t.rules {
		switch d.eval(&d.t.rules[i], buf) {
		case holds:
			return d.decision(i, buf), false
		case fails:
			continue
		case needsAnswer:
			if !final {
				return Decision{Route: NoRoute, Reply: d.answer(buf)}, true
			}
		case unknown:
			if !final {
				return Decision{Route: NoRoute}, true
			}
		}
	}
	return d.decision(NoRoute, buf), false
}

// needsAnswer is a fourth answer of a test, used here only: it cannot be
// told until pj answers the client (a PostgreSQL SSLRequest, before the
// ClientHello comes).
const needsAnswer tri = 3

// eval tests one route. Fails wins over every other answer, and unknown
// over needsAnswer: pj answers a client only when that is all it waits for.
func (d *Decider) eval(r *rule, buf []byte) tri {
	if r.source != nil && !r.source.Contains(d.src) {
		return fails
	}
	verdict := holds
	if r.proto != ProtocolUnknown {
		verdict = worse(verdict, d.protocol(r.proto, buf))
		if verdict == fails {
			return fails
		}
	}
	if r.hello {
		verdict = worse(verdict, d.matchHello(r, buf))
	}
	return verdict
}

// worse is the answer of two tests that must both hold.
func worse(a, b tri) tri {
	if rank(b) > rank(a) {
		return b
	}
	return a
}

func rank(v tri) int {
	switch v {
	case holds:
		return 0
	case needsAnswer:
		return 1
	case unknown:
		return 2
	}
	return 3
}

// protocol tests the protocol p on the first bytes.
func (d *Decider) protocol(p Protocol, buf []byte) tri {
	v := is(p, buf)
	if p != ProtocolPostgres || v != fails {
		return v
	}
	// PostgreSQL 17 clients may start with TLS at once
	// (sslnegotiation=direct), offering ALPN "postgresql".
	if is(ProtocolTLS, buf) != holds {
		return fails
	}
	switch d.readHello(buf, 0) {
	case helloPartial:
		return unknown
	case helloDone:
		for _, a := range d.hello.alpn {
			if a == "postgresql" {
				return holds
			}
		}
	}
	return fails
}

// matchHello tests the route's sni and alpn on the client's ClientHello:
// at the start for a TLS client, after the SSLRequest for a PostgreSQL
// client (on a route for postgres).
func (d *Decider) matchHello(r *rule, buf []byte) tri {
	var st helloState
	switch is(ProtocolTLS, buf) {
	case unknown:
		return unknown
	case holds:
		st = d.readHello(buf, 0)
	case fails:
		if r.proto != ProtocolPostgres {
			return fails
		}
		rest := buf[d.skip:]
		switch pgRequest(rest) {
		case pgGSSENCRequest:
			if d.skip > 0 {
				return fails // one GSSENCRequest is answered; a second is not a client pj knows
			}
			return needsAnswer
		case pgSSLRequest:
			if d.prelude == 0 {
				return needsAnswer
			}
			st = d.readHello(buf, d.skip+d.prelude)
		default:
			if len(rest) < 8 && isPostgres(rest) == unknown {
				return unknown
			}
			return fails
		}
	}
	switch st {
	case helloPartial:
		return unknown
	case helloBad:
		return fails
	}
	if len(r.names) > 0 || len(r.suffixes) > 0 {
		if !r.matchSNI(d.hello.sni) {
			return fails
		}
	}
	if len(r.alpn) > 0 && !r.matchALPN(d.hello.alpn) {
		return fails
	}
	return holds
}

// readHello reads the ClientHello that starts at off.
func (d *Decider) readHello(buf []byte, off int) helloState {
	if d.helloAt < 0 {
		d.helloAt = off
	}
	if d.helloAt != off || off > len(buf) {
		return helloBad // a stream holds one hello, at one place
	}
	return d.hello.read(buf[off:], MaxPeek-off)
}

// answer is what pj tells a PostgreSQL client that waits for it: 'N' to
// a GSSENCRequest (pj cannot route encrypted GSSAPI; the client goes on
// with an SSLRequest or in the clear), 'S' to an SSLRequest.
func (d *Decider) answer(buf []byte) []byte {
	if pgRequest(buf[d.skip:]) == pgGSSENCRequest {
		d.skip = 8
		return pgNo
	}
	d.prelude, d.expect = 8, pgYes
	return pgYes
}

func (d *Decider) decision(route int, buf []byte) Decision {
	dec := Decision{
		Route:    route,
		Protocol: detect(buf),
		Skip:     d.skip,
		Prelude:  d.prelude,
		Expect:   d.expect,
	}
	if d.hello.state == helloDone {
		dec.SNI, dec.ALPN = d.hello.sni, d.hello.alpn
	}
	return dec
}

//go:build linux

package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/route"
)

// Choosing a route comes after admission and before the backend: a proxy
// with routes may have to read the client's first bytes (statePeek) to
// know which of its routes takes the connection. internal/route decides;
// this file reads for it, answers the client when it asks, and once it
// has decided, sends the backend the bytes read, unchanged, before the
// relay reads any more. A proxy without routes, and a client whose
// address alone decides, go straight to the backend: no buffer, no wait.

// errNoRoute ends a connection that none of its proxy's routes takes.
var errNoRoute = errors.New("no route of the proxy takes the connection")

// preludeName is what the backend is sent before the client's bytes when
// a route needs a prelude: only PostgreSQL's SSLRequest has one.
const preludeName = "PostgreSQL SSLRequest"

// maxIdlePeeks bounds the spare peek buffers a loop keeps for reuse; those
// in use are bounded by the connections waiting for their first bytes.
const maxIdlePeeks = 16

// peek is what a connection holds while its route is chosen and until the
// backend has the bytes read to choose it. It is taken from the loop's
// spares and given back as soon as those bytes are sent, so that an
// established connection holds none of it.
type peek struct {
	d   route.Decider
	dec route.Decision // once decided
	buf []byte         // the client's first bytes; at most route.MaxPeek
	eof bool           // the client has ended its side
	got int            // bytes of dec.Expect the backend has answered
}

func (l *loop) getPeek() *peek {
	if n := len(l.peeks); n > 0 {
		pk := l.peeks[n-1]
		l.peeks = l.peeks[:n-1]
		return pk
	}
	return &peek{buf: make([]byte, 0, route.MaxPeek)}
}

func (l *loop) putPeek(pk *peek) {
	if len(l.peeks) >= maxIdlePeeks {
		return
	}
	*pk = peek{buf: pk.buf[:0]}
	l.peeks = append(l.peeks, pk)
}

// pickRoute chooses the route of an admitted connection. It decides at
// once when the proxy has no routes, or when the client's address
// decides; otherwise the connection waits in statePeek for its first
// bytes, at most until the match timeout after accept.
func (l *loop) pickRoute(c *conn) {
	p := c.proxy
	if p.Table == nil {
		l.toRoute(c, p.Routes[0])
		return
	}
	l.dec.Reset(p.Table, c.client.Addr())
	dec, more := l.dec.Decide(nil, false, false)
	if !more {
		l.decided(c, dec)
		return
	}
	pk := l.getPeek()
	pk.d = l.dec
	c.peek = pk
	c.state = statePeek
	l.arm(c, l.now+int64(p.MatchTimeout)-int64(l.wall.Sub(c.accepted)))
	if len(dec.Reply) > 0 {
		l.reply(c, dec.Reply)
	}
	// Readable: handle calls peekRead.
}

// peekRead reads what the client has sent so far and decides on it.
func (l *loop) peekRead(c *conn) {
	pk := c.peek
	for c.ready&cReadable != 0 && !pk.eof && len(pk.buf) < route.MaxPeek {
		free := pk.buf[len(pk.buf):route.MaxPeek]
		n, err := sysRead(int(c.cfd), free)
		switch {
		case err == unix.EAGAIN:
			c.ready &^= cReadable
		case err != nil:
			l.abort(c, sideError(observe.SideClient, os.NewSyscallError("read", err)))
			return
		case n == 0:
			pk.eof = true
		default:
			pk.buf = pk.buf[:len(pk.buf)+n]
			if n < len(free) {
				// A short read drained the socket: edge-triggered epoll
				// reports what comes next. If the FIN had arrived too,
				// this was the last of it.
				c.ready &^= cReadable
				pk.eof = c.ready&cHup != 0
			}
		}
	}
	if l.e.onPeek != nil {
		l.e.onPeek(len(pk.buf))
	}
	l.peekDecide(c, false)
}

// peekDecide asks the decider about the bytes read so far; timedOut says
// the match timeout has passed.
func (l *loop) peekDecide(c *conn, timedOut bool) {
	pk := c.peek
	if c.checkSig {
		// The bytes are read here, not peeked at by the relay: judge them
		// here as judgeSignature would.
		switch signatureOf(pk.buf[:min(len(pk.buf), 12)]) {
		case isSignature:
			c.checkSig = false
			l.abort(c, errUntrustedHeader)
			return
		case partOfSignature:
			if timedOut {
				c.checkSig = false
				l.abort(c, fmt.Errorf("%w: its start, then nothing more within the match timeout", errUntrustedHeader))
				return
			}
			if !pk.eof {
				return // the next bytes tell
			}
		}
		c.checkSig = false
	}
	dec, more := pk.d.Decide(pk.buf, pk.eof, timedOut)
	if more {
		if len(dec.Reply) > 0 {
			l.reply(c, dec.Reply)
		}
		return
	}
	l.disarm(c) // the match timeout
	pk.dec = dec
	l.decided(c, dec)
}

// reply writes pj's own answer to the client (a PostgreSQL client is told
// 'S' to start TLS). The client waits for it and has read nothing yet, so
// the socket takes the byte whole.
func (l *loop) reply(c *conn, b []byte) {
	n, err := sysWrite(int(c.cfd), b)
	switch {
	case err != nil && err != unix.EAGAIN:
		l.abort(c, sideError(observe.SideClient, os.NewSyscallError("write", err)))
	case n < len(b):
		l.abort(c, sideError(observe.SideClient, fmt.Errorf("write the answer to its request: %d of %d bytes", max(n, 0), len(b))))
	}
}

// decided sends c the way the decision says.
func (l *loop) decided(c *conn, dec route.Decision) {
	c.sni = dec.SNI
	if len(c.proxy.ACME) > 0 && len(dec.ALPN) > 0 {
		// The CA validating a name pj obtains a certificate for
		// (tls-alpn-01): pj answers, whatever route the name takes.
		if r := c.proxy.ACMEFor(dec.SNI, dec.ALPN); r != nil {
			l.toRoute(c, r)
			return
		}
	}
	if dec.Route == route.NoRoute {
		c.closedBy = observe.SidePJ
		l.close(c, observe.StatusNoRoute, errNoRoute)
		return
	}
	l.toRoute(c, c.proxy.Routes[dec.Route])
}

// toRoute starts connecting c to a backend of its route r, with the bytes
// read to choose it (c.peek) to be sent first. This is the one step after
// the choice: a route that needs TLS in user space hands the connection
// and those bytes to the TLS path here instead.
func (l *loop) toRoute(c *conn, r *proxy.Route) {
	c.route = r
	r.Taken.Add(1)
	if r.TLS != nil {
		l.handOff(c, r)
		return
	}
	c.order = r.Pool().Start(c.client.Addr())
	c.deadline = l.now + int64(r.ConnectTimeout)
	c.state = stateConnecting
	l.connectNext(c)
}

// sendPrelude writes what the backend must answer before it gets the
// client's bytes: the PROXY protocol header if the route sends one, then
// the prelude (a PostgreSQL SSLRequest). The backend's socket is new and
// empty, so it takes these few bytes whole; anything else fails this
// backend, and the next is tried.
func (l *loop) sendPrelude(c *conn) {
	pk := c.peek
	out := l.buf[:0]
	if c.route.ProxyProtocol != 0 {
		hdr, err := l.proxyHeader(c)
		if err != nil {
			l.abort(c, fmt.Errorf("format the PROXY protocol header: %w", err))
			return
		}
		out = append(out, hdr...)
	}
	out = append(out, pk.buf[pk.dec.Skip:pk.dec.Skip+pk.dec.Prelude]...)
	n, err := sysWrite(int(c.bfd), out)
	if err == nil && n < len(out) {
		err = fmt.Errorf("only %d of %d bytes written", n, len(out))
	}
	if err != nil {
		l.answerFailed(c, fmt.Errorf("send the %s: %w", preludeName, err))
		return
	}
	c.state = stateAnswer
	pk.got = 0
}

// answerEvent handles readiness of a backend socket that owes an answer
// to the prelude.
func (l *loop) answerEvent(c *conn, events uint32) {
	if events&unix.EPOLLERR != 0 {
		err := evloop.SocketError(int(c.bfd))
		if err == nil {
			err = unix.ECONNRESET
		}
		l.answerFailed(c, err)
		return
	}
	if c.ready&bReadable == 0 {
		return
	}
	pk := c.peek
	want := pk.dec.Expect
	for pk.got < len(want) {
		// Exactly the answer's bytes are read: what the backend sends
		// after it is the client's.
		b := l.buf[:len(want)-pk.got]
		n, err := sysRead(int(c.bfd), b)
		switch {
		case err == unix.EAGAIN:
			c.ready &^= bReadable
			return
		case err != nil:
			l.answerFailed(c, err)
			return
		case n == 0:
			l.answerFailed(c, errors.New("closed without answering the "+preludeName))
			return
		case !bytes.Equal(b[:n], want[pk.got:pk.got+n]):
			l.answerFailed(c, fmt.Errorf("answered %q to the %s, not %q", b[:n], preludeName, want))
			return
		}
		pk.got += n
	}
	l.established(c)
}

// answerFailed abandons a backend that did not answer the prelude as it
// should: a failed connect, as if it had refused. Nothing has reached the
// client, so the next backend may be tried.
func (l *loop) answerFailed(c *conn, err error) {
	c.err = fmt.Errorf("connect to %s: %w", c.backend.Address, err)
	c.state = stateConnecting
	l.dropBackend(c)
	l.connectNext(c)
}

// sendPeeked writes the bytes read to choose the route to the backend,
// after any PROXY header and before anything the relay reads, and gives
// the peek buffer back. What the backend cannot take at once waits in the
// direction's spill, as the relay's own bytes do.
func (l *loop) sendPeeked(c *conn) error {
	pk := c.peek
	c.peek = nil
	defer l.putPeek(pk)
	if pk.dec.Prelude > 0 {
		l.delivered(c, &c.up, pk.dec.Prelude) // sent by sendPrelude, counted once it was answered
	}
	rest := pk.buf[pk.dec.Skip+pk.dec.Prelude:]
	if len(c.up.spill) == 0 && len(rest) > 0 {
		n, err := sysWrite(int(c.bfd), rest)
		if err == unix.EAGAIN {
			n, err = 0, nil
		}
		if err != nil {
			return sideError(observe.SideBackend, os.NewSyscallError("write", err))
		}
		l.delivered(c, &c.up, n)
		rest = rest[n:]
	}
	if len(rest) > 0 {
		c.up.spill = append(c.up.spill, rest...) // a copy: the buffer goes back to the loop
		c.ready &^= bWritable
	}
	c.up.eof = pk.eof
	return nil
}

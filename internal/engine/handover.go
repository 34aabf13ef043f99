//go:build linux

package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/ilist"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/upgrade"
)

// Dup returns a duplicate of the listening socket's descriptor, for a
// process that takes over serving it (an upgrade). The duplicate shares
// the socket and its accept queue; the caller owns it.
func (ln *Listener) Dup() (int, error) {
	fd, err := unix.FcntlInt(uintptr(ln.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	return fd, nil
}

// An upgrade moves relaying connections to the new process: their two
// sockets, and what the connection has read but not yet written, in a
// pipe (its splice pipe as it is, or a new one holding its spill). A
// moving connection leaves the loop's epoll set before its descriptors
// leave the process: a registration lives as long as the open file, not
// the descriptor, so a duplicate sent away would keep waking the loop.

// Moved is a relaying connection as it moves from one process to another.
type Moved struct {
	Proxy    string    `json:"proxy"`
	Route    string    `json:"route"`
	Backend  string    `json:"backend"`
	Client   string    `json:"client"` // the client's address (from a PROXY header, if one came)
	SNI      string    `json:"sni,omitempty"`
	Accepted time.Time `json:"accepted"`
	// Deadlines are absolute: the last byte moved, and the end of the
	// first direction (zero: both open).
	LastActive time.Time `json:"last_active"`
	HalfAt     time.Time `json:"half_at,omitzero"`
	ConnectNS  int64     `json:"connect_ns"`
	Spliced    bool      `json:"spliced,omitempty"`
	ClosedBy   uint8     `json:"closed_by,omitempty"`
	// Admitted: the client's connection is counted by its proxy's
	// per-client cap.
	Admitted bool `json:"admitted,omitempty"`
	// HeaderSent: a PROXY protocol header went to the backend.
	HeaderSent bool     `json:"header_sent,omitempty"`
	Up         MovedDir `json:"up"`
	Down       MovedDir `json:"down"`
	// Detached is when the connection left the old process's loop.
	Detached time.Time `json:"detached"`
}

// MovedDir is one direction of a moved connection.
type MovedDir struct {
	Bytes int64 `json:"bytes"`
	// Pending is how many bytes read but not yet written wait in the
	// direction's pipe (0: none, and no pipe travels).
	Pending   int  `json:"pending,omitempty"`
	Uncounted int  `json:"uncounted,omitempty"` // leading pending bytes pj wrote itself (a PROXY header)
	EOF       bool `json:"eof,omitempty"`
	Done      bool `json:"done,omitempty"`
}

// FDs is how many descriptors travel with m: the client's and the
// backend's sockets, then a pipe per direction with pending bytes.
func (m *Moved) FDs() int {
	n := 2
	if m.Up.Pending > 0 {
		n++
	}
	if m.Down.Pending > 0 {
		n++
	}
	return n
}

// Detached is a connection taken out of the engine, and its descriptors.
type Detached struct {
	Moved
	FD []int
	// What it was relayed by, to take it back if it cannot move.
	ln *Listener
	p  *proxy.Proxy
	r  *proxy.Route
	b  *balance.Backend
}

// Reattach takes back a detached connection that could not be sent.
func (e *Engine) Reattach(d Detached) error {
	return e.Adopt(d.Moved, d.FD, d.ln, d.p, d.r, d.b)
}

// Detach takes every connection that can move out of the loops: those
// relaying plain TCP (not choosing a route, not connecting, not on the TLS
// path), at most max. They are no longer the engine's: the caller sends
// their descriptors to another process, then closes them.
func (e *Engine) Detach(max int) []Detached {
	var out []Detached
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error {
			for c := l.byAge.Front(); c != nil && len(out) < max; {
				next := ilist.Next(c)
				if d, ok := l.detach(c); ok {
					out = append(out, d)
				}
				c = next
			}
			return nil
		})
	}
	return out
}

// detach takes c out of the loop if it can move.
func (l *loop) detach(c *conn) (Detached, bool) {
	if c.state != stateRelay || c.peek != nil || c.bfd < 0 || c.backend == nil || c.route == nil {
		return Detached{}, false
	}
	// Both bytes held in user space and in a pipe: too rare to move.
	for _, d := range [...]*dir{&c.up, &c.down} {
		if len(d.spill) > 0 && d.inPipe > 0 {
			return Detached{}, false
		}
	}
	m := Moved{
		Proxy: c.proxy.Name, Route: c.route.Name, Backend: c.backend.Address, Client: c.client.String(),
		SNI: c.sni, Accepted: c.accepted, LastActive: l.wallAt(c.lastActive), ConnectNS: c.connectDur,
		Spliced: c.spliced, ClosedBy: uint8(c.closedBy), Admitted: c.clients != nil,
		HeaderSent: c.route.ProxyProtocol != 0, Detached: time.Now(),
	}
	if c.halfAt > 0 {
		m.HalfAt = l.wallAt(c.halfAt)
	}
	fds := []int{int(c.cfd), int(c.bfd)}
	var ok bool
	if m.Up, m.Down, fds, ok = pending(c, fds); !ok {
		return Detached{}, false
	}
	// Out of the epoll set first, then out of the loop's books.
	for _, fd := range [...]int32{c.cfd, c.bfd} {
		_ = unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_DEL, int(fd), nil)
		l.clearConn(int(fd))
	}
	l.forget(c)
	c.state = stateClosed // work queued for it is skipped
	for _, d := range [...]*dir{&c.up, &c.down} {
		if d.hasPipe {
			// Its read end travels (or it is empty); the write end is
			// no one's.
			closeFD(int(d.pipe.w))
			if d.inPipe == 0 {
				closeFD(int(d.pipe.r))
			}
			d.hasPipe, d.inPipe = false, 0
		}
		d.spill = nil
	}
	l.load.Add(-1)
	c.backend.Active.Add(-1)
	if c.clients != nil {
		c.clients.Release(c.client.Addr())
	}
	l.e.release(c.proxy)
	return Detached{Moved: m, FD: fds, ln: c.ln, p: c.proxy, r: c.route, b: c.backend}, true
}

// pending describes c's directions, appending to fds a pipe for each that
// holds bytes read but not yet written: its splice pipe, or a new one
// holding its spill. It reports false, having closed any new pipe, when
// a spill does not fit one.
func pending(c *conn, fds []int) (up, down MovedDir, out []int, ok bool) {
	var made []int
	var mds [2]MovedDir
	for i, d := range [...]*dir{&c.up, &c.down} {
		md := MovedDir{Bytes: d.bytes.Load(), Uncounted: d.uncounted, EOF: d.eof, Done: d.done}
		switch {
		case d.inPipe > 0:
			md.Pending = int(d.inPipe)
			fds = append(fds, int(d.pipe.r))
		case len(d.spill) > 0:
			r, err := spillPipe(d.spill)
			if err != nil {
				upgrade.CloseFDs(made)
				return up, down, nil, false
			}
			made = append(made, r)
			md.Pending = len(d.spill)
			fds = append(fds, r)
		}
		mds[i] = md
	}
	return mds[0], mds[1], fds, true
}

// wallAt is the wall-clock time of t on the loop's clock.
func (l *loop) wallAt(t int64) time.Time { return l.e.start.Add(time.Duration(t)) }

// spillPipe returns the read end of a new pipe holding b.
func spillPipe(b []byte) (int, error) {
	p, err := newPipe()
	if err != nil {
		return -1, err
	}
	n, err := unix.Write(int(p.w), b)
	closeFD(int(p.w))
	if err != nil || n != len(b) {
		closeFD(int(p.r))
		return -1, fmt.Errorf("a spill of %d bytes does not fit a pipe", len(b))
	}
	return int(p.r), nil
}

// ErrCannotAdopt is returned for a moved connection whose proxy, route or
// backend this process does not have.
var ErrCannotAdopt = errors.New("cannot take over the connection")

// Adopt takes over a connection another process relayed: fds are its
// client and backend sockets, then a pipe per direction with pending
// bytes, all owned by the engine from now on (closed on error). The
// connection goes on as it was, over every cap: counted by its proxy, its
// backend (least-conn) and its client's cap. The connection joins the
// least loaded loop after Adopt returns.
func (e *Engine) Adopt(m Moved, fds []int, ln *Listener, p *proxy.Proxy, r *proxy.Route, b *balance.Backend) error {
	if len(fds) != m.FDs() {
		upgrade.CloseFDs(fds)
		return fmt.Errorf("%w: %d descriptors, want %d", ErrCannotAdopt, len(fds), m.FDs())
	}
	client, err := netip.ParseAddrPort(m.Client)
	if err != nil {
		upgrade.CloseFDs(fds)
		return fmt.Errorf("%w: client %q: %v", ErrCannotAdopt, m.Client, err)
	}
	c := &conn{
		id: e.nextID.Add(1), cfd: int32(fds[0]), bfd: int32(fds[1]), state: stateRelay,
		ln: ln, proxy: p, route: r, backend: b, client: client, sni: m.SNI, accepted: m.Accepted,
		counted: true, reached: true, connectDur: m.ConnectNS, spliced: m.Spliced, closedBy: observe.Side(m.ClosedBy),
		// Every end may move: the first turn finds out.
		ready: cReadable | cWritable | bReadable | bWritable,
	}
	next := 2
	for _, x := range [...]struct {
		d  *dir
		md MovedDir
	}{{&c.up, m.Up}, {&c.down, m.Down}} {
		x.d.bytes.Store(x.md.Bytes)
		x.d.eof, x.d.done, x.d.uncounted = x.md.EOF, x.md.Done, x.md.Uncounted
		if x.md.Pending > 0 {
			spill, err := readPipe(fds[next], x.md.Pending)
			closeFD(fds[next])
			fds[next] = -1
			if err != nil {
				upgrade.CloseFDs(fds)
				return fmt.Errorf("%w: its pending bytes: %v", ErrCannotAdopt, err)
			}
			x.d.spill = spill
			next++
		}
	}
	// Counted over the caps: the alternative is a reset.
	e.active.Add(1)
	p.Stats.Active.Add(1)
	b.Active.Add(1)
	if m.Admitted && p.Clients != nil {
		p.Clients.Hold(client.Addr())
		c.clients = p.Clients
	}
	target := e.loops[0]
	for _, o := range e.loops {
		if o.load.Load() < target.load.Load() {
			target = o
		}
	}
	target.load.Add(1)
	lastActive, halfAt := m.LastActive, m.HalfAt
	if !target.poll.Post(func(l *loop) { l.adopt(c, lastActive, halfAt) }) {
		target.load.Add(-1)
		c.state = stateClosed
		closeFD(int(c.cfd))
		closeFD(int(c.bfd))
		b.Active.Add(-1)
		if c.clients != nil {
			c.clients.Release(client.Addr())
		}
		e.unreserve(p)
		return fmt.Errorf("%w: the engine has stopped", ErrCannotAdopt)
	}
	return nil
}

// adopt gives a moved connection its place in the loop and relays what
// it can at once.
func (l *loop) adopt(c *conn, lastActive, halfAt time.Time) {
	defer l.recoverConn(c)
	c.gen = l.nextGen()
	c.lastActive = l.loopAt(lastActive)
	if !halfAt.IsZero() {
		c.halfAt = max(l.loopAt(halfAt), 1)
	}
	l.byAge.PushBack(c)
	for _, fd := range [...]int32{c.cfd, c.bfd} {
		if err := l.register(int(fd), c.gen); err != nil {
			c.closedBy = observe.SidePJ
			l.abort(c, err)
			return
		}
		l.setConn(int(fd), c)
	}
	if bw := c.route.Bandwidth; bw > 0 {
		c.up.budget, c.down.budget = newBucket(bw, l.now), newBucket(bw, l.now)
	}
	l.armRelay(c)
	l.queue(c)
}

// loopAt is wall-clock time t on the loop's clock.
func (l *loop) loopAt(t time.Time) int64 { return int64(t.Sub(l.e.start)) }

// readPipe reads the n bytes a pipe holds.
func readPipe(fd, n int) ([]byte, error) {
	buf := make([]byte, n)
	got := 0
	for got < n {
		k, err := unix.Read(fd, buf[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, os.NewSyscallError("read", err)
		}
		if k == 0 {
			return nil, fmt.Errorf("the pipe held %d bytes, not %d", got, n)
		}
		got += k
	}
	return buf, nil
}

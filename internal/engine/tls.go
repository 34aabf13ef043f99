package engine

import (
	"bytes"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/tlsproxy"
)

// A route with tls or backend_tls needs TLS in user space, which the loops
// do not do: once its route is chosen, the connection leaves the loop for
// the TLS path (internal/tlsproxy), with the bytes read to choose the route.
// The engine keeps counting it (its proxy's and the process's active
// connections, the per-client slot) until the TLS path calls Done, so caps,
// Idle and the grace period see it as they see the loops' own.

// handOff gives c to the TLS path of route r. The loop forgets c at once:
// it stops watching the socket, drops its timers and its place in the list.
func (l *loop) handOff(c *conn, r *proxy.Route) {
	fd := int(c.cfd)
	// The TLS path's net.Conn holds a duplicate of fd, which would keep
	// the registration alive after fd is closed: take fd out of the loop's
	// epoll first.
	if _, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(l.poll.FD()), unix.EPOLL_CTL_DEL, uintptr(fd),
		uintptr(unsafe.Pointer(&l.ev)), 0, 0); e != 0 {
		l.abort(c, sideError(observe.SidePJ, os.NewSyscallError("epoll_ctl", e)))
		return
	}
	c.state = stateClosed
	l.forget(c)
	l.load.Add(-1)
	l.clearConn(fd)
	var peeked []byte
	if c.peek != nil {
		peeked = bytes.Clone(c.peek.buf)
		l.putPeek(c.peek)
		c.peek = nil
	}
	clients, client, ln, p := c.clients, c.client, c.ln, c.proxy
	done := func() {
		if clients != nil {
			clients.Release(client.Addr())
		}
		l.e.release(p)
	}
	nc, err := tlsproxy.FromFD(fd, "client") // fd is closed whatever happens
	if err != nil {
		// Nothing was said to the client yet; the end is logged as the
		// loop logs its own.
		p.Stats.Conns[observe.StatusIndex(observe.StatusError)].Add(1)
		p.Stats.Duration.Observe(l.wall.Sub(c.accepted))
		c.closedBy = observe.SidePJ
		l.logConn(c, observe.StatusError, err)
		done()
		return
	}
	l.e.tls.Serve(tlsproxy.Handoff{
		Conn: nc, ID: c.id, Client: client, Local: c.local, Listener: ln.addr,
		Accepted: c.accepted, Peeked: peeked, Route: r.TLS, Done: done,
	})
}

// tlsConnections lists the TLS path's connections as the admin API shows
// them.
func (e *Engine) tlsConnections() []ConnInfo {
	list := e.tls.Connections()
	out := make([]ConnInfo, 0, len(list))
	for _, t := range list {
		out = append(out, ConnInfo{ID: t.ID, Proxy: t.Proxy, Route: t.Route, Client: t.Client, Listener: t.Listener,
			Backend: t.Backend, Started: t.Started, Up: t.Up, Down: t.Down, TLS: t.TLS, SNI: t.SNI})
	}
	return out
}

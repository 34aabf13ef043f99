package tlsproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/certs"
	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/observe"
)

// session is one handed-over connection.
type session struct {
	srv   *Server
	h     Handoff
	r     *Route
	start time.Time // monotonic origin of lastActive

	ctx    context.Context // cancelled by abort: ends a dial under way
	cancel context.CancelFunc

	client *clientConn

	mu       sync.Mutex // guards what abort closes, and cause
	cause    error      // why pj ended the connection, if it did
	front    net.Conn   // what the relay reads the client from
	back     net.Conn   // the backend connection, once there is one
	finished bool

	backend    atomic.Pointer[balance.Backend] // once it answered
	tried      *balance.Backend                // the last backend tried
	counted    bool                            // backend.Active includes this connection
	connect    time.Duration
	up, down   atomic.Int64
	lastActive atomic.Int64 // nanoseconds since start
	quietMu    sync.Mutex   // orders a timeout's verdict and bytes arriving
	quiet      bool         // a timeout ended the connection: pass nothing more on
	halfAt     atomic.Int64 // nanoseconds since start when one direction ended; 0 before
	firstEnd   atomic.Int32 // the side whose end of stream came first
	timerMu    sync.Mutex   // guards timer and timerOff
	timer      *time.Timer  // the idle and half-close timeouts' one timer
	timerOff   bool         // the relay is over: arm no more
	closedBy   observe.Side
	tlsVersion atomic.Pointer[string] // once the client's handshake is done
	sni        atomic.Pointer[string]
}

func newSession(s *Server, h Handoff) *session {
	ss := &session{srv: s, h: h, r: h.Route, start: time.Now()}
	ss.ctx, ss.cancel = context.WithCancel(context.Background())
	ss.client = &clientConn{Conn: h.Conn, peeked: h.Peeked, sess: ss}
	ss.front = ss.client
	return ss
}

// run takes the connection through its phases and finishes it.
func (ss *session) run() {
	status, err := ss.phases()
	ss.finish(status, err)
}

func (ss *session) phases() (observe.Status, error) {
	r := ss.r
	var alpn []string
	if r.Terminate != nil {
		tc, err := r.Terminate.handshake(ss.client, r.ConnectTimeout)
		if err != nil {
			if c := ss.causeErr(); c != nil {
				return statusOf(c), c
			}
			return observe.StatusTLSFailed, err
		}
		st := tc.ConnectionState()
		v := certs.VersionName(st.Version)
		ss.tlsVersion.Store(&v)
		ss.setSNI(st.ServerName)
		if st.NegotiatedProtocol == certs.ChallengeProto {
			// An ACME server validating a tls-alpn-01 challenge: the
			// handshake was the whole answer.
			ss.closedBy = observe.SidePJ
			_ = tc.Close()
			return observe.StatusOK, nil
		}
		if st.NegotiatedProtocol != "" {
			alpn = []string{st.NegotiatedProtocol}
		}
		if !ss.setFront(tc) {
			return statusOf(ss.causeErr()), ss.causeErr()
		}
	}
	back, err := ss.reach(alpn)
	if err != nil {
		if c := ss.causeErr(); c != nil {
			return statusOf(c), c
		}
		if ss.tried == nil {
			return observe.StatusNoBackend, err
		}
		return observe.StatusConnectFailed, err
	}
	if !ss.setBack(back) {
		_ = back.Close()
		return statusOf(ss.causeErr()), ss.causeErr()
	}
	return ss.relay()
}

// setFront makes the relay read the client through c; it reports false
// if the connection was aborted meanwhile.
func (ss *session) setFront(c net.Conn) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.front = c
	return ss.cause == nil
}

func (ss *session) setBack(c net.Conn) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.back = c
	return ss.cause == nil
}

func (ss *session) causeErr() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.cause
}

func (ss *session) setSNI(name string) {
	if name != "" {
		ss.sni.Store(&name)
	}
}

// abort ends the connection from pj's side: both sockets are closed, so
// whatever phase runs ends at once with an error; cause says why.
func (ss *session) abort(cause error) {
	if ss.blame(cause) {
		ss.shut()
	}
}

// blame records why pj ends the connection, unless it has a cause already
// or is finished; it reports whether it did.
func (ss *session) blame(cause error) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.cause != nil || ss.finished {
		return false
	}
	ss.cause = cause
	return true
}

// shut closes what the connection has open, for abort.
func (ss *session) shut() {
	ss.mu.Lock()
	front, back := ss.front, ss.back
	ss.mu.Unlock()
	ss.cancel()
	_ = ss.h.Conn.Close()
	if front != nil {
		_ = front.Close()
	}
	if back != nil {
		_ = back.Close()
	}
}

// reach connects to a backend of the route, trying them in the pool's
// order. Each try gets an equal share of the connect time left, as in the
// engine, so a backend that swallows SYNs cannot starve the others.
func (ss *session) reach(alpn []string) (net.Conn, error) {
	r := ss.r
	order := r.Backends.Pool().Start(ss.h.Client.Addr())
	deadline := time.Now().Add(r.ConnectTimeout)
	var lastErr error
	for {
		b := order.Next()
		if b == nil {
			if ss.tried == nil {
				return nil, balance.ErrNoBackend
			}
			return nil, lastErr
		}
		ss.tried = b
		if b.Err != nil {
			lastErr = b.Err
			continue
		}
		left := time.Until(deadline)
		if left <= 0 {
			if lastErr == nil {
				lastErr = fmt.Errorf("connect to %s: connect timeout", b.Address)
			}
			return nil, lastErr
		}
		share := left / time.Duration(order.Remaining()+1)
		// A connection counts on its backend from the start of the
		// attempt, so that least-conn sees those being opened.
		b.Active.Add(1)
		c, err := ss.dial(b, share, alpn)
		if err != nil {
			b.Active.Add(-1)
			lastErr = err
			if ss.ctx.Err() != nil {
				return nil, err // aborted: not the backend's fault
			}
			ss.observe(b, balance.Result{Err: err, Passive: true})
			continue
		}
		ss.counted = true
		b.Total.Add(1)
		ss.connect = time.Since(ss.h.Accepted)
		b.Connect.Observe(ss.connect)
		ss.observe(b, balance.Result{OK: true, Passive: true})
		ss.backend.Store(b)
		return c, nil
	}
}

// dial opens one backend connection within timeout: TCP, the PROXY
// header, then TLS if the route originates it. A warm connection, if the
// route's pool has one, is all of that done already; it cannot serve a
// client whose negotiated ALPN must reach a TLS backend, since the pool's
// handshake offered none.
func (ss *session) dial(b *balance.Backend, timeout time.Duration, alpn []string) (net.Conn, error) {
	if w := ss.r.Warm; w != nil && (len(alpn) == 0 || ss.r.Originate == nil) {
		if c := w.TakeConn(b); c != nil {
			return c, nil
		}
	}
	ctx, cancel := context.WithTimeout(ss.ctx, timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", b.Addr.String())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", b.Address, evloop.UnwrapOp(err))
	}
	deadline, _ := ctx.Deadline()
	if ss.r.ProxyProtocol != 0 {
		if err := ss.sendHeader(raw, deadline); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("send the PROXY header to %s: %w", b.Address, err)
		}
	}
	if ss.r.Originate == nil {
		return raw, nil
	}
	tc, err := ss.r.Originate.handshake(raw, BackendHost(b), alpn, deadline)
	if err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("TLS to %s: %w", b.Address, err)
	}
	return tc, nil
}

func (ss *session) sendHeader(c net.Conn, deadline time.Time) error {
	local := ss.h.Local
	if !local.IsValid() {
		if a, ok := ss.h.Conn.LocalAddr().(*net.TCPAddr); ok {
			local = a.AddrPort()
		}
	}
	client := ss.h.Client
	src, dst := net.TCPAddrFromAddrPort(client), net.TCPAddrFromAddrPort(local)
	if client.Addr().Is4() != local.Addr().Is4() {
		// One family per header: say both in IPv6, where both fit.
		src = net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(client.Addr().As16()), client.Port()))
		dst = net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(local.Addr().As16()), local.Port()))
	}
	hdr, err := proxyproto.HeaderProxyFromAddrs(ss.r.ProxyProtocol, src, dst).Format()
	if err != nil {
		return err
	}
	_ = c.SetWriteDeadline(deadline)
	_, err = c.Write(hdr)
	_ = c.SetWriteDeadline(time.Time{})
	return err
}

func (ss *session) observe(b *balance.Backend, r balance.Result) {
	if tr, changed := b.Observe(r, ss.r.Rise, ss.r.Fall); changed {
		balance.LogTransition(ss.srv.log, ss.r.Proxy, b, tr)
	}
}

// finish closes everything, counts and logs the connection, and hands it
// back to the engine.
func (ss *session) finish(status observe.Status, err error) {
	ss.mu.Lock()
	if ss.finished {
		ss.mu.Unlock()
		return
	}
	ss.finished = true
	front, back := ss.front, ss.back
	ss.mu.Unlock()
	ss.cancel()
	if front != nil {
		_ = front.Close()
	}
	_ = ss.h.Conn.Close()
	if back != nil {
		_ = back.Close()
	}
	b := ss.backend.Load()
	if ss.counted {
		b.Active.Add(-1)
	}
	dur := time.Since(ss.h.Accepted)
	st := ss.r.Stats
	st.Conns[observe.StatusIndex(status)].Add(1)
	st.Duration.Observe(dur)

	rec := observe.Conn{
		ID:         ss.h.ID,
		Proxy:      ss.r.Proxy,
		ClientAddr: ss.h.Client,
		Listener:   ss.h.Listener,
		Accepted:   ss.h.Accepted,
		Duration:   dur,
		Up:         ss.up.Load(),
		Down:       ss.down.Load(),
		Status:     status,
		Err:        err,
		Connect:    ss.connect,
		ClosedBy:   ss.closedBy.String(),
		Relay:      "copy",
		Route:      ss.r.Name,
	}
	if p := ss.sni.Load(); p != nil {
		rec.SNI = *p
	}
	if p := ss.tlsVersion.Load(); p != nil {
		rec.TLS = *p
	}
	if rec.ClosedBy == "" {
		rec.ClosedBy = observe.SidePJ.String()
	}
	switch {
	case b != nil:
		rec.Backend = b.Address
	case status == observe.StatusConnectFailed && ss.tried != nil:
		rec.Backend = ss.tried.Address
	}
	// The status says it all, except which side hung when the
	// half-close timeout ended the connection.
	if status == observe.StatusOK || status == observe.StatusShutdown || errors.Is(err, ErrIdleTimeout) {
		rec.Err = nil
	}
	observe.Log(context.Background(), ss.srv.log, &rec)
	ss.srv.forget(ss)
	if ss.h.Done != nil {
		ss.h.Done()
	}
}

func (ss *session) info() ConnInfo {
	ci := ConnInfo{ID: ss.h.ID, Proxy: ss.r.Proxy, Route: ss.r.Name, Client: ss.h.Client, Listener: ss.h.Listener,
		Started: ss.h.Accepted, Up: ss.up.Load(), Down: ss.down.Load()}
	if b := ss.backend.Load(); b != nil {
		ci.Backend = b.Address
	}
	if p := ss.sni.Load(); p != nil {
		ci.SNI = *p
	}
	if p := ss.tlsVersion.Load(); p != nil {
		ci.TLS = *p
	}
	return ci
}

// clientConn is the client's connection as the TLS server reads it: bytes
// a route decider peeked come first, and the hello's server name is noted
// for the log even if the handshake fails.
type clientConn struct {
	net.Conn
	peeked []byte
	sess   *session
}

func (c *clientConn) Read(b []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(b, c.peeked)
		c.peeked = c.peeked[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// ObserveHello implements certs.HelloObserver.
func (c *clientConn) ObserveHello(h *tls.ClientHelloInfo) { c.sess.setSNI(h.ServerName) }

// CloseWrite passes a half-close on to the socket.
func (c *clientConn) CloseWrite() error { return closeWrite(c.Conn) }

// isReset reports whether err is a connection reset by the peer.
func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

func errorText(v any) string {
	if err, ok := v.(error); ok {
		return err.Error()
	}
	return fmt.Sprint(v)
}

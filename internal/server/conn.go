package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/relay"
)

// handle runs one client connection from accept to its log line: choose a
// backend, connect (failing over to the next on error), relay, log.
func (s *Server) handle(l *listener, p *Proxy, client *net.TCPConn) {
	rec := observe.Conn{
		ID:       s.nextID.Add(1),
		Proxy:    p.Name,
		Listener: l.addr,
		Accepted: time.Now(),
	}
	clientAddr := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	rec.Client = clientAddr.String()
	var conn *net.TCPConn

	defer func() {
		if v := recover(); v != nil {
			// A bug in pj must cost one connection, never the process.
			_ = client.Close() // the connection is being abandoned; close errors are moot
			if conn != nil {
				_ = conn.Close()
			}
			s.recordPanic(&rec, &relay.PanicError{Value: v, Stack: debug.Stack()})
		}
		rec.Duration = time.Since(rec.Accepted)
		observe.Log(context.Background(), s.log, &rec)
		s.active.Add(-1)
		s.connections.Done()
	}()

	if s.onConnect != nil {
		s.onConnect()
	}

	backend, c, status, err := s.connect(p, clientAddr)
	conn = c
	if backend != nil {
		rec.Backend = backend.Address
	}
	if err != nil {
		_ = client.Close() // nothing was relayed; the close error is moot
		rec.Status, rec.Err = status, err
		return
	}

	backend.Active.Add(1)
	backend.Total.Add(1)
	res := relay.Relay(s.cut, client, conn, relay.Options{IdleTimeout: p.IdleTimeout})
	backend.Active.Add(-1)

	rec.Up, rec.Down, rec.Relay = res.Up, res.Down, string(res.Mode)
	rec.Status = statusOf(res.Err)
	switch rec.Status {
	case observe.StatusReset:
		rec.Err = res.Err
	case observe.StatusError:
		s.recordPanic(&rec, res.Err)
	}
}

// recordPanic counts a recovered panic and logs it with its stack.
func (s *Server) recordPanic(rec *observe.Conn, err error) {
	s.panics.Add(1)
	rec.Status, rec.Err = observe.StatusError, err
	var pe *relay.PanicError
	stack := ""
	if errors.As(err, &pe) {
		stack = string(pe.Stack)
	}
	s.log.Error("panic while handling a connection; the connection was closed and pj goes on",
		"conn", rec.ID, "client", rec.Client, "error", err.Error(), "stack", stack)
}

// statusOf maps what ended a relay to the status of its log line.
func statusOf(err error) observe.Status {
	switch {
	case err == nil:
		return observe.StatusOK
	case errors.Is(err, relay.ErrIdleTimeout):
		return observe.StatusTimeout
	case errors.Is(err, errShutdown):
		return observe.StatusShutdown
	case errors.As(err, new(*relay.PanicError)):
		return observe.StatusError
	default:
		return observe.StatusReset
	}
}

// connect dials the proxy's backends in the pool's order until one answers.
// The whole attempt is bounded by the connect timeout; each try gets an equal
// share of what is left, so one backend that swallows SYNs cannot starve the
// others, and one that refuses at once costs nothing.
func (s *Server) connect(p *Proxy, client netip.AddrPort) (*balance.Backend, *net.TCPConn, observe.Status, error) {
	var buf [8]*balance.Backend
	cands := p.Pool.Candidates(buf[:0], client.Addr())
	if len(cands) == 0 {
		return nil, nil, observe.StatusNoBackend, errors.New("no backend is eligible")
	}
	deadline := time.Now().Add(p.ConnectTimeout)
	var (
		last    *balance.Backend
		lastErr error
	)
	for i, b := range cands {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		ctx, cancel := context.WithTimeout(s.cut, left/time.Duration(len(cands)-i))
		c, err := p.dialer.DialContext(ctx, "tcp", b.Address)
		cancel()
		if err == nil {
			return b, c.(*net.TCPConn), "", nil
		}
		last, lastErr = b, err
		if cause := context.Cause(s.cut); cause != nil {
			return last, nil, observe.StatusShutdown, fmt.Errorf("connect %s: %w", b.Address, cause)
		}
		if i+1 < len(cands) {
			s.log.Debug("backend connect failed; trying the next", "proxy", p.Name, "backend", b.Address, "error", err.Error())
		}
	}
	if lastErr == nil {
		lastErr = errors.New("connect timeout spent")
	}
	return last, nil, observe.StatusConnectFailed, fmt.Errorf("connect: %w", lastErr)
}

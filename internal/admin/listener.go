package admin

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/observe"
)

// The admin listener shares the process's descriptors with the proxy, and
// must never take those the proxy needs, nor be locked out when the proxy
// has taken them all.
const (
	// MaxConns caps the admin listener's open connections. Past it, new
	// connections wait in the kernel's accept queue, which costs pj no
	// descriptor, until one closes.
	MaxConns = 16
	// IdleTimeout closes a keep-alive connection that has sent no request
	// for this long (the status page asks every second).
	IdleTimeout = 10 * time.Second
)

// capListener is the admin listener's net.Listener: at most MaxConns
// connections, and a descriptor in reserve for when the process has no
// other (see reserve).
type capListener struct {
	*net.TCPListener
	rc      syscall.RawConn
	slots   chan struct{} // one value per open connection
	done    chan struct{}
	once    sync.Once
	reserve reserve
	handler http.Handler // answers the connections of the reserve
	active  func() int64 // the proxy's open connections, for the log
	log     *slog.Logger
	short   observe.Sometimes // a shortage is logged at most once every 10 s

	mu      sync.Mutex // guards closing, and wg's count against Wait
	closing bool
	wg      sync.WaitGroup // connections of the reserve being answered
}

func newCapListener(ln *net.TCPListener, active func() int64, log *slog.Logger) (*capListener, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	l := &capListener{
		TCPListener: ln, rc: rc, slots: make(chan struct{}, MaxConns), done: make(chan struct{}),
		active: active, log: log, short: observe.Sometimes{Every: 10 * time.Second},
	}
	if log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if err := l.reserve.open(); err != nil && log != nil {
		log.Warn("admin listener: no descriptor kept in reserve; it may not answer when the process runs out of descriptors",
			"error", err.Error())
	}
	return l, nil
}

// Accept waits for a free slot, then for a connection. When the process
// is out of descriptors, it answers queued connections one at a time from
// the reserve, and never returns that error (net/http would log it at
// every retry).
func (l *capListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	wait := 5 * time.Millisecond
	var timer *time.Timer
	for {
		l.reserve.refill()
		c, err := l.TCPListener.Accept()
		if err == nil {
			return &capConn{Conn: c, slots: l.slots}, nil
		}
		if !evloop.IsShortage(err) {
			<-l.slots
			return nil, err
		}
		// The failed accept does not say whether a connection is queued:
		// the kernel looks for a free descriptor first.
		queued, err := l.waitQueued()
		if err != nil {
			<-l.slots
			return nil, err // the listener was closed
		}
		if !queued {
			continue // try again: descriptors may be free by now
		}
		if fd := l.acceptReserved(); fd >= 0 {
			l.logShortage(true)
			l.mu.Lock()
			if l.closing {
				l.reserve.release(fd)
			} else {
				l.wg.Go(func() { l.serveReserved(fd) })
			}
			l.mu.Unlock()
			wait = 5 * time.Millisecond
			continue
		}
		l.logShortage(false)
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-timer.C:
		case <-l.done:
			<-l.slots
			return nil, net.ErrClosed
		}
		wait = min(2*wait, time.Second)
	}
}

// waitQueued waits a little for a connection to be queued, without
// taking it (which needs a descriptor). A listener's RawConn cannot wait
// for readiness (its Read is not implemented), hence poll(2).
func (l *capListener) waitQueued() (bool, error) {
	select {
	case <-l.done:
		return false, net.ErrClosed
	default:
	}
	queued := false
	err := l.rc.Control(func(lfd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(queuePoll/time.Millisecond))
		queued = err == nil && n > 0
	})
	return queued, err
}

// queuePoll is how long waitQueued waits; closing the listener waits as
// long at most.
const queuePoll = 250 * time.Millisecond

// acceptReserved accepts a queued connection with the reserve. It
// returns -1 when the reserve is in use or the accept failed.
func (l *capListener) acceptReserved() int {
	fd := -1
	_ = l.rc.Control(func(lfd uintptr) { fd = l.reserve.accept(int(lfd)) }) // an error leaves fd -1
	return fd
}

func (l *capListener) logShortage(reserved bool) {
	ok, suppressed := l.short.Allow(time.Now())
	if !ok {
		return
	}
	msg := "admin listener: out of file descriptors; answering from the descriptor kept in reserve"
	if !reserved {
		msg = "admin listener: out of file descriptors and the reserve is in use; new admin connections wait"
	}
	var lim unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) // on failure the limit reads 0
	l.log.Warn(msg, "connections", l.active(), "descriptor_limit", lim.Cur, "suppressed", suppressed,
		"hint", "raise the limit (LimitNOFILE= in systemd, ulimit -n) or lower max_connections")
}

// Close stops accepting, ends a connection of the reserve, and gives the
// reserve back.
func (l *capListener) Close() error {
	l.once.Do(func() { close(l.done) })
	err := l.TCPListener.Close()
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	l.reserve.abort()
	l.wg.Wait()
	l.reserve.close()
	return err
}

// capConn frees its slot when it closes.
type capConn struct {
	net.Conn
	slots chan struct{}
	once  sync.Once
}

func (c *capConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.slots })
	return err
}

// reserve is a descriptor slot kept for the admin listener: spare, a
// descriptor open on /dev/null, is closed just before an accept so that
// the accept can have its number. When that connection is over, dup3
// puts /dev/null (held open as keep) in its place in one step: the
// socket is closed and the slot kept, with no moment at which the proxy,
// retrying its own accepts, could take it. (Closing the socket, then
// opening /dev/null again, would lose that race whenever the proxy is
// short of descriptors, which is exactly when the reserve is used.) That
// is why a connection of the reserve is served on its raw descriptor,
// outside Go's poller, which would close the descriptor itself.
type reserve struct {
	mu    sync.Mutex
	keep  int // /dev/null, the source of every placeholder; -1 if none
	spare int // the slot kept free for an accept; -1 while in use
	inUse int // the connection of the reserve; -1 if none
}

func (r *reserve) open() error {
	r.keep, r.spare, r.inUse = -1, -1, -1
	fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: os.DevNull, Err: err}
	}
	r.keep = fd
	r.refill()
	return nil
}

// refill takes the spare slot again if it was lost (an accept of the
// reserve that failed).
func (r *reserve) refill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keep >= 0 && r.spare < 0 && r.inUse < 0 {
		if fd, err := unix.FcntlInt(uintptr(r.keep), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			r.spare = fd
		}
	}
}

// accept accepts a queued connection of the listener lfd into the spare
// slot, as a blocking descriptor. It returns -1 if the spare is in use,
// or if the accept failed.
func (r *reserve) accept(lfd int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.spare < 0 {
		return -1
	}
	_ = unix.Close(r.spare) // /dev/null: nothing to lose
	r.spare = -1
	fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		return -1 // another thread took the slot first; refill tries again
	}
	r.inUse = fd
	return fd
}

// release ends the connection fd of the reserve, keeping its slot.
func (r *reserve) release(fd int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inUse = -1
	if r.keep >= 0 && unix.Dup3(r.keep, fd, unix.O_CLOEXEC) == nil {
		r.spare = fd
		return
	}
	_ = unix.Close(fd) // no /dev/null any more: the listener is closing
}

// abort makes a connection of the reserve being answered end now.
func (r *reserve) abort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inUse >= 0 {
		_ = unix.Shutdown(r.inUse, unix.SHUT_RDWR)
	}
}

func (r *reserve) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, fd := range []*int{&r.spare, &r.keep} {
		if *fd >= 0 {
			_ = unix.Close(*fd)
			*fd = -1
		}
	}
}

// serveReserved answers one request on fd, a connection of the reserve,
// then closes the connection (releasing fd). It bounds every phase as the
// admin listener's http.Server does.
func (l *capListener) serveReserved(fd int) {
	defer l.reserve.release(fd)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 10})
	conn := rawConn(fd)
	w := &bufferedResponse{header: http.Header{}}
	req, err := http.ReadRequest(bufio.NewReader(io.LimitReader(conn, 16<<10+1<<10)))
	if err != nil {
		writeError(w, http.StatusBadRequest, "malformed request: "+err.Error())
		req = &http.Request{Method: http.MethodGet, ProtoMajor: 1, ProtoMinor: 1}
	} else {
		req.RemoteAddr = peerAddr(fd)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req = req.WithContext(ctx)
		l.handler.ServeHTTP(w, req)
	}
	if w.code == 0 {
		w.code = http.StatusOK
	}
	resp := &http.Response{
		StatusCode: w.code, ProtoMajor: 1, ProtoMinor: 1, Header: w.header, Request: req, Close: true,
		Body: io.NopCloser(&w.body), ContentLength: int64(w.body.Len()),
	}
	_ = resp.Write(conn) // the client went away: nothing to do
	_ = unix.Shutdown(fd, unix.SHUT_WR)
}

// rawConn reads and writes a blocking socket descriptor.
type rawConn int

// A socket with a timeout is not restarted after a signal (signal(7)):
// EINTR is tried again.

func (c rawConn) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(c), b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (c rawConn) Write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		n, err := unix.Write(int(c), b[written:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return written, err
		}
		written += n
	}
	return written, nil
}

func peerAddr(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return ""
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)).String()
	}
	return ""
}

// bufferedResponse keeps a handler's answer in memory, to be written
// whole.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (w *bufferedResponse) Header() http.Header { return w.header }

func (w *bufferedResponse) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *bufferedResponse) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.body.Write(b)
}

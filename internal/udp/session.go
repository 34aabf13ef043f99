//go:build linux

package udp

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/admission"
	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/ilist"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/proxy"
)

// DefaultMaxSessions caps the sessions of a UDP proxy without
// max_connections. Every session holds a socket, and any datagram from a
// new source address or port opens one, so without a cap a flood of
// spoofed sources would take every descriptor pj may open.
const DefaultMaxSessions = 1 << 16

// evictQuiet is how long a session must have been quiet before a new one
// may take its place at the cap. A session that moved a datagram more
// recently is in use, and is never evicted: a flood of new sources can
// take the places of quiet sessions, not those of live ones.
const evictQuiet = time.Second

// maxSpare bounds the closed sessions a loop keeps for reuse.
const maxSpare = 1024

var errPanic = errors.New("panic")

const (
	stateOpen uint8 = iota
	stateClosed
)

// session is one client address and port of one listener: its datagrams
// go to one backend, through a socket connected to it, and the backend's
// replies go back through the listener's socket.
type session struct {
	id    uint64
	gen   uint32
	state uint8
	fd    int // the backend socket; -1 while the session has none

	key     key
	ls      *lsock
	proxy   *proxy.Proxy
	clients *admission.Clients // admitted here: Release at close
	started time.Time

	// name is the client's address as the listening socket reported it,
	// ready for sendmmsg; pkt makes a reply leave from the address the
	// client sent to (wildcard listeners only).
	name    unix.RawSockaddrInet6
	namelen uint32
	pkt     pktinfo

	order   balance.Order
	backend *balance.Backend // the one relayed to, or the last tried
	counted bool             // backend.Active includes this session
	replied bool             // the backend has answered
	err     error            // why the last backend failed

	responses int // replies that end the session; 0: no such end
	queued    int // replies queued for the client, not yet sent
	up, down  counts

	lastActive int64                // loop clock of the last datagram either way
	timer      evloop.Slot          // its idle timer's place in the loop's heap
	lru        ilist.Links[session] // the socket's LRU list
}

func (s *session) Links() *ilist.Links[session] { return &s.lru }

type counts struct{ bytes, dgrams int64 }

// open makes the session of a datagram from a new source, after the
// admission checks; nil means the datagram is dropped (and counted).
func (l *loop) open(ls *lsock, k key, slot int) *session {
	ln := ls.ln
	if ln.draining.Load() {
		l.drop(ln, dropDraining)
		return nil
	}
	p := ln.Proxy()
	client := k.addrPort()
	addr := client.Addr()
	if p.ACL != nil && !p.ACL.Allowed(addr) {
		l.drop(ln, dropDenied)
		return nil
	}
	if !l.reserve(ls, p) {
		l.drop(ln, dropLimit)
		return nil
	}
	var clients *admission.Clients
	if p.Clients != nil {
		switch p.Clients.Admit(addr, l.wall) {
		case admission.RateLimited:
			l.unreserve(p)
			l.drop(ln, dropRateLimited)
			return nil
		case admission.OverLimit:
			l.unreserve(p)
			l.drop(ln, dropLimit)
			return nil
		}
		clients = p.Clients
	}
	s := l.newSession()
	s.id = l.e.ids.Add(1)
	s.key, s.ls, s.proxy, s.clients = k, ls, p, clients
	s.started = l.wall
	s.name = l.rx.names[slot]
	s.namelen = l.rx.hdrs[slot].Hdr.Namelen
	if ls.wildcard {
		ri := parseRx(l.rx.control(slot))
		s.pkt.set(ls.family, &ri)
	}
	s.responses = p.Responses
	s.order = p.Routes[0].Pool().Start(addr) // a UDP proxy has one route
	s.lastActive = l.now
	l.table[k] = s
	ls.lru.PushBack(s)
	if !l.attach(s) {
		return nil
	}
	if idle := p.Routes[0].IdleTimeout; idle > 0 {
		l.timers.Set(&s.timer, s, l.now+int64(idle))
	}
	return s
}

// reserve counts a new session against the caps: the process's, and the
// proxy's (max_connections, else DefaultMaxSessions). At a cap, the
// socket's least recently active session gives its place if it has been
// quiet for evictQuiet.
func (l *loop) reserve(ls *lsock, p *proxy.Proxy) bool {
	limit := int64(p.MaxConnections)
	if limit <= 0 {
		limit = DefaultMaxSessions
	}
	for try := 0; try < 2; try++ {
		// Compare-and-swap, so that the counts never pass a cap, not
		// even for an instant.
		if below(&l.e.active.Int64, l.e.maxSessions.Load()) {
			if below(&p.Stats.Active, limit) {
				return true
			}
			l.e.active.Done()
		}
		if try > 0 || !l.evict(ls) {
			l.evictElsewhere(ls)
			return false
		}
	}
	return false
}

// below adds one to n unless that would pass limit (0: no limit).
func below(n *atomic.Int64, limit int64) bool {
	for {
		v := n.Load()
		if limit > 0 && v >= limit {
			return false
		}
		if n.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

func (l *loop) unreserve(p *proxy.Proxy) {
	p.Stats.Active.Add(-1)
	l.e.active.Done()
}

// evict ends the least recently active session of ls, if it has been
// quiet long enough, to make room for a new one.
func (l *loop) evict(ls *lsock) bool {
	v := ls.lru.Front()
	if v == nil || l.now-v.lastActive < int64(evictQuiet) {
		return false
	}
	l.close(v, observe.StatusLimit, errEvicted)
	return true
}

// evictElsewhere asks the loop of another socket of ls's listener, each
// in turn, to end its least recently active session if it has been quiet
// for evictQuiet. The cap counts the sessions of every loop, and a loop
// whose own sessions are all in use, or that has none, must not keep a
// newcomer out while another holds quiet ones. The datagram that found
// the cap is dropped; the newcomer's next one finds the place. A socket
// has at most one request pending, so a flood at the cap costs each loop
// at most one command per turn.
func (l *loop) evictElsewhere(ls *lsock) {
	socks := ls.ln.socks
	if len(socks) < 2 {
		return
	}
	i := int(ls.ln.evictTurn.Add(1) % uint32(len(socks)))
	if socks[i] == ls {
		i = (i + 1) % len(socks)
	}
	other := socks[i]
	if !other.evictAsked.CompareAndSwap(false, true) {
		return
	}
	if !l.e.loops[i].poll.Post(func(o *loop) {
		other.evictAsked.Store(false)
		if !other.closed {
			o.evict(other)
		}
	}) {
		other.evictAsked.Store(false)
	}
}

func (l *loop) drop(ln *Listener, why dropReason) {
	ln.drops.counts[why].Add(1)
	ln.drops.dirty.Store(true)
}

func (l *loop) newSession() *session {
	var s *session
	if n := len(l.spare); n > 0 {
		s = l.spare[n-1]
		l.spare[n-1] = nil
		l.spare = l.spare[:n-1]
		*s = session{}
	} else {
		s = new(session)
	}
	l.gen++
	if l.gen == 0 { // 0 marks listening sockets and the eventfd
		l.gen = 1
	}
	s.gen, s.fd = l.gen, -1
	return s
}

// attach gives s the next backend of its order: a socket connected to it,
// watched for replies. When none is left, s ends and attach reports false.
func (l *loop) attach(s *session) bool {
	for {
		b := s.order.Next()
		if b == nil {
			l.exhausted(s)
			return false
		}
		s.backend = b
		if b.Err != nil {
			s.err = b.Err
			continue
		}
		fd, err := newBackendSocket(b.Addr, &l.rsa, true)
		if err != nil {
			s.err = fmt.Errorf("connect to %s: %w", b.Address, err)
			if !evloop.IsShortage(err) {
				l.observe(s, false, s.err)
			}
			continue
		}
		l.ev = unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: int32(s.gen)}
		if err := unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_ADD, fd, &l.ev); err != nil {
			closeFD(fd)
			s.err = fmt.Errorf("connect to %s: %w", b.Address, os.NewSyscallError("epoll_ctl", err))
			continue
		}
		s.fd = fd
		l.setFD(fd, s)
		b.Active.Add(1)
		b.Total.Add(1)
		s.counted = true
		return true
	}
}

// exhausted ends a session that has no backend left to try. A new session
// that found none eligible at all is not logged: it never was (a flood of
// new sources while every backend is down must not flood the log); its
// datagram is counted as dropped.
func (l *loop) exhausted(s *session) {
	if s.backend == nil && s.up.dgrams == 0 {
		l.drop(s.ls.ln, dropNoBackend)
		l.close(s, "", nil)
		return
	}
	err := s.err
	if err == nil {
		err = balance.ErrNoBackend
	}
	l.close(s, observe.StatusConnectFailed, fmt.Errorf("%w: %w", errNoBackendLeft, err))
}

// failover drops s's backend after it failed (an ICMP port unreachable
// comes back as ECONNREFUSED): the failure counts towards the backend's
// fall, and the session's next datagram goes to the next backend.
func (l *loop) failover(s *session, err error) bool {
	b := s.backend
	s.err = fmt.Errorf("%s: %w", b.Address, err)
	l.observe(s, false, s.err)
	l.detach(s)
	return true
}

// detach closes s's backend socket.
func (l *loop) detach(s *session) {
	if s.fd >= 0 {
		if s.fd < len(l.byFD) {
			l.byFD[s.fd] = nil
		}
		closeFD(s.fd) // closing removes it from the epoll set
		s.fd = -1
	}
	if s.counted {
		s.backend.Active.Add(-1)
		s.counted = false
	}
}

// observe records a passive health observation of s's backend.
func (l *loop) observe(s *session, ok bool, err error) {
	r := s.proxy.Routes[0]
	if tr, changed := s.backend.Observe(balance.Result{OK: ok, Err: err, Passive: true}, r.HealthCheck.Rise, r.HealthCheck.Fall); changed {
		balance.LogTransition(l.e.log, s.proxy.Name, s.backend, tr)
	}
}

func (l *loop) setFD(fd int, s *session) {
	if fd >= len(l.byFD) {
		grown := make([]*session, max(2*len(l.byFD), fd+1, 1024))
		copy(grown, l.byFD)
		l.byFD = grown
	}
	l.byFD[fd] = s
}

func (l *loop) touch(s *session) {
	s.lastActive = l.now
	s.ls.lru.MoveToBack(s)
}

// close ends s: its socket, its places in the tables, its counts, and
// (status not empty) its log line.
func (l *loop) close(s *session, status observe.Status, err error) {
	if s.state == stateClosed {
		return
	}
	s.state = stateClosed
	delete(l.table, s.key)
	s.ls.lru.Remove(s)
	l.timers.Stop(&s.timer)
	l.detach(s)
	if s.clients != nil {
		s.clients.Release(s.key.addrPort().Addr())
	}
	st := s.proxy.Stats
	if status != "" {
		st.Conns[observe.StatusIndex(status)].Add(1)
		st.Duration.Observe(l.wall.Sub(s.started))
		l.logSession(s, status, err)
	}
	st.Active.Add(-1)
	l.e.active.Done()
	if ls := s.ls; ls.ln.draining.Load() && ls.lru.Empty() {
		l.closeSocket(ls)
	}
	if l.cur == s {
		l.cur = nil
	}
	if len(l.spare) < maxSpare {
		s.proxy, s.clients, s.backend, s.ls, s.err = nil, nil, nil, nil, nil
		l.spare = append(l.spare, s)
	}
}

func (l *loop) logSession(s *session, status observe.Status, err error) {
	rec := observe.Conn{
		ID:            s.id,
		Proxy:         s.proxy.Name,
		ClientAddr:    s.key.addrPort(),
		Listener:      s.ls.ln.addr,
		Accepted:      s.started,
		Duration:      l.wall.Sub(s.started),
		Up:            s.up.bytes,
		Down:          s.down.bytes,
		Status:        status,
		Err:           err,
		ClosedBy:      "pj",
		Datagrams:     true,
		DatagramsUp:   s.up.dgrams,
		DatagramsDown: s.down.dgrams,
	}
	if s.backend != nil && (s.replied || s.fd >= 0 || status == observe.StatusConnectFailed) {
		rec.Backend = s.backend.Address
	}
	switch status {
	case observe.StatusOK:
		rec.ClosedBy = "backend" // its N-th reply ended the session
	case observe.StatusConnectFailed:
		rec.ClosedBy = "backend"
	case observe.StatusTimeout, observe.StatusShutdown:
		rec.Err = nil
	}
	l.e.logSession(&rec)
}

// runTimers ends the sessions whose idle timeout has passed; a session
// that moved a datagram since its timer was set is set again.
func (l *loop) runTimers() {
	for {
		s, at, ok := l.timers.First()
		if !ok || at > l.now {
			return
		}
		idle := int64(s.proxy.Routes[0].IdleTimeout)
		if due := s.lastActive + idle; due > l.now {
			l.timers.Set(&s.timer, s, due)
			continue
		}
		l.cur = s
		if s.fd < 0 && s.err != nil {
			// Its backend refused and no datagram came since to try the
			// next: the session never got through.
			l.close(s, observe.StatusConnectFailed, s.err)
		} else {
			l.close(s, observe.StatusTimeout, ErrIdleTimeout)
		}
		l.cur = nil
	}
}

// isRefused reports whether err is a backend's ICMP answer: port (or host,
// or network) unreachable.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH)
}

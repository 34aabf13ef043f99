//go:build linux

package udp

import (
	"fmt"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/ilist"
	"github.com/pj-proxy/pj/internal/observe"
)

const (
	maxEvents = 256
	// rxBatch is how many datagrams one recvmmsg takes from a listening
	// socket.
	rxBatch = 32
	// txBatch is how many replies wait for one sendmmsg to their clients.
	txBatch = 64
	// perSession bounds the replies read from one backend socket per
	// event, so that a chatty backend cannot starve the others (the
	// socket is level-triggered: what is left is reported again).
	perSession = 16
)

// lsock is one socket of a listener, owned by one loop, with the sessions
// it carries.
type lsock struct {
	ln       *Listener
	fd       int
	family   int
	wildcard bool
	closed   bool
	// lru lists the socket's sessions, the least recently active first.
	lru       ilist.List[session, *session]
	errLogged int64 // loop clock of the last read error logged
	// evictAsked: another loop has asked this socket's loop to evict a
	// quiet session (see evictElsewhere), and it has not done it yet.
	evictAsked atomic.Bool
}

// loop is one event loop: an epoll instance, the listener sockets and the
// sessions it owns, their timers and its batches. Everything in it is
// touched only by its own goroutine, except the command queue.
type loop struct {
	e    *Engine
	id   int
	poll evloop.Poller[*loop]

	socks  map[int]*lsock
	table  map[key]*session
	byFD   []*session // sessions by backend descriptor
	timers evloop.Timers[*session]
	spare  []*session // closed sessions kept for reuse
	gen    uint32

	rx     *msgs          // datagrams from clients
	rxSeg  [rxBatch]int32 // UDP GRO: the datagram size of a coalesced slot; else 0
	up     *msgs          // headers for the sends to backends (over rx's slots)
	tx     *msgs          // replies from backends, waiting to be sent to clients
	txN    int            // messages queued in tx.hdrs
	txData int            // data slots of tx.buf in use (a GSO message takes several)
	txs    []txEntry
	back   *msgs // headers for the reads from backends (over tx's slots)
	rsa    unix.RawSockaddrAny
	ev     unix.EpollEvent

	cur   *session // the session being handled, for recover
	wall  time.Time
	now   int64
	noGSO bool // a GSO send failed: send datagram by datagram
	// coalesced counts reads that UDP GRO coalesced, merged the replies
	// sent as one GSO message (for tests).
	coalesced, merged int
}

// txEntry is the session a queued reply belongs to, to count it once sent.
type txEntry struct {
	s     *session
	gen   uint32
	ls    *lsock
	stats *observe.ProxyStats
	n     int // datagrams in the message (more than one with GSO)
	seg   int // their size when more than one; else 0
	bytes int
	// slot and iovs are the data slots of the message; pkt the length of
	// its packet-info message (which comes first in its control data).
	slot, iovs, pkt int
}

func newLoop(e *Engine, id int) (*loop, error) {
	l := &loop{
		e: e, id: id,
		socks: map[int]*lsock{},
		table: map[key]*session{},
		rx:    newMsgs(rxBatch),
		tx:    newMsgs(txBatch),
		txs:   make([]txEntry, txBatch),
	}
	l.up = &msgs{hdrs: make([]unix.Mmsghdr, rxBatch), iovs: make([]unix.Iovec, rxBatch), ctrl: make([]byte, rxBatch*ctrlSize)}
	l.back = &msgs{hdrs: make([]unix.Mmsghdr, perSession), iovs: make([]unix.Iovec, perSession), ctrl: make([]byte, perSession*ctrlSize)}
	if err := l.poll.Open(fmt.Sprintf("udp event loop %d", id), maxEvents); err != nil {
		return nil, err
	}
	l.tick()
	return l, nil
}

func (l *loop) run() {
	defer l.poll.Close()
	for {
		events, err := l.poll.Wait(l.waitMillis())
		l.tick()
		if err != nil && err != unix.EINTR {
			l.e.log.Error("udp event loop failed; its sessions are lost", "loop", l.id, "error", err.Error())
			return
		}
		for i := range events {
			l.dispatch(&events[i])
		}
		l.flush()
		l.runTimers()
		l.poll.Yield(l.now)
		if l.poll.Stopping() && len(l.table) == 0 {
			return
		}
	}
}

func (l *loop) tick() {
	t := time.Now()
	l.wall = t
	l.now = int64(t.Sub(l.e.start))
}

func (l *loop) waitMillis() int {
	_, at, ok := l.timers.First()
	if !ok {
		return -1
	}
	return evloop.WaitMillis(at, l.e.now())
}

func (l *loop) dispatch(ev *unix.EpollEvent) {
	defer l.recover()
	fd, gen := int(ev.Fd), uint32(ev.Pad)
	if gen == 0 {
		if l.poll.IsWake(fd) {
			l.poll.RunCommands(l)
		} else if ls := l.socks[fd]; ls != nil {
			l.readClients(ls)
		}
		return
	}
	if fd >= len(l.byFD) {
		return
	}
	s := l.byFD[fd]
	if s == nil || s.gen != gen {
		return // a session closed earlier in this batch
	}
	l.readBackend(s, ev.Events)
}

// recover turns a panic into the end of the session being handled, if
// any: pj goes on.
func (l *loop) recover() {
	v := recover()
	if v == nil {
		return
	}
	l.e.panics.Add(1)
	s := l.cur
	l.cur = nil
	id := uint64(0)
	if s != nil {
		id = s.id
	}
	l.e.log.Error("panic while relaying datagrams; pj goes on", "session", id, "error", fmt.Sprint(v), "stack", string(debug.Stack()))
	if s != nil && s.state != stateClosed {
		l.close(s, StatusOf(errPanic), fmt.Errorf("%w: %v", errPanic, v))
	}
	l.txN, l.txData = 0, 0 // the queued replies may be half built
}

// --- listener sockets ---

func (l *loop) addSocket(ls *lsock) error {
	l.ev = unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ls.fd)}
	if err := unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_ADD, ls.fd, &l.ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	l.socks[ls.fd] = ls
	return nil
}

// drained closes the loop's socket of a draining listener once it carries
// no session.
func (l *loop) drained(ln *Listener) {
	for _, ls := range l.socks {
		if ls.ln == ln && ls.lru.Empty() {
			l.closeSocket(ls)
		}
	}
}

func (l *loop) closeSocket(ls *lsock) {
	if ls.closed {
		return
	}
	ls.closed = true
	l.flush() // replies queued for it go first
	delete(l.socks, ls.fd)
	_ = unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_DEL, ls.fd, nil) // closing removes it anyway
	closeFD(ls.fd)
}

// --- the data path ---

// readClients takes one batch of datagrams from a listening socket and
// sends each on to its session's backend.
func (l *loop) readClients(ls *lsock) {
	rx := l.rx
	rx.armRecv(0, rxBatch, true, true)
	n, err := recvmmsg(ls.fd, rx.hdrs)
	if err != nil {
		// EAGAIN: a wake-up with nothing left to read. Anything else (ENOMEM) passes with the condition; said at most
		// once every few seconds.
		if err != unix.EAGAIN && l.now-ls.errLogged > int64(dropLogEvery) {
			ls.errLogged = l.now
			l.e.log.Warn("udp: cannot read datagrams; retrying", "address", ls.ln.addr, "error", err.Error())
		}
		return
	}
	for i := range n {
		l.rxSeg[i] = 0
		if rx.hdrs[i].Hdr.Controllen > 0 {
			l.rxSeg[i] = int32(parseRx(rx.control(i)).segment)
		}
	}
	var run *session
	from := 0
	for i := range n {
		k, ok := keyOf(ls.ln.id, &rx.names[i])
		if !ok {
			continue
		}
		s := l.table[k]
		if s == nil {
			if s = l.open(ls, k, i); s == nil {
				continue
			}
		}
		// Active from now: the session cannot be evicted for a new one
		// while its datagrams wait in this batch.
		l.touch(s)
		if s != run {
			if run != nil {
				l.sendUp(run, from, i)
			}
			run, from = s, i
		}
	}
	if run != nil {
		l.sendUp(run, from, n)
	}
	if ls.ln.drops.dirty.Load() {
		ls.ln.drops.report(l.e.log, ls.ln, l.wall)
	}
}

// dgramsIn is the number of datagrams in rx slot i: one, or with UDP GRO
// as many as were coalesced.
func (l *loop) dgramsIn(i int) int64 {
	size, seg := int(l.rx.hdrs[i].Len), int(l.rxSeg[i])
	if seg > 0 && size > seg {
		return int64((size + seg - 1) / seg)
	}
	return 1
}

// sendUp sends the datagrams of rx slots [from, to), all from s's client,
// to s's backend. Datagrams of other clients in between make separate
// runs, so order is kept per client.
func (l *loop) sendUp(s *session, from, to int) {
	l.cur = s
	defer func() { l.cur = nil }()
	if s.fd < 0 && !l.attach(s) {
		return
	}
	var bytes, dgrams int64
	for i := from; i < to; i++ {
		bytes += int64(l.rx.hdrs[i].Len)
		dgrams += l.dgramsIn(i)
	}
	for try := 0; ; try++ {
		err := l.sendRun(s, from, to)
		if err == nil {
			break
		}
		if isRefused(err) && try == 0 {
			// The backend answered an earlier datagram with ICMP port
			// unreachable, and the kernel reports it on this send: fail
			// over, and send these to the next backend.
			l.failover(s, err)
			if !l.attach(s) {
				return
			}
			continue
		}
		s.ls.ln.drops.counts[dropSendFailed].Add(uint64(dgrams))
		s.ls.ln.drops.dirty.Store(true)
		return
	}
	s.up.bytes += bytes
	s.up.dgrams += dgrams
	st := s.proxy.Stats
	st.BytesUp.Add(uint64(bytes))
	st.DatagramsUp.Add(uint64(dgrams))
}

// sendRun hands rx slots [from, to) to s's backend socket: one send for a
// lone datagram, one GSO send for datagrams of one size, else sendmmsg.
func (l *loop) sendRun(s *session, from, to int) error {
	rx, up := l.rx, l.up
	if to-from == 1 && l.rxSeg[from] == 0 {
		return send(s.fd, rx.data(from))
	}
	if !l.noGSO {
		if seg := l.gsoRun(from, to); seg > 0 {
			return l.sendGSO(s, from, to, seg)
		}
	}
	m := 0
	for i := from; i < to; i++ {
		h := &up.hdrs[m].Hdr
		*h = unix.Msghdr{}
		up.iovs[m] = unix.Iovec{Base: &rx.buf[i*slotSize]}
		up.iovs[m].SetLen(int(rx.hdrs[i].Len))
		h.Iov = &up.iovs[m]
		h.SetIovlen(1)
		if seg := int(l.rxSeg[i]); seg > 0 && int(rx.hdrs[i].Len) > seg {
			// Coalesced by GRO: passed on as coalesced, the kernel
			// splits it again at the same boundaries.
			c := up.ctrl[m*ctrlSize : (m+1)*ctrlSize]
			h.Control = &c[0]
			h.SetControllen(putSegment(c, seg))
		}
		m++
	}
	for sent := 0; sent < m; {
		k, err := sendmmsg(s.fd, up.hdrs[sent:m])
		if err != nil {
			if sent == 0 {
				return err
			}
			s.ls.ln.drops.counts[dropSendFailed].Add(uint64(m - sent))
			s.ls.ln.drops.dirty.Store(true)
			return nil
		}
		sent += k
	}
	return nil
}

// gsoRun returns the datagram size if rx slots [from, to) can go as one
// GSO send: each slot one datagram, all of one size but the last, which
// may be shorter; else 0. One send then carries them all through the
// stack, and the kernel splits them at their boundaries: the backend gets
// them one by one, as sent.
func (l *loop) gsoRun(from, to int) int {
	rx := l.rx
	if n := to - from; n < 2 || n > maxSegments {
		return 0
	}
	size := int(rx.hdrs[from].Len)
	total := 0
	for i := from; i < to; i++ {
		n := int(rx.hdrs[i].Len)
		if l.rxSeg[i] > 0 || n == 0 || n > size || (n < size && i != to-1) {
			return 0
		}
		total += n
	}
	if total > maxGSOBytes {
		return 0
	}
	return size
}

// sendGSO sends rx slots [from, to) as one message of datagrams of seg
// bytes.
func (l *loop) sendGSO(s *session, from, to, seg int) error {
	rx, up := l.rx, l.up
	h := &up.hdrs[0].Hdr
	*h = unix.Msghdr{}
	for i := from; i < to; i++ {
		j := i - from
		up.iovs[j] = unix.Iovec{Base: &rx.buf[i*slotSize]}
		up.iovs[j].SetLen(int(rx.hdrs[i].Len))
	}
	h.Iov = &up.iovs[0]
	h.SetIovlen(to - from)
	c := up.ctrl[:ctrlSize]
	h.Control = &c[0]
	h.SetControllen(putSegment(c, seg))
	_, err := sendmmsg(s.fd, up.hdrs[:1])
	if err == unix.EIO || err == unix.EINVAL {
		// The route's device cannot take GSO: datagram by datagram
		// from now on.
		l.noGSO = true
		return l.sendRun(s, from, to)
	}
	return err
}

// readBackend reads the replies a backend sent to session s and queues
// them for its client.
func (l *loop) readBackend(s *session, events uint32) {
	l.cur = s
	defer func() { l.cur = nil }()
	if l.txN+perSession > txBatch || l.txData+perSession > txBatch {
		l.flush()
		if s.state == stateClosed {
			return
		}
	}
	k := perSession
	if s.responses > 0 {
		k = min(k, s.responses-s.queued-int(s.down.dgrams))
	}
	if k <= 0 {
		return // its N-th reply is on its way: the session ends once it is sent
	}
	first := l.txData
	l.postReplySlots(first, k)
	n, err := recvmmsg(s.fd, l.back.hdrs[:k])
	if err != nil {
		l.backendFailed(s, events, err)
		return
	}
	if !s.replied {
		s.replied = true
		l.observe(s, true, nil)
	}
	segs := l.replySegments(first, n)
	l.txData += n
	if s.responses == 0 && !l.noGSO {
		if seg := l.gsoReplies(first, n, segs[:n]); seg > 0 {
			l.merged++
			l.queueReply(s, first, n, n, seg)
			l.touch(s)
			return
		}
	}
	l.queueReplies(s, first, segs[:n])
	l.touch(s)
}

// postReplySlots points the backend read's k headers at tx slots
// [first, first+k), where the replies are read in place.
func (l *loop) postReplySlots(first, k int) {
	tx, back := l.tx, l.back
	for j := range k {
		h := &back.hdrs[j].Hdr
		back.iovs[j] = unix.Iovec{Base: &tx.buf[(first+j)*slotSize]}
		back.iovs[j].SetLen(slotSize)
		h.Iov = &back.iovs[j]
		h.SetIovlen(1)
		h.Control = &back.ctrl[j*ctrlSize]
		h.SetControllen(ctrlSize)
		h.Flags = 0
	}
}

// backendFailed handles a failed read from s's backend socket: a pending
// socket error or a refusal (an ICMP port unreachable) moves s to another
// backend; nothing to read is no failure.
func (l *loop) backendFailed(s *session, events uint32, err error) {
	switch {
	case err == unix.EAGAIN:
		if events&unix.EPOLLERR != 0 {
			if serr := evloop.SocketError(s.fd); serr != nil {
				l.failover(s, serr)
			}
		}
	case isRefused(err):
		l.failover(s, err)
	default:
		l.failover(s, os.NewSyscallError("recvmmsg", err))
	}
}

// replySegments readies the n replies just read into tx slots [first,
// first+n) to be sent, and returns what each slot holds: 0 for one
// datagram, or with UDP GRO the size of the several segments it holds.
func (l *loop) replySegments(first, n int) [perSession]int {
	tx, back := l.tx, l.back
	var segs [perSession]int
	for j := range n {
		tx.iovs[first+j] = unix.Iovec{Base: &tx.buf[(first+j)*slotSize]}
		tx.iovs[first+j].SetLen(int(back.hdrs[j].Len))
		if back.hdrs[j].Hdr.Controllen > 0 {
			ctrl := back.ctrl[j*ctrlSize : j*ctrlSize+int(back.hdrs[j].Hdr.Controllen)]
			if seg := parseRx(ctrl).segment; seg > 0 && int(back.hdrs[j].Len) > seg {
				segs[j] = seg
				l.coalesced++
			}
		}
	}
	return segs
}

// queueReplies queues the replies in tx slots [first, first+len(segs))
// for s's client one slot at a time, relaying no reply past a session's
// N-th.
func (l *loop) queueReplies(s *session, first int, segs []int) {
	tx := l.tx
	for j, seg := range segs {
		dgrams := 1
		size := int(tx.iovs[first+j].Len)
		if seg > 0 {
			dgrams = (size + seg - 1) / seg
		}
		if s.responses > 0 {
			// Replies past the N-th are not relayed: the session is over.
			left := s.responses - s.queued - int(s.down.dgrams)
			if left <= 0 {
				break
			}
			if dgrams > left {
				tx.iovs[first+j].SetLen(left * seg)
				dgrams = left
			}
			if dgrams == 1 {
				seg = 0
			}
		}
		l.queueReply(s, first+j, 1, dgrams, seg)
	}
}

// gsoReplies returns the datagram size if the n replies in slots [first,
// first+n) can go to the client as one GSO send (each one datagram, of
// one size but the last); else 0.
func (l *loop) gsoReplies(first, n int, segs []int) int {
	if n < 2 {
		return 0
	}
	size := int(l.tx.iovs[first].Len)
	total := 0
	for j := range n {
		m := int(l.tx.iovs[first+j].Len)
		if segs[j] > 0 || m == 0 || m > size || (m < size && j != n-1) {
			return 0
		}
		total += m
	}
	if total > maxGSOBytes {
		return 0
	}
	return size
}

// queueReply queues a message to s's client of the data in tx slots
// [slot, slot+iovs): one datagram, or dgrams of seg bytes sent with GSO
// (from several slots, or from one that GRO coalesced).
func (l *loop) queueReply(s *session, slot, iovs, dgrams, seg int) {
	tx, i := l.tx, l.txN
	h := &tx.hdrs[i].Hdr
	*h = unix.Msghdr{}
	h.Iov = &tx.iovs[slot]
	h.SetIovlen(iovs)
	tx.names[i] = s.name
	h.Name = (*byte)(unsafe.Pointer(&tx.names[i]))
	h.Namelen = s.namelen
	c := tx.ctrl[i*ctrlSize : (i+1)*ctrlSize]
	cn := copy(c, s.pkt.b[:s.pkt.n])
	if dgrams > 1 {
		cn += putSegment(c[cn:], seg)
	} else {
		seg = 0
	}
	if cn > 0 {
		h.Control = &c[0]
	}
	h.SetControllen(cn)
	bytes := 0
	for j := slot; j < slot+iovs; j++ {
		bytes += int(tx.iovs[j].Len)
	}
	l.txs[i] = txEntry{s: s, gen: s.gen, ls: s.ls, stats: s.proxy.Stats, n: dgrams, seg: seg, bytes: bytes,
		slot: slot, iovs: iovs, pkt: int(s.pkt.n)}
	s.queued += dgrams
	l.txN++
}

// flush sends the queued replies to their clients: one sendmmsg per run
// of replies through the same listening socket. A session whose N-th
// reply went ends here.
func (l *loop) flush() {
	if l.txN == 0 {
		return
	}
	n := l.txN
	l.txN, l.txData = 0, 0
	for from := 0; from < n; {
		ls := l.txs[from].ls
		to := from + 1
		for to < n && l.txs[to].ls == ls {
			to++
		}
		l.sendDown(ls, from, to)
		from = to
	}
	for i := range n {
		e := &l.txs[i]
		if s := e.s; s.gen == e.gen && s.state != stateClosed {
			s.queued -= e.n
			if s.responses > 0 && s.queued == 0 && int(s.down.dgrams) >= s.responses {
				l.close(s, observe.StatusOK, nil)
			}
		}
		*e = txEntry{}
	}
}

// sendDown sends the queued messages [from, to), all through ls, and
// counts what went.
func (l *loop) sendDown(ls *lsock, from, to int) {
	tx := l.tx
	for i := from; i < to; {
		k, err := sendmmsg(ls.fd, tx.hdrs[i:to])
		if err == nil {
			for j := i; j < i+k; j++ {
				l.sentDown(j)
			}
			i += k
			continue
		}
		if (err == unix.EIO || err == unix.EINVAL) && l.txs[i].seg > 0 {
			l.splitGSO(ls, i)
			i++
			continue
		}
		// This reply cannot go (EAGAIN: the socket's buffer is full;
		// EPERM: a firewall; ...): it is dropped, as a router drops, and
		// the next is tried; a full buffer drops the rest of the run.
		drop := 1
		if err == unix.EAGAIN || err == unix.ENOBUFS {
			drop = to - i
		}
		for j := i; j < i+drop; j++ {
			ls.ln.drops.counts[dropSendFailed].Add(uint64(l.txs[j].n))
		}
		ls.ln.drops.dirty.Store(true)
		i += drop
	}
}

// sentDown counts queued message i as delivered to its session's client.
func (l *loop) sentDown(i int) {
	e := &l.txs[i]
	if s := e.s; s.gen == e.gen && s.state != stateClosed {
		s.down.bytes += int64(e.bytes)
		s.down.dgrams += int64(e.n)
	}
	e.stats.BytesDown.Add(uint64(e.bytes))
	e.stats.DatagramsDown.Add(uint64(e.n))
}

// splitGSO sends queued message i datagram by datagram, after its GSO
// send failed (the route's device cannot take GSO): from then on, the
// loop sends no more GSO.
func (l *loop) splitGSO(ls *lsock, i int) {
	l.noGSO = true
	tx, e := l.tx, &l.txs[i]
	h := &tx.hdrs[i].Hdr
	var one [1]unix.Mmsghdr
	var iov unix.Iovec
	sendOne := func(b []byte) {
		iov = unix.Iovec{Base: &b[0]}
		iov.SetLen(len(b))
		one[0] = unix.Mmsghdr{Hdr: unix.Msghdr{Name: h.Name, Namelen: h.Namelen, Iov: &iov}}
		one[0].Hdr.SetIovlen(1)
		if e.pkt > 0 { // the packet-info message comes first
			one[0].Hdr.Control = h.Control
			one[0].Hdr.SetControllen(e.pkt)
		}
		if _, err := sendmmsg(ls.fd, one[:]); err != nil {
			ls.ln.drops.counts[dropSendFailed].Add(1)
			ls.ln.drops.dirty.Store(true)
		}
	}
	for j := e.slot; j < e.slot+e.iovs; j++ {
		data := tx.buf[j*slotSize : j*slotSize+int(tx.iovs[j].Len)]
		if e.iovs > 1 {
			sendOne(data) // a slot per datagram
			continue
		}
		for off := 0; off < len(data); off += e.seg {
			sendOne(data[off:min(off+e.seg, len(data))])
		}
	}
	l.sentDown(i)
}

// --- commands from other goroutines ---

// cut ends the loop's sessions of ln (every session if ln is nil).
func (l *loop) cut(ln *Listener, cause error) {
	for _, s := range l.table {
		if ln == nil || s.ls.ln == ln {
			l.close(s, StatusOf(cause), cause)
		}
	}
}

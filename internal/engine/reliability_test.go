//go:build linux

package engine

import (
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/testutil"
)

// timers counts the entries of every loop's timer heap.
func (e *Engine) timerCount() int {
	n := 0
	for _, l := range e.loops {
		_ = l.poll.Call(l, func(l *loop) error { n += l.timers.Len(); return nil })
	}
	return n
}

func TestClosedConnectionsReleaseTheirTimers(t *testing.T) {
	// With an hour's idle timeout, connections that open and close must
	// not leave their timers (and so themselves) behind until the hour
	// is over: that is memory growing with every connection ever made.
	const conns = 200
	h := newHarness(t, harnessOpt{idle: time.Hour}, testutil.StartEcho(t))
	for range conns {
		c := testutil.Dial(t, h.addr)
		if got := testutil.RoundTrip(t, c, "x"); got != "x" {
			t.Fatalf("echo %q", got)
		}
		_ = c.Close()
	}
	h.log.WaitLines(t, "] duration=", conns)
	testutil.WaitFor(t, 5*time.Second, "every connection to be closed", func() bool { return h.e.Active() == 0 })
	if n := h.e.timerCount(); n != 0 {
		t.Fatalf("%d timers are left after %d connections closed; want 0", n, conns)
	}
}

func TestEngineLeavesGOMAXPROCSAlone(t *testing.T) {
	// Setting GOMAXPROCS turns off Go's own updates of it (container CPU
	// limits); the engine sizes itself from it instead.
	before := runtime.GOMAXPROCS(0)
	e, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if after := runtime.GOMAXPROCS(0); after != before {
		runtime.GOMAXPROCS(before)
		t.Fatalf("GOMAXPROCS went from %d to %d", before, after)
	}
	if len(e.loops) != before {
		t.Fatalf("%d loops for GOMAXPROCS %d; want one per processor", len(e.loops), before)
	}
}

func TestNewFailsCleanlyWhenALaterLoopCannotBeCreated(t *testing.T) {
	errBoom := errors.New("injected: no epoll instance")
	done := make(chan error, 1)
	go func() {
		_, err := New(Options{Loops: 3, newLoop: func(i int) error {
			if i == 2 {
				return errBoom
			}
			return nil
		}})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errBoom) {
			t.Fatalf("New: %v; want the loop's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("New has not returned within 10s: start-up deadlocked")
	}
}

// listenerView is what one loop does with a listener.
type listenerView struct {
	known, registered, capped, paused bool
}

func (l *loop) viewListener(ln *Listener) listenerView {
	var v listenerView
	_ = l.poll.Call(l, func(l *loop) error {
		st := l.listeners[ln.fd]
		v.known = st != nil && st.ln == ln
		v.capped = v.known && st.mode == lnCapped
		v.paused = v.known && st.mode == lnPaused
		// EPOLL_CTL_MOD fails with ENOENT on a descriptor not in the set
		// (and with EINVAL on one registered with EPOLLEXCLUSIVE).
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ln.fd)}
		err := unix.EpollCtl(l.poll.FD(), unix.EPOLL_CTL_MOD, ln.fd, &ev)
		v.registered = err != unix.ENOENT
		return nil
	})
	return v
}

func TestCappedListenerIsNotWatchedWhenAPauseEnds(t *testing.T) {
	// A listener at its cap is out of the epoll set: it is level-triggered
	// and readable while clients wait, so a loop watching it would spin.
	// A descriptor shortage that pauses it meanwhile must not put it
	// back when the pause ends while the cap still holds.
	h := newHarness(t, harnessOpt{cap: 1}, testutil.StartEcho(t))
	first := testutil.Dial(t, h.addr)
	if got := testutil.RoundTrip(t, first, "1"); got != "1" {
		t.Fatal(got)
	}
	second := testutil.Dial(t, h.addr) // waits in the accept queue
	var capped *loop
	testutil.WaitFor(t, 5*time.Second, "a loop to stop watching the capped listener", func() bool {
		for _, l := range h.e.loops {
			if l.viewListener(h.ln).capped {
				capped = l
				return true
			}
		}
		return false
	})
	_ = capped.poll.Call(capped, func(l *loop) error { l.pauseListeners(unix.EMFILE); return nil })
	testutil.WaitFor(t, 5*time.Second, "the pause to end", func() bool { return !capped.viewListener(h.ln).paused })
	if v := capped.viewListener(h.ln); v.registered || !v.capped {
		t.Fatalf("after the pause, with the cap still reached: %+v; want capped and out of the epoll set", v)
	}
	// The cap lifts: the waiting client is served.
	_ = first.Close()
	if got := testutil.RoundTrip(t, second, "2"); got != "2" {
		t.Fatal(got)
	}
}

func TestRemovedListenerLeavesNoStateBehind(t *testing.T) {
	// A listener removed while capped and paused must be forgotten by
	// every loop: its descriptor number will be reused.
	h := newHarness(t, harnessOpt{cap: 1}, testutil.StartEcho(t))
	first := testutil.Dial(t, h.addr)
	if got := testutil.RoundTrip(t, first, "1"); got != "1" {
		t.Fatal(got)
	}
	testutil.Dial(t, h.addr) // waits in the accept queue
	testutil.WaitFor(t, 5*time.Second, "a loop to stop watching the capped listener", func() bool {
		for _, l := range h.e.loops {
			if l.viewListener(h.ln).capped {
				return true
			}
		}
		return false
	})
	for _, l := range h.e.loops {
		_ = l.poll.Call(l, func(l *loop) error { l.pauseListeners(unix.EMFILE); return nil })
	}
	h.e.CloseListener(h.ln)
	for _, l := range h.e.loops {
		if v := l.viewListener(h.ln); v.known {
			t.Fatalf("loop %d still has the removed listener: %+v", l.id, v)
		}
	}
}

func TestPanicOnEveryPathCostsOneConnection(t *testing.T) {
	// A panic wherever the loop handles a connection (its timers, a
	// failover, a throttled direction, work left for a later turn) closes
	// that connection, logs the stack, and pj goes on.
	for _, tc := range []struct {
		point string
		opt   harnessOpt
		// backends of the connection that panics; the next one uses echo
		backends func(t *testing.T) []string
		// drive makes the connection reach the point
		drive func(t *testing.T, c *net.TCPConn)
	}{
		{point: "idle", opt: harnessOpt{idle: 50 * time.Millisecond},
			drive: func(t *testing.T, c *net.TCPConn) { testutil.RoundTrip(t, c, "x") }},
		{point: "connect_timeout", opt: harnessOpt{connect: 100 * time.Millisecond},
			backends: func(t *testing.T) []string { return []string{testutil.SilentAddr(t)} }},
		{point: "failover",
			backends: func(t *testing.T) []string { return []string{testutil.ClosedAddr(t)} }},
		{point: "throttle", opt: harnessOpt{bw: 16 << 10},
			drive: func(t *testing.T, c *net.TCPConn) {
				go func() { _, _ = c.Write(make([]byte, 256<<10)) }() // more than a burst
			}},
		{point: "pending", opt: harnessOpt{perTurn: 1},
			drive: func(t *testing.T, c *net.TCPConn) {
				go func() { _, _ = c.Write(make([]byte, 256<<10)) }()
			}},
	} {
		t.Run(tc.point, func(t *testing.T) {
			var fired atomic.Int32
			tc.opt.fault = func(point string) {
				if point == tc.point && fired.Add(1) == 1 {
					panic("injected fault at " + point)
				}
			}
			echo := testutil.StartEcho(t)
			backends := []string{echo}
			if tc.backends != nil {
				backends = append(tc.backends(t), echo)
			}
			h := newHarness(t, tc.opt, backends...)
			c := testutil.Dial(t, h.addr)
			if tc.drive != nil {
				tc.drive(t, c)
			}
			h.log.WaitLines(t, "injected fault at "+tc.point, 1)
			h.wantLine(t, "[error]", "panic: injected fault")
			if n := h.e.Panics(); n != 1 {
				t.Fatalf("%d panics counted", n)
			}
			// The engine goes on: a new connection is relayed.
			next := testutil.Dial(t, h.addr)
			if got := testutil.RoundTrip(t, next, "alive"); got != "alive" {
				t.Fatalf("the next connection got %q", got)
			}
		})
	}
}

func TestOscillatingShortageLogsOnceWithACount(t *testing.T) {
	// Descriptors that run out and come back between every two accepts
	// make one error line and one "accepting again" per interval, not one
	// per oscillation.
	const rounds = 30
	h := newHarness(t, harnessOpt{}, testutil.StartEcho(t))
	for range rounds {
		for _, l := range h.e.loops {
			_ = l.poll.Call(l, func(l *loop) error { l.pauseListeners(unix.EMFILE); return nil })
		}
		c := testutil.Dial(t, h.addr) // accepted once a pause ends
		if got := testutil.RoundTrip(t, c, "x"); got != "x" {
			t.Fatal(got)
		}
		_ = c.Close()
	}
	errs, again := h.log.Lines("cannot take new connections"), h.log.Lines("accepting again")
	if len(errs) != 1 || len(again) > len(h.e.loops) {
		t.Fatalf("%d error lines and %d 'accepting again' for %d shortages; want one of each per listener and interval:\n%s",
			len(errs), len(again), rounds, strings.Join(append(errs, again...), "\n"))
	}
	for _, want := range []string{"connections=", "descriptor_limit=", "suppressed=0"} {
		if !strings.Contains(errs[0], want) {
			t.Fatalf("error line %q lacks %s", errs[0], want)
		}
	}
}

func TestBandwidthBudgetIsSpentOnlyOnBytesMoved(t *testing.T) {
	// A direction takes from its bucket only what a read can use. Taking
	// all the bucket held (up to a pipe's worth) for a read of at most
	// 64 KiB, and giving back only part, threw the rest away at every
	// read: 1 MiB in 4 KiB messages through a 2 MiB/s cap moved at about
	// 1 MiB/s. Checked on the bucket itself, which no machine's load
	// blurs: after 100 KiB, a full bucket holds its burst less 100 KiB.
	const (
		rate  = 2 << 20
		burst = rate / 4 // newBucket's
		sent  = 100 << 10
	)
	h, client, backend := relayed(t, harnessOpt{bw: rate})
	go func() {
		msg := make([]byte, 4<<10)
		for range sent / len(msg) {
			if _, err := client.Write(msg); err != nil {
				return
			}
		}
	}()
	_ = backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(backend, make([]byte, sent)); err != nil {
		t.Fatal(err)
	}
	var tokens float64 = -1
	for _, l := range h.e.loops {
		_ = l.poll.Call(l, func(l *loop) error {
			if c := l.byAge.Front(); c != nil && c.up.budget != nil {
				tokens = c.up.budget.tokens // as of its last refill: never more than now
			}
			return nil
		})
	}
	if tokens < burst-sent {
		t.Fatalf("after %d bytes from a full bucket of %d, it holds %.0f: budget was spent on bytes never moved",
			sent, burst, tokens)
	}
}

func TestBandwidthCapHoldsWithSmallMessages(t *testing.T) {
	// 4 KiB messages through a 2 MiB/s cap arrive whole, and no faster
	// than the cap: the first burst at once, the rest at the rate. The
	// clock starts before the first byte is sent, so a loaded machine
	// only makes the figure lower, never higher; the bound is wide (an
	// uncapped loopback moves hundreds of MiB/s). How close to its cap pj
	// comes is BenchmarkBandwidthCap's figure: a loaded machine blurs it,
	// and TestBandwidthBudgetIsSpentOnlyOnBytesMoved holds the rule that
	// lets pj reach it.
	const rate = 2 << 20
	_, client, backend := relayed(t, harnessOpt{bw: rate})
	achieved := sendCapped(t, client, backend, rate)
	t.Logf("%.2f MiB/s through a cap of %.2f MiB/s", achieved/(1<<20), float64(rate)/(1<<20))
	if achieved > 1.5*rate {
		t.Fatalf("%.0f B/s through a cap of %d B/s: the cap does not hold", achieved, rate)
	}
}

// sendCapped sends 1 MiB in 4 KiB messages from client to backend,
// through a fresh connection capped at rate bytes per second, and returns
// the rate achieved beyond the first burst, which goes at once.
func sendCapped(t testing.TB, client, backend *net.TCPConn, rate int) float64 {
	t.Helper()
	const total = 1 << 20
	burst := rate / 4 // newBucket's
	start := time.Now()
	go func() {
		msg := make([]byte, 4<<10)
		for sent := 0; sent < total; sent += len(msg) {
			if _, err := client.Write(msg); err != nil {
				return
			}
		}
	}()
	_ = backend.SetReadDeadline(start.Add(30 * time.Second))
	got, err := io.ReadFull(backend, make([]byte, total))
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("received %d of %d bytes in %s: %v", got, total, elapsed, err)
	}
	return float64(total-burst) / elapsed.Seconds()
}

// holdLoops stops every loop of e until the returned function is called:
// events meanwhile arrive together.
func holdLoops(t *testing.T, e *Engine) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	var held sync.WaitGroup
	for _, l := range e.loops {
		held.Add(1)
		l.poll.Post(func(*loop) { held.Done(); <-ch })
	}
	held.Wait()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return release
}

func TestDataBeforeAResetIsDelivered(t *testing.T) {
	// The backend answers and resets at once; pj sees the data and the
	// error in one event. The answer must reach the client before the
	// reset does.
	h, client, backend := relayed(t, harnessOpt{})
	if _, err := io.WriteString(client, "q"); err != nil { // relayed: pj has seen the connect complete
		t.Fatal(err)
	}
	if _, err := io.ReadFull(backend, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	release := holdLoops(t, h.e)
	if _, err := io.WriteString(backend, "last words"); err != nil {
		t.Fatal(err)
	}
	_ = backend.SetLinger(0)
	_ = backend.Close()
	release()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(client)
	if string(got) != "last words" {
		t.Fatalf("client read %q (%v); want the answer sent before the reset", got, err)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read ended with %v; want the reset passed on", err)
	}
	h.log.WaitLines(t, "[reset]", 1)
}

func TestCutWithBytesInFlightResets(t *testing.T) {
	// A connection pj cuts while bytes are in flight ends with a reset:
	// a FIN would pass a truncated transfer off as complete. One cut with
	// nothing in flight may end with a FIN.
	for _, tc := range []struct {
		name      string
		busy      bool
		cut       func(h *harness)
		wantReset bool
	}{
		{"killed mid-transfer", true, func(h *harness) { killAll(h.e) }, true},
		{"grace period over mid-transfer", true, func(h *harness) { h.e.Cut(ErrShutdown) }, true},
		{"killed while idle", false, func(h *harness) { killAll(h.e) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, client, backend := relayed(t, harnessOpt{})
			if tc.busy {
				// The backend sends more than the sockets hold; the client
				// reads nothing yet.
				go func() { _, _ = backend.Write(make([]byte, 64<<20)) }()
				testutil.WaitFor(t, 10*time.Second, "bytes to pile up in pj", func() bool {
					cs := h.e.Connections()
					return len(cs) == 1 && cs[0].Down > 0
				})
			}
			tc.cut(h)
			_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, client)
			if reset := errors.Is(err, syscall.ECONNRESET); reset != tc.wantReset {
				t.Fatalf("client read ended with %v; want a reset: %v", err, tc.wantReset)
			}
		})
	}
}

func killAll(e *Engine) {
	for _, c := range e.Connections() {
		e.Kill(c.ID)
	}
}

func TestClosingAListenerServesItsAcceptQueue(t *testing.T) {
	// Clients whose handshake completed wait in the kernel's accept queue
	// for pj; stopping the listener (SIGTERM, a reload that removes it)
	// must serve them, not reset them.
	const clients = 10
	h := newHarness(t, harnessOpt{}, testutil.StartEcho(t))
	release := holdLoops(t, h.e) // nothing is accepted meanwhile
	conns := make([]*net.TCPConn, clients)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() { conns[i] = testutil.Dial(t, h.addr) })
	}
	wg.Wait()
	closed := make(chan struct{})
	go func() { h.e.CloseListener(h.ln); close(closed) }()
	release()
	<-closed
	for i, c := range conns {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("client %d connected before the listener closed and was not served: %v", i, err)
		}
		_ = c.Close()
	}
	h.log.WaitLines(t, "[ok]", clients)
}

func TestListingOldestIsBoundedByTheLimit(t *testing.T) {
	// Asking for the oldest connection of many must return it, costing
	// work and memory for one, not for all of them.
	const open = 300
	h := newHarness(t, harnessOpt{}, testutil.StartEcho(t))
	for range open {
		c := testutil.Dial(t, h.addr)
		testutil.RoundTrip(t, c, "x")
	}
	all := h.e.OldestConnections("", -1)
	if len(all) != open {
		t.Fatalf("%d connections listed; want %d", len(all), open)
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].ID >= all[i].ID {
			t.Fatalf("listing not oldest first at %d: %d, %d", i, all[i-1].ID, all[i].ID)
		}
	}
	for _, limit := range []int{0, 1, 5} {
		got := h.e.OldestConnections("", limit)
		if len(got) != limit {
			t.Fatalf("limit %d: %d listed", limit, len(got))
		}
		for i := range got {
			if got[i].ID != all[i].ID {
				t.Fatalf("limit %d: entry %d is c%d; want the oldest, c%d", limit, i, got[i].ID, all[i].ID)
			}
		}
	}
	if got := h.e.OldestConnections("no such proxy", 3); len(got) != 0 {
		t.Fatalf("another proxy's filter listed %d", len(got))
	}
	var before, after runtime.MemStats
	const calls = 20
	runtime.ReadMemStats(&before)
	for range calls {
		h.e.OldestConnections("", 1)
	}
	runtime.ReadMemStats(&after)
	perCall := (after.TotalAlloc - before.TotalAlloc) / calls
	// One ConnInfo is about 100 bytes; all of them would be 30 KB and more.
	if perCall > 4<<10 {
		t.Fatalf("a listing of 1 of %d connections allocated %d bytes", open, perCall)
	}
}

func TestHalfCloseTimeout(t *testing.T) {
	// The client has finished sending; the backend never answers nor
	// closes (hung). With half_close_timeout the connection ends once the
	// backend's direction has been silent that long (status timeout);
	// bytes in that direction keep it open.
	const half = 400 * time.Millisecond
	h, client, backend := relayed(t, harnessOpt{half: half})
	if _, err := io.WriteString(client, "request"); err != nil {
		t.Fatal(err)
	}
	finished := time.Now()
	_ = client.CloseWrite()
	if got := testutil.ReadAll(t, backend); got != "request" {
		t.Fatalf("backend read %q", got)
	}
	// An answer trickles for several timeouts: the connection stays.
	last := testutil.Trickle(t, backend, client, half, finished)
	// Then the backend hangs: the connection ends, with a FIN (nothing
	// is in flight), once quiet for the timeout.
	if got := testutil.ReadAll(t, client); got != "" {
		t.Fatalf("read %q", got)
	}
	testutil.WantQuiet(t, last, half)
	h.wantLine(t, "[timeout]", "half-close timeout")
}

func TestHalfCloseTimeoutZeroArmsNothing(t *testing.T) {
	h, client, backend := relayed(t, harnessOpt{})
	_ = client.CloseWrite()
	if got := testutil.ReadAll(t, backend); got != "" {
		t.Fatalf("backend read %q", got)
	}
	testutil.WaitFor(t, 5*time.Second, "the client's FIN to be passed on", func() bool {
		return len(h.log.Lines("[")) == 0 && h.e.timerCount() == 0
	})
	if n := h.e.Active(); n != 1 {
		t.Fatalf("%d connections open; want the half-closed one", n)
	}
}

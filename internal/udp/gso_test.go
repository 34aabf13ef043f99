//go:build linux

package udp

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/evloop"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
)

// TestSendRunKeepsBoundaries drives the send path to a backend directly:
// a run of datagrams of one size (one GSO send), a run of mixed sizes
// (sendmmsg), and a slot coalesced by GRO (passed on as coalesced). The
// backend must get each datagram whole and alone.
func TestSendRunKeepsBoundaries(t *testing.T) {
	l, err := newLoop(&Engine{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.poll.Close)
	recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	_ = recv.SetReadBuffer(4 << 20)
	fd, err := newBackendSocket(recv.LocalAddr().(*net.UDPAddr).AddrPort(), &l.rsa, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFD(fd) })
	s := &session{fd: fd, ls: &lsock{ln: &Listener{}}}

	for _, tc := range []struct {
		name  string
		slots [][]byte // what each rx slot holds
		seg   []int32  // GRO segment size of each slot (0: one datagram)
		gso   bool     // whether the run qualifies for one GSO send
		want  [][]byte // the datagrams the backend must get
	}{
		{
			name:  "one size, last shorter",
			slots: [][]byte{fill('a', 1000), fill('b', 1000), fill('c', 1000), fill('d', 10)},
			gso:   true,
		},
		{
			name:  "mixed sizes",
			slots: [][]byte{fill('a', 100), fill('b', 1000), fill('c', 10)},
		},
		{
			name:  "coalesced by GRO",
			slots: [][]byte{append(append(fill('x', 500), fill('y', 500)...), fill('z', 200)...)},
			seg:   []int32{500},
			want:  [][]byte{fill('x', 500), fill('y', 500), fill('z', 200)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, b := range tc.slots {
				copy(l.rx.buf[i*slotSize:], b)
				l.rx.hdrs[i].Len = uint32(len(b))
				l.rxSeg[i] = 0
				if i < len(tc.seg) {
					l.rxSeg[i] = tc.seg[i]
				}
			}
			n := len(tc.slots)
			if got := l.gsoRun(0, n) > 0; got != tc.gso {
				t.Fatalf("gsoRun: %v, want %v", got, tc.gso)
			}
			if err := l.sendRun(s, 0, n); err != nil {
				t.Fatal(err)
			}
			if l.noGSO {
				t.Fatal("the kernel refused a GSO send on loopback")
			}
			want := tc.want
			if want == nil {
				want = tc.slots
			}
			wantDatagrams(t, recv, want)
		})
	}
}

// TestCoalescedReplies: a backend that sends its replies with GSO (as a
// QUIC server does) reaches pj's GRO socket as one coalesced read; the
// client must still get each reply whole and alone, and the session counts
// each.
func TestCoalescedReplies(t *testing.T) {
	srv := testutil.HandleUDP(t, func(c *net.UDPConn, _ []byte, from netip.AddrPort) {
		payload := append(append(fill('1', 300), fill('2', 300)...), fill('3', 120)...)
		oob := make([]byte, unix.CmsgSpace(2))
		putSegment(oob, 300)
		_, _, _ = c.WriteMsgUDPAddrPort(payload, oob, from)
	})
	h := newHarness(t, opts{}, srv.String())
	c := client(t, "127.0.0.1:0")
	if _, err := c.WriteToUDPAddrPort([]byte("go"), h.addr); err != nil {
		t.Fatal(err)
	}
	wantDatagrams(t, c, [][]byte{fill('1', 300), fill('2', 300), fill('3', 120)})
	testutil.WaitFor(t, 5*time.Second, "three datagrams counted", func() bool {
		ss := h.e.Sessions()
		return len(ss) == 1 && ss[0].DgramsDn == 3 && ss[0].Down == 720
	})
	coalesced := 0
	for _, l := range h.e.loops {
		_ = l.poll.Call(l, func(l *loop) error { coalesced += l.coalesced; return nil })
	}
	if coalesced == 0 {
		t.Fatal("the replies were not read coalesced: GRO is off on the backend socket")
	}
}

// TestRepliesMerged drives the reply path directly: replies of one size
// that wait together on a session's backend socket go to the client as
// one GSO message, and the client gets each whole and alone.
func TestRepliesMerged(t *testing.T) {
	l, err := newLoop(&Engine{log: slog.New(slog.DiscardHandler)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.poll.Close)
	udp4 := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetReadBuffer(1 << 20)
		return c
	}
	backend, listener, client := udp4(), udp4(), udp4()
	lfd, err := detach(listener)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFD(lfd) })
	bfd, err := newBackendSocket(backend.LocalAddr().(*net.UDPAddr).AddrPort(), &l.rsa, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFD(bfd) })
	p, err := proxy.Build(context.Background(), pjconf.Proxy("t", "", backend.LocalAddr().String()), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &session{fd: bfd, ls: &lsock{ln: &Listener{}, fd: lfd}, proxy: p, backend: p.Backends()[0]}
	var rsa unix.RawSockaddrAny
	n := evloop.Sockaddr(client.LocalAddr().(*net.UDPAddr).AddrPort(), &rsa)
	s.name = *(*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
	s.namelen = uint32(n)

	// Five replies wait on pj's backend socket before pj reads any.
	pjSide, _ := unix.Getsockname(bfd)
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: pjSide.(*unix.SockaddrInet4).Port}
	want := [][]byte{fill('a', 700), fill('b', 700), fill('c', 700), fill('d', 700), fill('e', 70)}
	for _, w := range want {
		if _, err := backend.WriteToUDP(w, to); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "the replies queued", func() bool {
		v, _ := unix.IoctlGetInt(bfd, unix.SIOCINQ)
		return v > 0
	})
	for try := 0; try < 10 && l.txData < len(want); try++ {
		l.readBackend(s, unix.EPOLLIN)
	}
	l.flush()
	if l.merged == 0 {
		t.Fatal("the replies were not merged into a GSO message")
	}
	wantDatagrams(t, client, want)
	if s.down.dgrams != 5 || s.down.bytes != 2870 {
		t.Fatalf("counted %d datagrams, %d bytes; want 5, 2870", s.down.dgrams, s.down.bytes)
	}
}

// wantDatagrams reads a datagram for each of want from c, each within
// 5 s, and fails the test unless each is its want, whole and alone.
func wantDatagrams(t *testing.T, c *net.UDPConn, want [][]byte) {
	t.Helper()
	buf := make([]byte, 1<<16)
	for i, w := range want {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:m], w) {
			t.Fatalf("datagram %d: %d bytes of %q, want %d of %q", i, m, buf[0], len(w), w[0])
		}
	}
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

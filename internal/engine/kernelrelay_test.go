//go:build linux

package engine

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

// needKernel skips a test of the in-kernel relay where the kernel or the
// process's privileges do not let pj load it.
func needKernel(t *testing.T) {
	t.Helper()
	if _, err := loadKernel(); err != nil {
		t.Skipf("the in-kernel relay cannot be loaded here (it needs CAP_BPF and CAP_NET_ADMIN): %v", err)
	}
}

func kernelRelayOn(p *config.Proxy) { p.KernelRelay = true }

func TestKernelRelayMovesBytesIntactBothWays(t *testing.T) {
	needKernel(t)
	// The client's first bytes are waiting in pj's socket before the
	// kernel takes over (the accept is held until they are): they must
	// reach the backend first, and the rest after them.
	const n, early = 16 << 20, 1000
	sent := make(chan struct{})
	baddr, conns := backendConns(t)
	h := newHarness(t, harnessOpt{change: kernelRelayOn, onOpen: func() {
		select {
		case <-sent:
		case <-time.After(10 * time.Second):
		}
	}}, baddr)
	client := testutil.Dial(t, h.addr)
	up := testutil.NewPattern(1, n)
	if _, err := io.CopyN(client, up, early); err != nil {
		t.Fatal(err)
	}
	close(sent)
	backend := accepted(t, conns)
	exchange(t, client, backend, up, n)
	line := h.log.WaitLines(t, "[ok]", 1)[0]
	if !strings.Contains(line, "up=16777216 down=16777216 ") || !strings.HasSuffix(line, "relay=kernel") {
		t.Fatalf("log line %q: want exact counts and relay=kernel", line)
	}
}

func TestKernelRelayPassesHalfCloseOn(t *testing.T) {
	needKernel(t)
	// As on the plain path: the client half-closes after its request,
	// the backend sees the end of it and answers after it. (The first
	// bytes have moved before the FIN is sent: the kernel has the
	// connection by then.)
	h, client, backend := relayed(t, harnessOpt{change: kernelRelayOn})
	if _, err := io.WriteString(client, "req"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(backend, make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(client, "uest"); err != nil {
		t.Fatal(err)
	}
	_ = client.CloseWrite()
	answerAfterFIN(t, client, backend, "uest")
	h.wantLine(t, "[ok]", "up=7 down=18 ", "closed_by=client", "relay=kernel")
}

func TestKernelRelayLeavesAnEndedClientToPJ(t *testing.T) {
	needKernel(t)
	// The client's request and FIN are in pj's socket before the backend
	// answers: the kernel takes only open sockets, so pj relays this one,
	// without a warning.
	sent := make(chan struct{})
	h := newHarness(t, harnessOpt{change: kernelRelayOn, onOpen: func() {
		select {
		case <-sent:
		case <-time.After(10 * time.Second):
		}
	}}, echoAfterEOF(t))
	client := testutil.Dial(t, h.addr)
	if _, err := io.WriteString(client, "request"); err != nil {
		t.Fatal(err)
	}
	_ = client.CloseWrite()
	close(sent)
	if got := testutil.ReadAll(t, client); got != "request" {
		t.Fatalf("client read %q", got)
	}
	line := h.log.WaitLines(t, "[ok]", 1)[0]
	if !strings.Contains(line, "up=7 down=7 ") || !strings.HasSuffix(line, "relay=copy") {
		t.Fatalf("log line %q: want up=7 down=7 relay=copy", line)
	}
	if w := h.log.Lines("WARN"); len(w) > 0 {
		t.Fatalf("warnings %q: want none", w)
	}
}

// echoAfterEOF serves a backend that reads to the end of stream, then
// writes back what it read and closes.
func echoAfterEOF(t *testing.T) string {
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		b, err := io.ReadAll(c)
		if err == nil {
			_, _ = c.Write(b)
		}
		_ = c.Close()
	})
	return ln.Addr().String()
}

func TestKernelRelayCountsInTheConnectionTable(t *testing.T) {
	needKernel(t)
	h, client, backend := relayed(t, harnessOpt{change: kernelRelayOn})
	if _, err := client.Write(make([]byte, 5000)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(backend, make([]byte, 5000)); err != nil {
		t.Fatal(err)
	}
	if _, err := backend.Write(make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	// The destination has taken the bytes: the kernel's counts say so.
	conn := h.e.Connections()
	if len(conn) != 1 || conn[0].Up != 5000 || conn[0].Down != 300 {
		t.Fatalf("connections %+v: want one with up 5000, down 300", conn)
	}
	_ = client.Close()
	_ = backend.Close()
	h.log.WaitLines(t, "up=5000 down=300 ", 1)
}

func TestKernelRelayIdleTimeout(t *testing.T) {
	needKernel(t)
	// Bytes the kernel moves keep the connection open; silence in both
	// directions for the idle timeout ends it.
	const idle = 400 * time.Millisecond
	since := time.Now()
	h, client, backend := relayed(t, harnessOpt{idle: idle, change: kernelRelayOn})
	testutil.Trickle(t, client, backend, idle, since)
	if got := testutil.ReadAll(t, client); got != "" {
		t.Fatalf("read %q", got)
	}
	h.wantLine(t, "[timeout]", "relay=kernel")
}

func TestKernelRelayFallsBackWhenItCannotLoad(t *testing.T) {
	// A kernel (or a process) that refuses the program: the connections
	// are relayed by pj, and why is logged once.
	saved := loadKernel
	loadKernel = func() (*kernelProg, error) { return nil, errors.New("operation not permitted") }
	t.Cleanup(func() { loadKernel = saved })
	h := newHarness(t, harnessOpt{change: kernelRelayOn}, testutil.StartEcho(t))
	for range 2 {
		c := testutil.Dial(t, h.addr)
		if got := testutil.RoundTrip(t, c, "ping"); got != "ping" {
			t.Fatalf("echo %q", got)
		}
		_ = c.CloseWrite()
		testutil.ReadAll(t, c)
	}
	for _, line := range h.log.WaitLines(t, "[ok]", 2) {
		if !strings.HasSuffix(line, "relay=copy") {
			t.Fatalf("log line %q: want relay=copy", line)
		}
	}
	if warns := h.log.Lines("kernel_relay: the in-kernel relay cannot be used here"); len(warns) != 1 ||
		!strings.Contains(warns[0], "operation not permitted") {
		t.Fatalf("warnings %q: want one, with the reason", warns)
	}
}

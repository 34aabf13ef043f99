package cli

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// gate is a log destination that takes nothing until it is opened: a
// stalled journald or a container log pipe nobody reads.
type gate struct {
	open    chan struct{}
	once    sync.Once
	waiting atomic.Int32 // writes blocked now
}

func newGate() *gate { return &gate{open: make(chan struct{})} }

func (g *gate) Write(p []byte) (int, error) {
	g.waiting.Add(1)
	<-g.open
	g.waiting.Add(-1)
	return len(p), nil
}

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

// withLogQueue makes the log queue small, so that a test reaches its bound
// with a few hundred lines.
func withLogQueue(batch, batches int) Option {
	return func(e *runEnv) { e.logBatch, e.logBatches = batch, batches }
}

// echoWithin relays msg through addr and back, half-closing, and fails
// if that takes longer than d.
func echoWithin(addr, msg string, d time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return &echoError{got: string(got), want: msg}
	}
	return nil
}

type echoError struct{ got, want string }

func (e *echoError) Error() string {
	return "echoed " + strconv.Quote(e.got) + ", want " + strconv.Quote(e.want)
}

// metric returns the value of the sample named name (with no labels) at
// the admin listener addr, or -1 if it is not there.
func metric(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	return -1
}

func TestABlockedLogDestinationDoesNotStallConnections(t *testing.T) {
	g := newGate()
	admin := testutil.ClosedAddr(t)
	p, err := tryStartWith(t, g, []Option{withLogQueue(4<<10, 2)}, nil,
		"-p", "127.0.0.1:0:"+testutil.StartEcho(t), "--admin", admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.release) // before pj is stopped: cleanups run last first
	// The start-up lines are flushed within the flush interval; from then
	// on the writer is stuck in the destination.
	testutil.WaitFor(t, 10*time.Second, "the log writer to block", func() bool { return g.waiting.Load() > 0 })

	// Each connection logs a line of ~100 bytes: 300 are well past the
	// 12 KiB the queue holds.
	const conns = 300
	for i := range conns {
		if err := echoWithin(p.addrs[0], "ping "+strconv.Itoa(i), 5*time.Second); err != nil {
			t.Fatalf("connection %d with the log destination blocked: %v", i, err)
		}
	}
	dropped := metric(t, admin, "pj_log_lines_dropped_total")
	if dropped <= 0 {
		t.Fatalf("pj_log_lines_dropped_total = %v after %d lines into a blocked destination, want > 0", dropped, conns)
	}

	// Once the destination takes lines again, pj says what it lost.
	g.release()
	line := p.log.WaitLines(t, "log lines in the last", 1)[0]
	if !strings.Contains(line, "the log destination is slower than pj") {
		t.Fatalf("drop notice %q does not say why", line)
	}
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
	// Everything logged up to the end was written before Run returned.
	if n := len(p.log.Lines("INFO stopped")); n != 1 {
		t.Fatalf("%d \"stopped\" lines in the log after Run returned, want 1:\n%s", n, p.log.String())
	}
}

func TestLogLinesAreKeptWhileTheDestinationKeepsUp(t *testing.T) {
	admin := testutil.ClosedAddr(t)
	p, err := tryStartWith(t, nil, []Option{withLogQueue(4<<10, 2)}, nil,
		"-p", "127.0.0.1:0:"+testutil.StartEcho(t), "--admin", admin)
	if err != nil {
		t.Fatal(err)
	}
	const conns = 300
	for i := range conns {
		if err := echoWithin(p.addrs[0], "ping", 5*time.Second); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if dropped := metric(t, admin, "pj_log_lines_dropped_total"); dropped != 0 {
		t.Fatalf("pj_log_lines_dropped_total = %v, want 0", dropped)
	}
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
	if n := len(p.log.Lines("up=4 down=4")); n != conns {
		t.Fatalf("%d connection lines, want %d", n, conns)
	}
	if n := len(p.log.Lines("INFO stopped")); n != 1 {
		t.Fatalf("%d \"stopped\" lines in the log after Run returned, want 1", n)
	}
}

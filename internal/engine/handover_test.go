//go:build linux

package engine

import (
	"crypto/sha256"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// TestDetachAndAdoptKeepEveryByte moves a connection whose buffers are
// full, with bytes in flight held by pj, from one engine to another (as
// an upgrade moves it between processes): the stream goes on with no
// byte lost or reordered, and the new engine counts it from the start.
func TestDetachAndAdoptKeepEveryByte(t *testing.T) {
	echo := testutil.StartEcho(t)
	from, to := newHarness(t, harnessOpt{}, echo), newHarness(t, harnessOpt{}, echo)
	c := testutil.Dial(t, from.addr)
	if got := testutil.RoundTrip(t, c, "hi"); got != "hi" {
		t.Fatal(got)
	}

	// Write without reading until nothing more goes in: every buffer on
	// the way is full, and pj holds what it read but cannot write.
	const chunk = 64 << 10
	src := testutil.NewPattern(3, 1<<40)
	sum := sha256.New()
	buf := make([]byte, chunk)
	var sent int64
	for stalled := 0; stalled < 3; {
		if _, err := io.ReadFull(src, buf); err != nil {
			t.Fatal(err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Write(buf)
		sum.Write(buf[:n])
		sent += int64(n)
		if err != nil {
			if !testutil.IsTimeout(err) {
				t.Fatal(err)
			}
			stalled++
			src = testutil.NewPattern(3, 1<<40) // restart at sent
			if _, err := io.CopyN(io.Discard, src, sent); err != nil {
				t.Fatal(err)
			}
		}
	}
	_ = c.SetWriteDeadline(time.Time{})

	moved := from.e.Detach(10)
	if len(moved) != 1 {
		t.Fatalf("detached %d connections, want 1", len(moved))
	}
	d := moved[0]
	if d.Up.Pending+d.Down.Pending == 0 {
		t.Fatalf("no bytes in flight moved (%+v): the test did not fill pj's buffers", d.Moved)
	}
	if from.e.Active() != 0 {
		t.Fatalf("the old engine still counts %d connections", from.e.Active())
	}
	p := to.ln.Proxy()
	r := p.Routes[0]
	b := r.Pool().Backends()[0]
	if err := to.e.Adopt(d.Moved, d.FD, to.ln, p, r, b); err != nil {
		t.Fatal(err)
	}
	if to.e.Active() != 1 || b.Active.Load() != 1 {
		t.Fatalf("the new engine counts %d connections, its backend %d; want 1 and 1", to.e.Active(), b.Active.Load())
	}

	// The rest of the stream, then the end; everything comes back in order.
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(c, testutil.NewPattern(9, 1<<20), 1<<20)
		if err == nil {
			err = c.CloseWrite()
		}
		done <- err
	}()
	back := sha256.New()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.Copy(back, c)
	if err != nil {
		t.Fatalf("reading back after %d bytes: %v", got, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(sum, testutil.NewPattern(9, 1<<20))
	want := int64(2) + sent + 1<<20
	if got != want-2 {
		t.Fatalf("read back %d bytes, sent %d", got, want-2)
	}
	if fmt.Sprintf("%x", back.Sum(nil)) != fmt.Sprintf("%x", sum.Sum(nil)) {
		t.Fatal("the bytes read back differ from those sent (lost, changed or reordered)")
	}
	// Its line, from the new engine, counts every byte from the start.
	to.log.WaitLines(t, "[ok] duration=", 1)
	if lines := to.log.Lines(fmt.Sprintf("up=%d down=%d", want, want)); len(lines) != 1 {
		t.Fatalf("the new engine's log does not count every byte (%d each way):\n%s", want, to.log)
	}
	if n := len(from.log.Lines(fmt.Sprintf("up=%d", want))); n != 0 {
		t.Fatalf("the old engine logged the moved connection")
	}
}

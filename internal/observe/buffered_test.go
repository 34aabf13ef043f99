package observe

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// countingWriter records each Write call; while blocked is non-nil, a Write
// waits for it to be closed.
type countingWriter struct {
	mu      sync.Mutex
	writes  []string
	err     error
	blocked chan struct{}
	waiting int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	if gate := c.blocked; gate != nil {
		c.waiting++
		c.mu.Unlock()
		<-gate
		c.mu.Lock()
		c.waiting--
	}
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, string(p))
	return len(p), nil
}

func (c *countingWriter) block() {
	c.mu.Lock()
	c.blocked = make(chan struct{})
	c.mu.Unlock()
}

func (c *countingWriter) unblock() {
	c.mu.Lock()
	close(c.blocked)
	c.blocked = nil
	c.mu.Unlock()
}

func (c *countingWriter) isWaiting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waiting > 0
}

func (c *countingWriter) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.writes...)
}

func (c *countingWriter) lines() []string {
	var out []string
	for _, w := range c.snapshot() {
		out = append(out, strings.SplitAfter(w, "\n")...)
	}
	var kept []string
	for _, l := range out {
		if l != "" {
			kept = append(kept, l)
		}
	}
	return kept
}

func TestBufferedWriterBatchesLines(t *testing.T) {
	var out countingWriter
	b := NewBufferedWriter(&out, BufferOptions{Batch: 1 << 10, Flush: time.Hour})
	for range 10 {
		if _, err := b.Write([]byte("line\n")); err != nil {
			t.Fatal(err)
		}
	}
	if got := out.snapshot(); len(got) != 0 {
		t.Fatalf("written before a flush: %q", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := out.snapshot(); len(got) != 1 || got[0] != strings.Repeat("line\n", 10) {
		t.Fatalf("writes %q, want the ten lines in one write", got)
	}
}

func TestBufferedWriterWritesFullBatches(t *testing.T) {
	var out countingWriter
	b := NewBufferedWriter(&out, BufferOptions{Batch: 16, Flush: time.Hour})
	want := []string{"0123456789\n", "abcdefghij\n", "big line longer than the buffer\n"}
	for _, l := range want {
		if _, err := b.Write([]byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	// The first two are full batches: they are written without waiting
	// for the flush interval.
	testutil.WaitFor(t, 5*time.Second, "the full batches to be written", func() bool { return len(out.snapshot()) == 2 })
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := out.snapshot(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("writes %q, want %q", got, want)
	}
}

func TestBufferedWriterFlushesAfterTheInterval(t *testing.T) {
	var out countingWriter
	b := NewBufferedWriter(&out, BufferOptions{Batch: 1 << 10, Flush: 10 * time.Millisecond})
	defer b.Close()
	if _, err := b.Write([]byte("soon\n")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "the line to be written after the interval", func() bool {
		return len(out.snapshot()) == 1
	})
	if _, err := b.Write([]byte("again\n")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "a second line to be written after the interval", func() bool {
		return len(out.snapshot()) == 2
	})
}

func TestBufferedWriterReportsWriteErrors(t *testing.T) {
	out := countingWriter{err: errors.New("disk full")}
	b := NewBufferedWriter(&out, BufferOptions{Batch: 1 << 10, Flush: time.Hour})
	if _, err := b.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err == nil || err.Error() != "disk full" {
		t.Fatalf("Close = %v, want the write error", err)
	}
	if _, err := b.Write([]byte("late\n")); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Write after Close = %v, want ErrLogClosed", err)
	}
}

// line returns a 16-byte line numbered i.
func line(i int) []byte { return fmt.Appendf(nil, "line %09d\n", i) }

func TestBufferedWriterDropsWhileTheDestinationIsStuck(t *testing.T) {
	var out countingWriter
	var mu sync.Mutex
	var notices []uint64
	// Four lines make a batch; two batches may wait; Flush never fires, so
	// what is accepted while stuck does not depend on timing: two batches
	// (one being written, one queued) and the partial one, 12 lines.
	var b *BufferedWriter
	b = NewBufferedWriter(&out, BufferOptions{Batch: 64, Batches: 2, Flush: time.Hour, Report: time.Hour,
		OnDrop: func(n uint64, _ time.Duration) {
			// The notice is written before it is counted: the test
			// goes on once it counts one, and its next lines must
			// come after the notice.
			_, _ = fmt.Fprintf(b, "dropped %d\n", n)
			mu.Lock()
			notices = append(notices, n)
			mu.Unlock()
		}})
	out.block()
	const total = 1000
	for i := range total { // returns, though nothing is written: the test would hang otherwise
		if _, err := b.Write(line(i)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "the writer to be stuck", out.isWaiting)
	if got := b.Dropped(); got != total-12 {
		t.Fatalf("Dropped = %d, want %d: the queue holds 12 lines", got, total-12)
	}

	// The destination takes lines again: the kept ones are written in
	// order, then the notice, at once although Report is long (it is the
	// first one).
	out.unblock()
	testutil.WaitFor(t, 5*time.Second, "the drop notice", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(notices) == 1
	})
	// A second stall: its notice waits for Report, or for Close.
	out.block()
	for i := range 100 {
		_, _ = b.Write(line(total + i))
	}
	out.unblock()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	got := out.lines()
	for i := range 12 {
		if got[i] != string(line(i)) {
			t.Fatalf("line %d written is %q, want %q", i, got[i], line(i))
		}
	}
	if got[12] != fmt.Sprintf("dropped %d\n", total-12) {
		t.Fatalf("line 12 is %q, want the drop notice", got[12])
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 2 || notices[0]+notices[1] != b.Dropped() {
		t.Fatalf("notices %v, want two that add up to Dropped() = %d", notices, b.Dropped())
	}
	if last := got[len(got)-1]; last != fmt.Sprintf("dropped %d\n", notices[1]) {
		t.Fatalf("last line %q, want the second notice written at Close", last)
	}
}

func TestBufferedWriterKeepsEveryLineWhileTheDestinationKeepsUp(t *testing.T) {
	var out countingWriter
	// One batch may wait: the tightest queue. The writer waits for each
	// batch to be written before the next, which is keeping up.
	b := NewBufferedWriter(&out, BufferOptions{Batch: 64, Batches: 1, Flush: time.Millisecond})
	const total = 400
	for i := range total {
		if _, err := b.Write(line(i)); err != nil {
			t.Fatal(err)
		}
		if i%4 == 3 {
			testutil.WaitFor(t, 5*time.Second, "the batch to be written", func() bool { return len(out.lines()) == i+1 })
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	got := out.lines()
	if len(got) != total || b.Dropped() != 0 {
		t.Fatalf("%d lines written, %d dropped, want %d and 0", len(got), b.Dropped(), total)
	}
	for i, l := range got {
		if l != string(line(i)) {
			t.Fatalf("line %d is %q", i, l)
		}
	}
}

func TestBufferedWriterConcurrentWritersAccountForEveryLine(t *testing.T) {
	var out countingWriter
	b := NewBufferedWriter(&out, BufferOptions{Batch: 1 << 10, Batches: 4, Flush: time.Millisecond})
	const writers, each = 8, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				_, _ = b.Write(fmt.Appendf(nil, "w%d %06d\n", w, i))
			}
		})
	}
	wg.Wait()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	got := out.lines()
	if uint64(len(got))+b.Dropped() != writers*each {
		t.Fatalf("%d written + %d dropped, want %d", len(got), b.Dropped(), writers*each)
	}
	// Lines are whole and each writer's lines keep their order.
	last := map[string]int{}
	for _, l := range got {
		var w string
		var i int
		if _, err := fmt.Sscanf(l, "%s %d\n", &w, &i); err != nil || len(l) != 10 {
			t.Fatalf("torn line %q", l)
		}
		if prev, ok := last[w]; ok && i <= prev {
			t.Fatalf("%s: line %d after %d", w, i, prev)
		}
		last[w] = i
	}
}

func TestBufferedWriterCloseGivesUpOnAStuckDestination(t *testing.T) {
	var out countingWriter
	b := NewBufferedWriter(&out, BufferOptions{Batch: 16, Flush: time.Hour, CloseWait: 50 * time.Millisecond})
	out.block()
	t.Cleanup(out.unblock) // lets the writer goroutine end
	_, _ = b.Write(line(0))
	_, _ = b.Write(line(1)) // a full batch: the writer takes it and is stuck
	testutil.WaitFor(t, 5*time.Second, "the writer to be stuck", out.isWaiting)
	if err := b.Close(); err == nil || !strings.Contains(err.Error(), "took nothing") {
		t.Fatalf("Close = %v, want an error saying the destination is stuck", err)
	}
}

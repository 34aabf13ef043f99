package observe

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// countingWriter records each Write call.
type countingWriter struct {
	mu     sync.Mutex
	writes []string
	err    error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, string(p))
	return len(p), nil
}

func (c *countingWriter) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.writes...)
}

func TestBufferedWriterBatchesLines(t *testing.T) {
	var out countingWriter
	b := NewBufferedWriter(&out, 1<<10, time.Hour)
	for range 10 {
		if _, err := b.Write([]byte("line\n")); err != nil {
			t.Fatal(err)
		}
	}
	if got := out.snapshot(); len(got) != 0 {
		t.Fatalf("written before a flush: %q", got)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := out.snapshot(); len(got) != 1 || got[0] != strings.Repeat("line\n", 10) {
		t.Fatalf("writes %q, want the ten lines in one write", got)
	}
}

func TestBufferedWriterFlushesWhenFull(t *testing.T) {
	var out countingWriter
	b := NewBufferedWriter(&out, 16, time.Hour)
	for _, l := range []string{"0123456789\n", "abcdefghij\n", "big line longer than the buffer\n"} {
		if _, err := b.Write([]byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"0123456789\n", "abcdefghij\n", "big line longer than the buffer\n"}
	got := out.snapshot()
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("writes %q, want %q", got, want)
	}
}

func TestBufferedWriterFlushesAfterTheInterval(t *testing.T) {
	var out countingWriter
	b := NewBufferedWriter(&out, 1<<10, 10*time.Millisecond)
	defer b.Close()
	if _, err := b.Write([]byte("soon\n")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "the line to be written after the interval", func() bool {
		return len(out.snapshot()) == 1
	})
}

func TestBufferedWriterReportsWriteErrors(t *testing.T) {
	out := countingWriter{err: errors.New("disk full")}
	b := NewBufferedWriter(&out, 1<<10, time.Hour)
	if _, err := b.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err == nil || err.Error() != "disk full" {
		t.Fatalf("Close = %v, want the write error", err)
	}
}

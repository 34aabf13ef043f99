package observe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// ErrLogClosed is returned by a BufferedWriter's Write after Close.
var ErrLogClosed = errors.New("log writer closed")

// BufferOptions size a BufferedWriter; zero fields take the defaults.
type BufferOptions struct {
	// Batch is the size of one write to the destination (64 KiB).
	Batch int
	// Batches is how many full batches may wait for the destination (16);
	// past them, lines are dropped.
	Batches int
	// Flush is the longest a line waits in a partial batch (100 ms).
	Flush time.Duration
	// Report is the shortest time between two drop notices (10 s).
	Report time.Duration
	// OnDrop, if set, is called from the writer goroutine, once the
	// destination has taken what waited, with the number of lines dropped
	// since the last call and the time they were dropped over. It may
	// write to the BufferedWriter (the notice is a log line too).
	OnDrop func(n uint64, over time.Duration)
	// CloseWait bounds how long Close waits for the destination to take
	// what is pending (5 s).
	CloseWait time.Duration
}

func (o *BufferOptions) defaults() {
	if o.Batch <= 0 {
		o.Batch = 64 << 10
	}
	if o.Batches <= 0 {
		o.Batches = 16
	}
	if o.Flush <= 0 {
		o.Flush = 100 * time.Millisecond
	}
	if o.Report <= 0 {
		o.Report = 10 * time.Second
	}
	if o.CloseWait <= 0 {
		o.CloseWait = 5 * time.Second
	}
}

// BufferedWriter gathers log lines into batches that one goroutine of its
// own writes to the destination: one write(2) per batch instead of one per
// connection (nginx's access_log buffer= and flush=), and never from the
// caller. Write only copies into memory, so a slow destination (a stalled
// journald, a container log pipe nobody reads) cannot stall the event
// loops that log: when Batches full batches already wait or are being
// written, further lines are dropped and counted (Dropped), and OnDrop is
// told once the destination takes lines again, at most once per Report.
// Memory is bounded by Batches+3 batches. Close writes what is pending.
type BufferedWriter struct {
	w   io.Writer
	opt BufferOptions

	mu        sync.Mutex
	cur       []byte   // the batch being filled
	queue     [][]byte // full batches waiting, oldest first
	spare     [][]byte // written batches, for reuse
	unsaid    uint64   // lines dropped and not yet reported
	firstDrop time.Time
	inflight  int  // batches taken by the writer goroutine and not yet written
	closed    bool // the writer goroutine has finished; Write refuses
	err       error

	dropped atomic.Uint64
	wake    chan struct{} // cap 1: a batch is queued or cur went non-empty
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// NewBufferedWriter returns a writer batching into w and starts its
// writer goroutine; Close stops it.
func NewBufferedWriter(w io.Writer, opt BufferOptions) *BufferedWriter {
	opt.defaults()
	b := &BufferedWriter{
		w: w, opt: opt,
		cur:  make([]byte, 0, opt.Batch),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go b.run()
	return b
}

// Write queues p, which must be whole lines, for the writer goroutine. It
// never waits for the destination: if the queue is full, p is dropped and
// counted, and Write still reports success (the caller has nothing better
// to do with a log line).
func (b *BufferedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		b.dropped.Add(lines(p))
		return 0, ErrLogClosed
	}
	wake := len(b.cur) == 0
	if len(b.cur) > 0 && len(b.cur)+len(p) > b.opt.Batch {
		if len(b.queue)+b.inflight >= b.opt.Batches {
			n := lines(p)
			b.dropped.Add(n)
			if b.unsaid == 0 {
				b.firstDrop = time.Now()
			}
			b.unsaid += n
			return len(p), nil
		}
		b.queue = append(b.queue, b.cur)
		b.cur = b.takeSpare()
		wake = true
	}
	b.cur = append(b.cur, p...)
	if wake {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

func lines(p []byte) uint64 {
	return uint64(max(bytes.Count(p, []byte{'\n'}), 1))
}

// takeSpare returns an empty batch buffer; b.mu is held.
func (b *BufferedWriter) takeSpare() []byte {
	if n := len(b.spare); n > 0 {
		buf := b.spare[n-1]
		b.spare[n-1] = nil
		b.spare = b.spare[:n-1]
		return buf
	}
	return make([]byte, 0, b.opt.Batch)
}

// Dropped is the number of lines dropped since the start.
func (b *BufferedWriter) Dropped() uint64 { return b.dropped.Load() }

// write writes batches to the destination in order, recycling each
// buffer once written; it runs on the writer goroutine only.
func (b *BufferedWriter) write(batches [][]byte) {
	for i, buf := range batches {
		_, err := b.w.Write(buf)
		batches[i] = nil
		b.mu.Lock()
		b.inflight--
		if err != nil && b.err == nil {
			b.err = err
		}
		if len(b.spare) < 2 && cap(buf) <= 2*b.opt.Batch { // one grown by a huge line is not kept
			b.spare = append(b.spare, buf[:0])
		}
		b.mu.Unlock()
	}
}

// run is the writer goroutine.
func (b *BufferedWriter) run() {
	defer close(b.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var flushAt, lastReport time.Time // zero: no partial batch waits; no notice yet
	var todo [][]byte
	stopping := false
	for {
		var fire <-chan time.Time
		if next := b.nextWake(flushAt, lastReport); !next.IsZero() {
			// Since Go 1.23, Reset discards a value the timer sent before.
			timer.Reset(time.Until(next))
			fire = timer.C
		}
		if !stopping {
			select {
			case <-b.wake:
			case <-fire:
			case <-b.stop:
				stopping = true
			}
		}
		timer.Stop()

		now := time.Now()
		b.mu.Lock()
		todo, b.queue = b.queue, todo[:0]
		if len(b.cur) > 0 {
			switch {
			case stopping || (!flushAt.IsZero() && !now.Before(flushAt)):
				todo = append(todo, b.cur)
				b.cur = b.takeSpare()
				flushAt = time.Time{}
			case flushAt.IsZero():
				flushAt = now.Add(b.opt.Flush)
			}
		} else {
			flushAt = time.Time{}
		}
		b.inflight += len(todo)
		b.mu.Unlock()

		b.write(todo)
		todo = todo[:0]

		// Drops are reported once the destination took what waited, with
		// every line dropped while it was stuck.
		now = time.Now()
		if report, over := b.takeDrops(now, lastReport, stopping); report > 0 && b.opt.OnDrop != nil {
			lastReport = now
			b.opt.OnDrop(report, over)
		}
		if stopping {
			b.mu.Lock()
			if len(b.cur) == 0 && len(b.queue) == 0 {
				b.closed = true
				b.mu.Unlock()
				return
			}
			b.mu.Unlock()
		}
	}
}

// nextWake is when the writer must wake up without being told: to flush
// a partial batch at flushAt, or to report drops; zero for never.
func (b *BufferedWriter) nextWake(flushAt, lastReport time.Time) time.Time {
	next := flushAt
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unsaid > 0 {
		if at := lastReport.Add(b.opt.Report); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}

// takeDrops returns the lines dropped and not yet reported, and for how
// long lines have been dropped, when a report is due: once per Report
// interval, and when stopping.
func (b *BufferedWriter) takeDrops(now, lastReport time.Time, stopping bool) (uint64, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unsaid == 0 || (!stopping && now.Before(lastReport.Add(b.opt.Report))) {
		return 0, 0
	}
	report, over := b.unsaid, now.Sub(b.firstDrop)
	b.unsaid = 0
	return report, over
}

// Close writes what is pending, waiting at most CloseWait for the
// destination, and stops the writer goroutine. It returns the first error
// the destination gave, if any.
func (b *BufferedWriter) Close() error {
	b.once.Do(func() { close(b.stop) })
	select {
	case <-b.done:
	case <-time.After(b.opt.CloseWait):
		return fmt.Errorf("log destination took nothing for %s: the last lines are lost", b.opt.CloseWait)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

package observe

import (
	"io"
	"sync"
	"time"
)

// BufferedWriter gathers log lines and writes them in batches: at most
// every interval, or sooner when a batch reaches its size. One write(2) per
// batch instead of one per connection is what lets a proxy log every
// connection at tens of thousands of connections a second (nginx's
// access_log buffer=, flush=). Flush or Close writes what is pending.
type BufferedWriter struct {
	mu       sync.Mutex
	w        io.Writer
	buf      []byte
	size     int
	interval time.Duration
	timer    *time.Timer // armed while buf holds bytes
	err      error       // the last write error, reported by the next Write
}

// NewBufferedWriter returns a writer batching into w.
func NewBufferedWriter(w io.Writer, size int, interval time.Duration) *BufferedWriter {
	b := &BufferedWriter{w: w, size: size, interval: interval, buf: make([]byte, 0, size)}
	b.timer = time.AfterFunc(interval, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if err := b.flushLocked(); err != nil {
			b.err = err // nobody is waiting: the next Write reports it
		}
	})
	b.timer.Stop()
	return b
}

// Write queues p, which must be whole lines, for the next batch.
func (b *BufferedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.err; err != nil {
		b.err = nil
		return 0, err
	}
	if len(b.buf)+len(p) > b.size {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) >= b.size {
			return b.w.Write(p)
		}
	}
	if len(b.buf) == 0 {
		b.timer.Reset(b.interval)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// Flush writes what is pending.
func (b *BufferedWriter) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *BufferedWriter) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	b.timer.Stop()
	return err
}

// Close flushes and stops the timer.
func (b *BufferedWriter) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.timer.Stop()
	err := b.flushLocked()
	b.err = nil
	return err
}

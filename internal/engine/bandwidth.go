//go:build linux

package engine

import "time"

// bucket is a token bucket of bytes per second for one direction of one
// connection (bandwidth.per_connection). It belongs to the connection's
// loop: no locking. Both data paths honour it, splice too, because the
// loop asks splice for no more than the bucket holds.
type bucket struct {
	rate   float64 // bytes per second
	burst  float64 // the most the bucket holds
	tokens float64
	last   int64 // loop clock of the last refill
}

// minBurst lets a throttled direction move in chunks worth a system call.
const minBurst = 16 << 10

func newBucket(rate int64, now int64) *bucket {
	burst := max(float64(rate)/4, minBurst)
	return &bucket{rate: float64(rate), burst: burst, tokens: burst, last: now}
}

func (b *bucket) refill(now int64) {
	if now > b.last {
		b.tokens = min(b.burst, b.tokens+b.rate*float64(now-b.last)/1e9)
		b.last = now
	}
}

// take takes up to want bytes of budget and returns how many; 0 means
// wait until ready.
func (b *bucket) take(now int64, want int) int {
	b.refill(now)
	n := min(int(b.tokens), want)
	if n < 1 {
		return 0
	}
	b.tokens -= float64(n)
	return n
}

// giveBack returns budget taken but not used (a short read).
func (b *bucket) giveBack(n int) {
	if n > 0 {
		b.tokens = min(b.burst, b.tokens+float64(n))
	}
}

// ready is when the bucket will hold a chunk worth moving again.
func (b *bucket) ready(now int64) int64 {
	need := min(float64(minBurst), b.burst) - b.tokens
	if need <= 0 {
		return now
	}
	return now + int64(need/b.rate*float64(time.Second))
}

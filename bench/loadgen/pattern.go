package main

import "bytes"

// The bulk modes send a deterministic byte stream: byte i of every stream is
// pattern[i mod patternPeriod]. The receiver compares what arrives with what
// must arrive at that offset, so a lost, duplicated, reordered or altered
// byte anywhere on the way is found, with its offset. The period is odd and
// not a multiple of any buffer size, so a chunk dropped or repeated whole
// shifts the stream against the pattern instead of lining up with it.
const (
	patternPeriod = 1<<20 + 4093
	// chunkSize is the largest slice handed to one write or read.
	chunkSize = 128 << 10
)

// pattern holds one period plus chunkSize bytes, so the chunk at any offset
// is one contiguous slice.
type pattern struct{ buf []byte }

// newPattern fills the pattern from a fixed xorshift generator: the same
// bytes in every process, and no short repeats for a relay bug to hide in.
func newPattern() *pattern {
	buf := make([]byte, patternPeriod+chunkSize)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range patternPeriod {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		buf[i] = byte(x >> 32)
	}
	copy(buf[patternPeriod:], buf[:chunkSize])
	return &pattern{buf: buf}
}

// at returns the n bytes (n <= chunkSize) the stream holds from offset off.
func (p *pattern) at(off int64, n int) []byte {
	i := int(off % patternPeriod)
	return p.buf[i : i+n]
}

// mismatch returns the index in got of the first byte that differs from the
// stream at offset off, or -1. len(got) must be at most chunkSize.
func (p *pattern) mismatch(off int64, got []byte) int {
	want := p.at(off, len(got))
	if bytes.Equal(want, got) {
		return -1
	}
	for i := range got {
		if got[i] != want[i] {
			return i
		}
	}
	return -1
}

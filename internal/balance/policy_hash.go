package balance

import (
	"cmp"
	"encoding/binary"
	"math"
	"net/netip"
	"slices"
)

// pointsPerWeight is how many points of the hash ring one unit of weight
// gives a backend. More points spread clients more evenly: a backend's
// share deviates from its weight's by about 1/sqrt(points), 8% at 160,
// ketama's figure (over 100 backends the extremes measured -17%, +25%).
const pointsPerWeight = 160

// maxPoints bounds the ring (12 bytes a point: 768 KiB). A pool whose
// weights sum to more than maxPoints/pointsPerWeight (409) gets fewer
// points per unit of weight, proportionally, and at least minPoints per
// backend; see newSourceHash.
const (
	maxPoints = 1 << 16
	minPoints = 16
)

// ringWalk is how many ring points a Pick looks at before it checks
// that some backend is eligible at all, so that a pool whose primaries
// are all down costs O(ringWalk + n) per Pick, not O(ring).
const ringWalk = 64

// sourceHash sends each client IP to the same backend by consistent
// hashing: a pool without one of its N backends moves only that backend's
// clients (about 1/N), a backend that is down keeps its place for when it
// comes back, and every process maps a client the same way
// (docs/DESIGN.md, "Balancing"). Pick is O(log n) plus a walk past
// ineligible backends.
type sourceHash struct {
	hashes []uint64 // the ring's points, sorted
	owners []int32  // owners[i] is the index of the backend owning hashes[i]
}

func newSourceHash(backends []*Backend) *sourceHash {
	perWeight := float64(pointsPerWeight)
	var sum int64
	for _, b := range backends {
		sum += weightOf(b)
	}
	if sum*pointsPerWeight > maxPoints {
		perWeight = float64(maxPoints) / float64(sum)
	}
	type point struct {
		hash  uint64
		owner int32
	}
	var ring []point
	for i, b := range backends {
		n := max(minPoints, int(math.Round(float64(weightOf(b))*perWeight)))
		base := hashString(b.Address)
		// Replica r is the same point in every pool the backend is in;
		// a pool that gives it fewer points drops the highest ones.
		for r := range n {
			ring = append(ring, point{mix64(base + uint64(r+1)*golden), int32(i)})
		}
	}
	// Ties between equal hashes go to the smaller address, so that the
	// order of the backends in the file does not matter.
	slices.SortFunc(ring, func(a, b point) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(backends[a.owner].Address, backends[b.owner].Address)
	})
	s := &sourceHash{hashes: make([]uint64, len(ring)), owners: make([]int32, len(ring))}
	for i, p := range ring {
		s.hashes[i], s.owners[i] = p.hash, p.owner
	}
	return s
}

func (s *sourceHash) Pick(backends []*Backend, client netip.Addr) int {
	if len(s.hashes) == 0 {
		return -1
	}
	i, _ := slices.BinarySearch(s.hashes, hashAddr(client))
	if i == len(s.hashes) {
		i = 0
	}
	prev := int32(-1)
	for k := range len(s.hashes) {
		if k == ringWalk && firstEligible(backends, 0) < 0 {
			return -1
		}
		// Consecutive points often share an owner: look at it once.
		if o := s.owners[i]; o != prev {
			if backends[o].Eligible() {
				return int(o)
			}
			prev = o
		}
		if i++; i == len(s.hashes) {
			i = 0
		}
	}
	return -1
}

// golden is 2^64 / φ, splitmix64's increment: consecutive multiples of it
// fed through mix64 make a well-spread sequence.
const golden = 0x9e3779b97f4a7c15

// mix64 is MurmurHash3's 64-bit finaliser: every input bit flips each
// output bit with probability about one half, so similar inputs (the
// replica numbers of a backend, neighbouring client IPs) land far apart
// on the ring.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// hashString is 64-bit FNV-1a of s, mixed. It is fixed, not seeded
// (unlike hash/maphash), so that the ring is the same in every process.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := range len(s) {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}

// hashAddr hashes a client IP. An IPv4-mapped IPv6 address (a dual-stack
// listener's view of an IPv4 client) hashes as the IPv4 address, so a
// client keeps its backend whichever listener it comes through. The
// zone is ignored. It allocates nothing.
func hashAddr(a netip.Addr) uint64 {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return mix64(uint64(binary.BigEndian.Uint32(b[:])) ^ 4<<32)
	}
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	return mix64(hi ^ mix64(lo^golden))
}

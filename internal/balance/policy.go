package balance

import (
	"net/netip"
	"sync/atomic"

	"github.com/pj-proxy/pj/internal/config"
)

// Policy chooses, for one new connection, the backend to try first.
//
// A policy is built once per pool (its precomputed state — a schedule, a
// hash ring — is immutable) and is called concurrently by every event loop
// for every connection: Pick must be lock-free or close to it, O(1) or
// O(log n), and allocate nothing.
//
// Eligibility (health, admin state) changes at any moment and is read
// afresh on every Pick; a policy never caches it.
type Policy interface {
	// Pick returns the index in backends of the backend a connection
	// from client should try first, among those that are Eligible, or -1
	// when none is. backends is the slice the policy was built with.
	Pick(backends []*Backend, client netip.Addr) int
}

// newPolicy returns the policy named algorithm for backends, the pool's
// primaries. backends must not change afterwards: policies keep indexes
// into it.
func newPolicy(algorithm string, backends []*Backend) Policy {
	switch algorithm {
	case config.WeightedRoundRobin:
		return newWeightedRoundRobin(backends)
	case config.LeastConn:
		return newLeastConn(backends)
	case config.RandomTwo:
		return &randomTwo{}
	case config.SourceHash:
		return newSourceHash(backends)
	default: // round-robin; config.Validate admits only the known names
		return &roundRobin{}
	}
}

// maxWeight bounds the weight a policy uses. The config sets no upper
// bound, and least-conn multiplies a weight by a connection count: under
// this bound the product cannot overflow an int64 for any count a
// process can hold (2^20 × 2^40).
const maxWeight = 1 << 20

// weightOf is b's weight clamped to [1, maxWeight]. Weight 0 (an SRV
// record may say it) counts as 1, so that a backend in the pool always
// gets a share.
func weightOf(b *Backend) int64 {
	return int64(min(max(b.Weight, 1), maxWeight))
}

// roundRobin takes the eligible backends in turn. An ineligible backend's
// turn goes to the next eligible one in ring order.
//
// Pick is O(1) while backends are eligible, O(n) in the worst case (all
// down), one atomic add.
type roundRobin struct {
	next atomic.Uint64
}

func (r *roundRobin) Pick(backends []*Backend, _ netip.Addr) int {
	n := len(backends)
	if n == 0 {
		return -1
	}
	return firstEligible(backends, int((r.next.Add(1)-1)%uint64(n)))
}

// firstEligible returns the first eligible backend from start round the
// ring, or -1.
func firstEligible(backends []*Backend, start int) int {
	j := start
	for range backends {
		if backends[j].Eligible() {
			return j
		}
		if j++; j == len(backends) {
			j = 0
		}
	}
	return -1
}

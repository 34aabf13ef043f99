package balance

import (
	"math/rand/v2"
	"net/netip"
)

// The load-aware policies compare backends by (active + 1) / weight: the
// load a backend would carry with this connection, per unit of weight,
// as HAProxy's leastconn does. The "+ 1" makes weights count on idle
// backends too: with weights 5, 1, 1 and no connections, a bare
// active/weight would tie all three at 0 and share short-lived
// connections equally; with it the heavy backend takes connections until
// it carries about five times the load of each light one. Among equal
// weights it orders exactly as active/weight does.

// lighter reports whether a is less loaded than b. It cross-multiplies
// rather than divides: (aActive+1)/aWeight < (bActive+1)/bWeight.
// weightOf bounds the weights, so the products cannot overflow.
func lighter(aActive, aWeight, bActive, bWeight int64) bool {
	return (aActive+1)*bWeight < (bActive+1)*aWeight
}

// load is what lighter compares: the backend's active connections (never
// below 0, should a decrement race ahead of its increment) and weight.
func load(b *Backend) (active, weight int64) {
	return max(b.Active.Load(), 0), weightOf(b)
}

// leastConn sends a connection to the eligible backend with the lowest
// load (see lighter); ties go round-robin (see cycle). Pick is a
// lock-free O(n) scan that stops early on an idle backend of the largest
// weight; docs/DESIGN.md ("Balancing") says why a scan and what it costs.
type leastConn struct {
	c         cycle
	maxWeight int64 // the largest weight in the pool
}

func newLeastConn(backends []*Backend) *leastConn {
	l := &leastConn{maxWeight: 1}
	for _, b := range backends {
		l.maxWeight = max(l.maxWeight, weightOf(b))
	}
	return l
}

func (l *leastConn) Pick(backends []*Backend, _ netip.Addr) int {
	start := l.c.pick(backends, len(backends), nil)
	if start < 0 {
		return -1
	}
	return leastLoaded(backends, start, l.maxWeight)
}

// leastLoaded returns the first least loaded eligible backend from start
// round the ring, or -1. maxWeight, when positive, is the largest weight
// among backends: an idle backend that heavy ends the scan.
func leastLoaded(backends []*Backend, start int, maxWeight int64) int {
	best, bestActive, bestWeight := -1, int64(0), int64(0)
	j := start
	for range backends {
		b := backends[j]
		// Load first, eligibility only for a backend that would be the
		// best so far: most of the scan then reads one atomic per
		// backend instead of three.
		if active, weight := load(b); best < 0 || lighter(active, weight, bestActive, bestWeight) {
			if b.Eligible() {
				if active == 0 && weight == maxWeight {
					return j
				}
				best, bestActive, bestWeight = j, active, weight
			}
		}
		if j++; j == len(backends) {
			j = 0
		}
	}
	return best
}

// randomDraws bounds how many random draws random-two makes to find two
// distinct eligible backends before it scans instead. With at least half
// the backends eligible, eight draws find two with probability above
// 96%; fewer eligible backends make the scan the common path, which is
// then the cheaper one anyway.
const randomDraws = 8

// randomTwo is the power of two random choices (Mitzenmacher): draw two
// distinct eligible backends at random, send the connection to the less
// loaded (see lighter). The second choice is what matters: with it the
// busiest backend's excess over the mean shrinks from log n / log log n
// to log log n, nearly least-conn's spread, at the cost of two samples
// instead of a scan.
//
// Pick is O(1) expected. math/rand/v2's top-level functions draw from a
// per-thread generator in the runtime, so concurrent Picks share nothing.
// When the draws do not find two eligible backends (few are eligible),
// Pick falls back to least-conn's O(n) scan from a random start.
type randomTwo struct{}

func (randomTwo) Pick(backends []*Backend, _ netip.Addr) int {
	n := len(backends)
	switch n {
	case 0:
		return -1
	case 1:
		return firstEligible(backends, 0)
	}
	// Draw the first eligible backend, then a second among the others:
	// drawing from n-1 and stepping over the first makes the two
	// distinct without redraws.
	first, second := -1, -1
	for range randomDraws {
		if first < 0 {
			if i := rand.IntN(n); backends[i].Eligible() {
				first = i
			}
			continue
		}
		i := rand.IntN(n - 1)
		if i >= first {
			i++
		}
		if backends[i].Eligible() {
			second = i
			break
		}
	}
	if second >= 0 {
		fActive, fWeight := load(backends[first])
		sActive, sWeight := load(backends[second])
		if lighter(sActive, sWeight, fActive, fWeight) {
			return second
		}
		return first
	}
	return anyLeastLoaded(backends)
}

// anyLeastLoaded returns one of the least loaded eligible backends, each
// of them equally likely (reservoir sampling over the ties: the k-th tie
// met replaces the choice with probability 1/k), or -1. A scan from a
// random start would instead favour the backend after a run of
// ineligible ones.
func anyLeastLoaded(backends []*Backend) int {
	best, bestActive, bestWeight, ties := -1, int64(0), int64(0), 0
	for j, b := range backends {
		active, weight := load(b)
		switch {
		case best >= 0 && lighter(bestActive, bestWeight, active, weight):
			continue // heavier
		case best >= 0 && !lighter(active, weight, bestActive, bestWeight):
			// A tie.
			if !b.Eligible() {
				continue
			}
			if ties++; rand.IntN(ties) == 0 {
				best = j
			}
		case b.Eligible():
			best, bestActive, bestWeight, ties = j, active, weight, 1
		}
	}
	return best
}

package balance

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
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

// ErrUnknownBalance is returned for a balance algorithm pj does not have.
var ErrUnknownBalance = errors.New("unknown balance algorithm")

// newPolicy returns the policy named algorithm for backends, the pool's
// primaries. backends must not change afterwards: policies keep indexes
// into it. A name config.Validate would refuse is refused here too, never
// served as some other algorithm.
func newPolicy(algorithm string, backends []*Backend) (Policy, error) {
	switch algorithm {
	case config.RoundRobin:
		return &roundRobin{}, nil
	case config.WeightedRoundRobin:
		return newWeightedRoundRobin(backends), nil
	case config.LeastConn:
		return newLeastConn(backends), nil
	case config.RandomTwo:
		return &randomTwo{}, nil
	case config.SourceHash:
		return newSourceHash(backends), nil
	}
	return nil, fmt.Errorf("balance %q: %w; expected one of %s", algorithm, ErrUnknownBalance, strings.Join(config.Balances, ", "))
}

// CheckBalance returns an error for an algorithm newPolicy refuses.
func CheckBalance(algorithm string) error {
	_, err := newPolicy(algorithm, nil)
	return err
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

// roundRobin takes the eligible backends in turn: the turns of an
// ineligible backend are skipped, not handed to its neighbour, so the
// backends left share evenly whichever are out.
//
// Pick is one atomic add while backends are eligible; see cycle.
type roundRobin struct {
	c cycle
}

func (r *roundRobin) Pick(backends []*Backend, _ netip.Addr) int {
	return r.c.pick(backends, len(backends), nil)
}

// casTries bounds how many times one Pick tries to claim a run of
// skipped turns against concurrent Picks before it settles for the
// backend it found (see cycle.skip).
const casTries = 16

// cycle hands out the turns of a repeating sequence of backends: entry k
// of a cycle of length m is backend k (round-robin) or schedule[k]
// (weighted). Every turn is taken once; a turn whose backend is
// ineligible is taken by nobody. So, however the Picks of the event
// loops interleave, each eligible backend gets exactly the turns the
// sequence gives it, and its neighbours get none of them: "in turn"
// holds over the eligible backends, not the configured ones.
type cycle struct {
	next atomic.Uint64 // the next turn
}

// pick returns the backend whose turn is next among the eligible ones,
// or -1 when none is. The common case, an eligible backend, costs one
// atomic add; skipping costs a scan of the run of ineligible entries
// and one compare-and-swap (see skip).
func (c *cycle) pick(backends []*Backend, m int, schedule []int32) int {
	if m == 0 {
		return -1
	}
	i := c.next.Add(1) - 1
	if j := entry(schedule, int(i%uint64(m))); backends[j].Eligible() {
		return j
	}
	return c.skip(backends, m, schedule)
}

func entry(schedule []int32, k int) int {
	if schedule == nil {
		return k
	}
	return int(schedule[k])
}

// skip takes the next turn of an eligible backend together with the
// turns of the ineligible ones before it, in one compare-and-swap, so
// that no concurrent Pick can take the same turn. A failed swap means
// another Pick advanced the cycle: the scan starts again from there, at
// most casTries times. The scan looks at most m entries (it stops at the
// first eligible one, so about m / eligible entries): skipping is O(m),
// paid only while backends are out.
//
// When the swaps keep failing (event loops picking at once fail all
// casTries often: tens of times in 12 000 picks), skip claims turns one
// at a time instead, each with an add that cannot fail, so the turn it
// returns is still its own. That is bounded too (casTries × m turns);
// past it, which only backends going out meanwhile make likely, the first
// eligible backend is used: a turn of unevenness, never a wrong backend.
func (c *cycle) skip(backends []*Backend, m int, schedule []int32) int {
	if firstEligible(backends, 0) < 0 {
		return -1 // O(n), and it spares a scan of the whole schedule
	}
	found := -1
	for range casTries {
		cur := c.next.Load()
		pos := int(cur % uint64(m))
		for d := range m {
			k := pos + d
			if k >= m {
				k -= m
			}
			if j := entry(schedule, k); backends[j].Eligible() {
				found = j
				if c.next.CompareAndSwap(cur, cur+uint64(d)+1) {
					return j
				}
				break
			}
		}
		if found < 0 {
			break // every entry went ineligible meanwhile
		}
	}
	if found < 0 {
		return firstEligible(backends, 0)
	}
	for range casTries * m {
		i := c.next.Add(1) - 1
		if j := entry(schedule, int(i%uint64(m))); backends[j].Eligible() {
			return j
		}
	}
	return firstEligible(backends, 0)
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

package balance

import (
	"math"
	"net/netip"
)

// maxSchedule bounds the length of a weighted round-robin schedule (one
// int32 per entry: 64 KiB). Beyond it, weights are scaled down
// proportionally; see scheduleWeights.
const maxSchedule = 1 << 14

// weightedRoundRobin spreads connections in proportion to the weights,
// smoothly, as nginx does (5, 1, 1 gives a a b a c a a), through a
// schedule computed once; Pick advances an atomic counter through it. A
// backend that is out has its entries struck out: the rest stays smooth
// and in proportion (docs/DESIGN.md, "Balancing").
type weightedRoundRobin struct {
	c        cycle
	schedule []int32 // indexes into the backends
}

func newWeightedRoundRobin(backends []*Backend) *weightedRoundRobin {
	return &weightedRoundRobin{schedule: smoothSchedule(scheduleWeights(backends))}
}

func (w *weightedRoundRobin) Pick(backends []*Backend, _ netip.Addr) int {
	return w.c.pick(backends, len(w.schedule), w.schedule)
}

// scheduleWeights returns the weights a schedule is built from: the
// backends' weights divided by their gcd (the period is then as short as
// it can be) and, when their sum would exceed maxSchedule (or the number
// of backends, if that is larger), scaled down proportionally, rounding,
// with 1 as the least weight. Scaling keeps each proportion to within
// half a unit of its scaled weight, so heavy backends keep their ratios
// closely; a backend that would scale below 1 keeps 1 and so gets more
// than its configured share (weights 100000 and 3 become 16384 and 1).
// Weights that large are rare: HAProxy caps them at 256.
func scheduleWeights(backends []*Backend) []int64 {
	ws := make([]int64, len(backends))
	var g, sum int64
	for i, b := range backends {
		ws[i] = weightOf(b)
		g = gcd(g, ws[i])
		sum += ws[i]
	}
	if g > 1 {
		sum /= g
		for i := range ws {
			ws[i] /= g
		}
	}
	if limit := int64(max(maxSchedule, len(ws))); sum > limit {
		scale := float64(limit) / float64(sum)
		for i, w := range ws {
			ws[i] = max(1, int64(math.Round(float64(w)*scale)))
		}
	}
	return ws
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// smoothSchedule is one period of nginx's smooth weighted round-robin
// (ngx_http_upstream_get_peer): every turn each backend's current weight
// grows by its weight, the largest (the first, on ties) is chosen and
// loses the total. Over a period every backend is chosen exactly weight
// times, spread as evenly as the weights allow.
//
// Done literally that costs O(period × n), which a headless service of
// thousands of endpoints makes seconds. Backends of equal weight,
// though, move in step: the one chosen is always the one of them chosen
// fewest times so far, the first on ties — they take turns in index
// order. So the turns are computed per weight class, with that class's
// next backend standing for it: O(period × distinct weights), and the
// same sequence.
func smoothSchedule(weights []int64) []int32 {
	type class struct {
		weight  int64
		members []int32 // backends of this weight, in index order
		chosen  int64   // how many times one of them was chosen
	}
	var classes []class
	of := make(map[int64]int) // weight → its class
	var total int64
	for i, w := range weights {
		total += w
		c, ok := of[w]
		if !ok {
			c = len(classes)
			of[w] = c
			classes = append(classes, class{weight: w})
		}
		classes[c].members = append(classes[c].members, int32(i))
	}
	schedule := make([]int32, 0, total)
	for turn := int64(1); turn <= total; turn++ {
		// The next member of a class has been chosen chosen/m times;
		// its current weight is then turn×weight − total×chosen/m.
		best, bestCurrent, bestIndex := -1, int64(0), int32(0)
		for c := range classes {
			cl := &classes[c]
			m := int64(len(cl.members))
			current := turn*cl.weight - total*(cl.chosen/m)
			index := cl.members[cl.chosen%m]
			if best < 0 || current > bestCurrent || current == bestCurrent && index < bestIndex {
				best, bestCurrent, bestIndex = c, current, index
			}
		}
		classes[best].chosen++
		schedule = append(schedule, bestIndex)
	}
	return schedule
}

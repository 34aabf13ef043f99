package balance

import (
	"fmt"
	"sync"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

// downSets are the outages the fairness tests put a pool of four through:
// one backend (first, middle, last), two adjacent ones (also across the
// end of the ring), two apart, three.
var downSets = [][]int{{0}, {1}, {3}, {1, 2}, {3, 0}, {2, 3}, {0, 2}, {0, 1, 2}}

// shareTolerance is how far, as a fraction of the fair share, a survivor
// may be from it: the turn-taking policies are exact (one pick of
// rounding); random-two draws and source-hash hashes, so their shares
// carry sampling noise and the ring's unevenness.
var shareTolerance = map[string]float64{
	config.RoundRobin:         0,
	config.WeightedRoundRobin: 0,
	config.LeastConn:          0,
	config.RandomTwo:          0.05,
	config.SourceHash:         0.25,
}

// withDown is four equal backends, those in down set down by hand, and
// a policy of algorithm over them.
func withDown(t *testing.T, algorithm string, down []int) ([]*Backend, Policy) {
	t.Helper()
	bs := equal(4)
	p := mustPolicy(t, algorithm, bs)
	for _, i := range down {
		bs[i].SetAdmin(AdminDown)
	}
	return bs, p
}

// TestSurvivorsShareEvenly checks every policy's fairness claim where it
// matters most: when backends are out, the ones left share the
// connections evenly, whichever are out. Connections are short (every
// backend is idle when the next one is picked), the case where a
// policy's turn order decides everything.
func TestSurvivorsShareEvenly(t *testing.T) {
	const picks = 12000
	clients := randomClients(picks)
	for _, algorithm := range config.Balances {
		for _, down := range downSets {
			t.Run(fmt.Sprintf("%s/down%v", algorithm, down), func(t *testing.T) {
				bs, p := withDown(t, algorithm, down)
				got := make([]int, len(bs))
				for k := range picks {
					got[p.Pick(bs, clients[k])]++
				}
				survivors := len(bs) - len(down)
				fair := float64(picks) / float64(survivors)
				slack := max(1, shareTolerance[algorithm]*fair)
				for i, n := range got {
					isDown := false
					for _, d := range down {
						isDown = isDown || d == i
					}
					switch {
					case isDown && n != 0:
						t.Fatalf("%v: down backend %d got %d", got, i, n)
					case !isDown && (float64(n) < fair-slack || float64(n) > fair+slack):
						t.Errorf("%d picks with %v down: %v, want each survivor at %.0f ± %.0f", picks, down, got, fair, slack)
						return
					}
				}
			})
		}
	}
}

// TestTurnsGoRoundTheSurvivors checks "in turn" literally for the
// policies that promise it: with backends out, every window of as many
// picks as there are survivors holds each survivor once.
func TestTurnsGoRoundTheSurvivors(t *testing.T) {
	for _, algorithm := range []string{config.RoundRobin, config.WeightedRoundRobin, config.LeastConn} {
		for _, down := range downSets {
			t.Run(fmt.Sprintf("%s/down%v", algorithm, down), func(t *testing.T) {
				bs, p := withDown(t, algorithm, down)
				survivors := len(bs) - len(down)
				var seq []int
				for range 10 * survivors {
					seq = append(seq, p.Pick(bs, anyClient))
				}
				for k := 0; k+survivors <= len(seq); k++ {
					seen := map[int]bool{}
					for _, i := range seq[k : k+survivors] {
						seen[i] = true
					}
					if len(seen) != survivors {
						t.Fatalf("picks %v: %v is not one turn of each of the %d survivors", seq, seq[k:k+survivors], survivors)
					}
				}
			})
		}
	}
}

// TestWeightedSurvivorsKeepTheirProportions: with weights, the backends
// left keep their proportions to one another.
func TestWeightedSurvivorsKeepTheirProportions(t *testing.T) {
	tests := []struct {
		weights []int
		down    []int
	}{
		{[]int{2, 1, 1, 2}, []int{1}},
		{[]int{2, 1, 1, 2}, []int{1, 2}},
		{[]int{3, 1, 2, 1}, []int{0}},
		{[]int{1, 5, 5, 1}, []int{1, 2}},
		{[]int{100, 1, 1}, []int{0}}, // runs of down entries longer than any bounded skip
		{[]int{1, 100, 1}, []int{1}}, // and in the middle of the ring
		{[]int{60, 60, 1, 2}, []int{0, 1}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v/down%v", tt.weights, tt.down), func(t *testing.T) {
			bs := weighted(tt.weights...)
			p := mustPolicy(t, config.WeightedRoundRobin, bs)
			sum := 0
			for i, w := range tt.weights {
				isDown := false
				for _, d := range tt.down {
					isDown = isDown || d == i
				}
				if isDown {
					bs[i].SetAdmin(AdminDown)
				} else {
					sum += w
				}
			}
			picks := sum * 200
			got := counts(t, p, bs, picks)
			for i, w := range tt.weights {
				want := 0
				if bs[i].Eligible() {
					want = w * 200
				}
				if got[i] < want-1 || got[i] > want+1 {
					t.Errorf("%d picks: %v, want backend %d at %d", picks, got, i, want)
				}
			}
		})
	}
}

// TestRoundRobinIsExactUnderConcurrentPicks: the event loops pick at the
// same time; the split among survivors stays exact.
func TestRoundRobinIsExactUnderConcurrentPicks(t *testing.T) {
	for _, algorithm := range []string{config.RoundRobin, config.WeightedRoundRobin} {
		t.Run(algorithm, func(t *testing.T) {
			bs := equal(4)
			p := mustPolicy(t, algorithm, bs)
			bs[1].SetAdmin(AdminDown)
			bs[2].SetAdmin(AdminDown)
			const pickers, each = 4, 3000
			var mu sync.Mutex
			got := make([]int, len(bs))
			var wg sync.WaitGroup
			for range pickers {
				wg.Go(func() {
					mine := make([]int, len(bs))
					for range each {
						mine[p.Pick(bs, anyClient)]++
					}
					mu.Lock()
					for i, n := range mine {
						got[i] += n
					}
					mu.Unlock()
				})
			}
			wg.Wait()
			if half := pickers * each / 2; got[0] != half || got[3] != half {
				t.Errorf("%d concurrent picks with 1 and 2 down: %v, want %d each on 0 and 3", pickers*each, got, half)
			}
		})
	}
}

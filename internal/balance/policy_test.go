package balance

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

// weighted returns backends 10.0.0.1:80, 10.0.0.2:80, … with the weights
// given, all eligible and idle.
func weighted(weights ...int) []*Backend {
	bs := make([]*Backend, len(weights))
	for i, w := range weights {
		bs[i] = &Backend{Address: fmt.Sprintf("10.0.0.%d:80", i+1), Weight: w, State: newState()}
	}
	return bs
}

// equal returns n backends of weight 1.
func equal(n int) []*Backend {
	ws := make([]int, n)
	for i := range ws {
		ws[i] = 1
	}
	return weighted(ws...)
}

var anyClient = netip.MustParseAddr("192.0.2.1")

// randomClients returns n IPv4 client addresses from a fixed seed, so that
// a failure reproduces.
func randomClients(n int) []netip.Addr {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
	}
	return out
}

// counts picks n times from one client and counts the picks per backend.
func counts(t *testing.T, p Policy, bs []*Backend, n int) []int {
	t.Helper()
	got := make([]int, len(bs))
	for range n {
		i := p.Pick(bs, anyClient)
		if i < 0 || i >= len(bs) {
			t.Fatalf("Pick = %d with %d backends", i, len(bs))
		}
		got[i]++
	}
	return got
}

func TestPolicyWithoutEligibleBackends(t *testing.T) {
	for _, algorithm := range config.Balances {
		t.Run(algorithm, func(t *testing.T) {
			if got := mustPolicy(t, algorithm, nil).Pick(nil, anyClient); got != -1 {
				t.Errorf("no backends: Pick = %d, want -1", got)
			}

			one := equal(1)
			p := mustPolicy(t, algorithm, one)
			for range 10 {
				if got := p.Pick(one, anyClient); got != 0 {
					t.Fatalf("one backend: Pick = %d, want 0", got)
				}
			}
			one[0].SetAdmin(AdminDrain)
			if got := p.Pick(one, anyClient); got != -1 {
				t.Errorf("one drained backend: Pick = %d, want -1", got)
			}

			// Large enough that every bounded walk (schedule, ring,
			// random draws) gives up before it has seen every backend.
			bs := weighted(7, 1, 300, 2, 5, 1, 1, 9, 1, 1)
			p = mustPolicy(t, algorithm, bs)
			for i, b := range bs {
				b.SetAdmin([]AdminState{AdminDrain, AdminDown}[i%2])
			}
			for _, c := range randomClients(200) {
				if got := p.Pick(bs, c); got != -1 {
					t.Fatalf("all drained or down: Pick(%v) = %d, want -1", c, got)
				}
			}
		})
	}
}

func TestPolicySkipsIneligible(t *testing.T) {
	for _, algorithm := range config.Balances {
		t.Run(algorithm, func(t *testing.T) {
			bs := weighted(1, 3, 1, 2, 1, 1)
			bs[1].SetAdmin(AdminDrain)
			bs[3].SetAdmin(AdminDown)
			p := mustPolicy(t, algorithm, bs)
			got := make([]int, len(bs))
			for _, c := range randomClients(3000) {
				got[p.Pick(bs, c)]++
			}
			if got[1] != 0 || got[3] != 0 {
				t.Errorf("picks %v: a drained or downed backend was picked", got)
			}
			if got[0] == 0 || got[2] == 0 || got[4] == 0 || got[5] == 0 {
				t.Errorf("picks %v: an eligible backend was never picked", got)
			}

			// Only one eligible: it takes everything.
			for i := range bs {
				bs[i].SetAdmin(AdminDrain)
			}
			bs[5].SetAdmin(AdminUp)
			for _, c := range randomClients(300) {
				if got := p.Pick(bs, c); got != 5 {
					t.Fatalf("only backend 5 eligible: Pick(%v) = %d", c, got)
				}
			}
		})
	}
}

func TestRoundRobinIsEven(t *testing.T) {
	bs := equal(3)
	p := mustPolicy(t, config.RoundRobin, bs)
	for i := range 9 {
		if got := p.Pick(bs, anyClient); got != i%3 {
			t.Fatalf("pick %d = %d, want %d", i, got, i%3)
		}
	}
	if got := counts(t, p, bs, 9999); !slices.Equal(got, []int{3333, 3333, 3333}) {
		t.Errorf("9999 picks: %v, want 3333 each", got)
	}
}

func TestWeightedRoundRobinIsSmooth(t *testing.T) {
	bs := weighted(5, 1, 1)
	p := mustPolicy(t, config.WeightedRoundRobin, bs)
	var seq []byte
	for range 14 {
		seq = append(seq, "abc"[p.Pick(bs, anyClient)])
	}
	// nginx's example (ngx_http_upstream_round_robin.c): the heavy
	// backend's picks are spread, not bunched.
	if string(seq) != "aabacaa"+"aabacaa" {
		t.Errorf("weights 5,1,1 give %s, want aabacaa twice", seq)
	}
}

func TestWeightedRoundRobinDistribution(t *testing.T) {
	tests := [][]int{
		{5, 1, 1},
		{1, 1, 1},
		{3, 2, 1},
		{4, 2},    // gcd 2: the period is 3
		{10, 1},   // a a a a a b a a a a a
		{2, 0, 1}, // weight 0 counts as 1
		{100, 37, 1},
	}
	for _, weights := range tests {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			bs := weighted(weights...)
			p := mustPolicy(t, config.WeightedRoundRobin, bs)
			total, heavy := 0, 0
			for _, b := range bs {
				total += int(weightOf(b))
				heavy = max(heavy, int(weightOf(b)))
			}
			// The heavy backend's runs can be no shorter than its picks
			// shared among the others' gaps; smooth means at most one
			// longer (nginx's sequence is, where one period meets the
			// next: aabacaa|aabacaa). A burst would be the whole weight.
			maxRun := (heavy+total-heavy-1)/(total-heavy) + 1
			n := total * 100
			got := make([]int, len(bs))
			run, last := 0, -1
			for k := range n {
				i := p.Pick(bs, anyClient)
				got[i]++
				if i == last {
					run++
				} else {
					run, last = 1, i
				}
				if run > maxRun {
					t.Fatalf("pick %d: backend %d %d times in a row, want at most %d", k, i, run, maxRun)
				}
				// Smooth: at every moment the heavy backend is within
				// one pick of its exact share so far.
				if want := float64((k+1)*heavy) / float64(total); float64(got[0]) > want+1 || float64(got[0]) < want-1 {
					t.Fatalf("after %d picks backend 0 has %d, want %.1f ± 1", k+1, got[0], want)
				}
			}
			for i, b := range bs {
				if want := int(weightOf(b)) * 100; got[i] != want {
					t.Errorf("%d picks: %v, want backend %d at %d", n, got, i, want)
				}
			}
		})
	}
}

// nginxSchedule is nginx's smooth weighted round-robin done literally,
// O(period × n): the reference smoothSchedule must agree with.
func nginxSchedule(weights []int64) []int32 {
	var total int64
	for _, w := range weights {
		total += w
	}
	current := make([]int64, len(weights))
	var out []int32
	for range total {
		best := 0
		for i, w := range weights {
			current[i] += w
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		out = append(out, int32(best))
	}
	return out
}

func TestSmoothScheduleIsNginxs(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 500 {
		weights := make([]int64, 1+r.IntN(12))
		for i := range weights {
			weights[i] = 1 + r.Int64N([]int64{1, 3, 10, 100}[r.IntN(4)])
		}
		if got, want := smoothSchedule(weights), nginxSchedule(weights); !slices.Equal(got, want) {
			t.Fatalf("weights %v: schedule %v, nginx's %v", weights, got, want)
		}
	}
}

func TestWeightedRoundRobinShareOfADownBackend(t *testing.T) {
	// A down backend's turns are skipped, so the others keep their
	// proportions and their order.
	bs := weighted(5, 1, 1)
	p := mustPolicy(t, config.WeightedRoundRobin, bs)
	bs[0].SetAdmin(AdminDown)
	var seq []byte
	for range 6 {
		seq = append(seq, "abc"[p.Pick(bs, anyClient)])
	}
	if string(seq) != "bcbcbc" {
		t.Errorf("weights 5,1,1 with a down give %s, want bcbcbc", seq)
	}
	bs[0].SetAdmin(AdminUp)
	bs[1].SetAdmin(AdminDown)
	if got := counts(t, p, bs, 600); got[0] != 500 || got[2] != 100 {
		t.Errorf("b down: %v, want a 500 and c 100 (5:1)", got)
	}
}

func TestWeightedRoundRobinBoundsItsSchedule(t *testing.T) {
	bs := weighted(100000, 3, 50000)
	w := newWeightedRoundRobin(bs)
	if len(w.schedule) > maxSchedule+len(bs) {
		t.Fatalf("schedule of %d entries, want at most %d", len(w.schedule), maxSchedule+len(bs))
	}
	got := counts(t, w, bs, len(w.schedule))
	if got[1] == 0 || got[0] < 19*got[2]/10 || got[0] > 21*got[2]/10 {
		t.Errorf("one period of weights 100000, 3, 50000: %v, want about 2:0:1 with the light one present", got)
	}
	// Many backends, all of weight 1: a period is one pass, whatever the cap.
	many := equal(maxSchedule + 5)
	if w := newWeightedRoundRobin(many); len(w.schedule) != len(many) {
		t.Errorf("%d backends of weight 1: schedule of %d entries", len(many), len(w.schedule))
	}
}

func TestLeastConnPicksTheLeastLoaded(t *testing.T) {
	bs := equal(4)
	for i, active := range []int64{5, 2, 7, 2} {
		bs[i].Active.Store(active)
	}
	p := mustPolicy(t, config.LeastConn, bs)
	// Backends 1 and 3 tie: they take turns.
	if got := counts(t, p, bs, 1000); !slices.Equal(got, []int{0, 500, 0, 500}) {
		t.Errorf("loads 5,2,7,2: %v, want backends 1 and 3 only, in turn", got)
	}
	bs[1].SetAdmin(AdminDrain)
	if got := counts(t, p, bs, 100); got[3] != 100 {
		t.Errorf("backend 1 drained: %v, want backend 3 always", got)
	}

	// Weighted: 4 connections on weight 3 are lighter than 1 on weight 1.
	ws := weighted(3, 1)
	ws[0].Active.Store(4)
	ws[1].Active.Store(1)
	if got := counts(t, mustPolicy(t, config.LeastConn, ws), ws, 10); got[0] != 10 {
		t.Errorf("loads 4/3 and 1/1: %v, want backend 0 always", got)
	}
}

func TestLeastConnRotatesTies(t *testing.T) {
	bs := equal(3)
	p := mustPolicy(t, config.LeastConn, bs)
	for _, active := range []int64{0, 9} {
		for _, b := range bs {
			b.Active.Store(active)
		}
		if got := counts(t, p, bs, 999); !slices.Equal(got, []int{333, 333, 333}) {
			t.Errorf("all at %d connections: %v, want 333 each, not always the first", active, got)
		}
	}
}

// hold picks n times, opening a connection on every backend picked, and
// returns the connections each backend ends with.
func hold(p Policy, bs []*Backend, n int) []int64 {
	for range n {
		bs[p.Pick(bs, anyClient)].Active.Add(1)
	}
	out := make([]int64, len(bs))
	for i, b := range bs {
		out[i] = b.Active.Load()
	}
	return out
}

func TestLeastConnWithHeldConnections(t *testing.T) {
	bs := weighted(1, 2, 3)
	got := hold(mustPolicy(t, config.LeastConn, bs), bs, 600)
	// Each ends within one connection of its weighted share.
	for i, want := range []int64{100, 200, 300} {
		if got[i] < want-1 || got[i] > want+1 {
			t.Errorf("600 held connections on weights 1,2,3: %v, want 100,200,300", got)
		}
	}
}

func TestRandomTwoPrefersTheLessLoaded(t *testing.T) {
	bs := equal(10)
	bs[3].Active.Store(1000)
	p := mustPolicy(t, config.RandomTwo, bs)
	// The most loaded backend loses every pair it is drawn in.
	if got := counts(t, p, bs, 10000); got[3] != 0 {
		t.Errorf("backend 3 loaded, the others idle: %v, want backend 3 never", got)
	}

	// Held connections: the two choices keep loads within a few of each
	// other; one random choice would spread them by ±3σ ≈ ±90.
	bs = equal(10)
	got := hold(mustPolicy(t, config.RandomTwo, bs), bs, 10000)
	if lo, hi := slices.Min(got), slices.Max(got); hi-lo > 12 {
		t.Errorf("10000 held connections on 10 backends: %v, spread %d, want at most 12", got, hi-lo)
	}

	// Weighted: weight 3 ends with about 3 times the connections.
	bs = weighted(3, 1, 1, 1)
	got = hold(mustPolicy(t, config.RandomTwo, bs), bs, 6000)
	if got[0] < 2800 || got[0] > 3200 {
		t.Errorf("6000 held connections on weights 3,1,1,1: %v, want about 3000 on the first", got)
	}

	// Two eligible out of many: the lighter one, however rarely drawn.
	bs = equal(50)
	for _, b := range bs {
		b.SetAdmin(AdminDrain)
	}
	bs[7].SetAdmin(AdminUp)
	bs[7].Active.Store(3)
	bs[40].SetAdmin(AdminUp)
	bs[40].Active.Store(1)
	if got := counts(t, p, bs, 1000); got[40] != 1000 {
		t.Errorf("two eligible of 50: %v, want the lighter (40) always", got)
	}
}

func TestSourceHashIsSticky(t *testing.T) {
	bs := equal(5)
	p := mustPolicy(t, config.SourceHash, bs)
	for _, c := range randomClients(1000) {
		first := p.Pick(bs, c)
		for range 3 {
			if got := p.Pick(bs, c); got != first {
				t.Fatalf("client %v: %d then %d", c, first, got)
			}
		}
		mapped := netip.AddrFrom16(c.As16())
		if got := p.Pick(bs, mapped); got != first {
			t.Fatalf("client %v gets %d, as %v it gets %d", c, first, mapped, got)
		}
	}

	// The ring depends on addresses, not on the order of the backends:
	// another process, or a file listing them differently, agrees.
	reversed := slices.Clone(bs)
	slices.Reverse(reversed)
	q := mustPolicy(t, config.SourceHash, reversed)
	for _, c := range randomClients(1000) {
		if a, b := bs[p.Pick(bs, c)].Address, reversed[q.Pick(reversed, c)].Address; a != b {
			t.Fatalf("client %v: %s, or %s with the backends reversed", c, a, b)
		}
	}

	// Whatever the server sees as the client: IPv6, a zone, none.
	for _, c := range []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fe80::1%eth0"), {}} {
		if got := p.Pick(bs, c); got < 0 {
			t.Errorf("client %v: Pick = %d", c, got)
		}
	}
}

func TestSourceHashIsFair(t *testing.T) {
	tests := []struct {
		weights []int
	}{
		{[]int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{[]int{1, 2, 3}},
		{[]int{1, 1, 4}},
	}
	clients := randomClients(10000)
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			bs := weighted(tt.weights...)
			p := mustPolicy(t, config.SourceHash, bs)
			got := make([]int, len(bs))
			for _, c := range clients {
				got[p.Pick(bs, c)]++
			}
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			for i, w := range tt.weights {
				want := float64(len(clients)*w) / float64(total)
				if d := float64(got[i]) - want; d > 0.2*want || d < -0.2*want {
					t.Errorf("%d clients on weights %v: %v, backend %d off its share %.0f by more than 20%%",
						len(clients), tt.weights, got, i, want)
				}
			}
		})
	}
}

func TestSourceHashMovesFewClientsWhenABackendGoes(t *testing.T) {
	const n = 10
	bs := equal(n)
	before := mustPolicy(t, config.SourceHash, bs)
	removed := 4
	rest := slices.Delete(slices.Clone(bs), removed, removed+1)
	after := mustPolicy(t, config.SourceHash, rest)

	clients := randomClients(10000)
	moved := 0
	for _, c := range clients {
		was, is := bs[before.Pick(bs, c)], rest[after.Pick(rest, c)]
		if was == is {
			continue
		}
		moved++
		if was != bs[removed] {
			t.Fatalf("client %v moved from %s, which stayed, to %s", c, was.Address, is.Address)
		}
	}
	if limit := len(clients) * 13 / 100; moved > limit {
		t.Errorf("removing 1 of %d backends moved %d of %d clients, want at most %d (1/%d + 3%%)",
			n, moved, len(clients), limit, n)
	}
	if moved == 0 {
		t.Errorf("removing a backend moved no client")
	}
}

func TestSourceHashDrainMovesOnlyItsClients(t *testing.T) {
	bs := equal(10)
	p := mustPolicy(t, config.SourceHash, bs)
	clients := randomClients(10000)
	home := make([]int, len(clients))
	for i, c := range clients {
		home[i] = p.Pick(bs, c)
	}

	const drained = 6
	bs[drained].SetAdmin(AdminDrain)
	moved := 0
	for i, c := range clients {
		got := p.Pick(bs, c)
		switch {
		case got == drained:
			t.Fatalf("client %v sent to the drained backend", c)
		case home[i] != drained && got != home[i]:
			t.Fatalf("client %v moved from %d to %d though %d is the one drained", c, home[i], got, drained)
		case got != home[i]:
			moved++
		}
	}
	if moved == 0 {
		t.Fatalf("draining backend %d moved no client", drained)
	}

	bs[drained].SetAdmin(AdminUp)
	for i, c := range clients {
		if got := p.Pick(bs, c); got != home[i] {
			t.Fatalf("after undrain client %v is on %d, was on %d", c, got, home[i])
		}
	}
}

func TestSourceHashBoundsItsRing(t *testing.T) {
	bs := weighted(1000, 1, 500)
	s := newSourceHash(bs)
	if len(s.hashes) > maxPoints+len(bs)*minPoints {
		t.Errorf("ring of %d points, want at most %d", len(s.hashes), maxPoints+len(bs)*minPoints)
	}
	got := make([]int, len(bs))
	for _, c := range randomClients(10000) {
		got[s.Pick(bs, c)]++
	}
	if got[1] == 0 || got[0] < 15*got[2]/10 || got[0] > 25*got[2]/10 {
		t.Errorf("weights 1000, 1, 500: %v, want about 2:0:1", got)
	}
}

func TestPickAllocatesNothing(t *testing.T) {
	for _, algorithm := range config.Balances {
		t.Run(algorithm, func(t *testing.T) {
			bs := weighted(5, 1, 1, 2)
			bs[0].Active.Store(3)
			bs[2].SetAdmin(AdminDrain) // the skipping paths too
			p := mustPolicy(t, algorithm, bs)
			client := netip.MustParseAddr("2001:db8::7")
			if allocs := testing.AllocsPerRun(1000, func() { p.Pick(bs, client) }); allocs != 0 {
				t.Errorf("%v allocations per Pick, want 0", allocs)
			}
		})
	}
}

func TestPickConcurrently(t *testing.T) {
	for _, algorithm := range config.Balances {
		t.Run(algorithm, func(t *testing.T) {
			bs := weighted(3, 1, 2, 1, 1)
			p := mustPolicy(t, algorithm, bs)
			clients := randomClients(64)
			var wg sync.WaitGroup
			done := make(chan struct{})
			// Admin states and loads change under the pickers' feet.
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-done:
						return
					default:
					}
					b := bs[i%len(bs)]
					b.SetAdmin([]AdminState{AdminUp, AdminDrain}[i/len(bs)%2])
					b.Active.Add(int64(i%3) - 1)
				}
			})
			var pickers sync.WaitGroup
			for g := range 8 {
				pickers.Go(func() {
					for i := range 2000 {
						b := p.Pick(bs, clients[(g+i)%len(clients)])
						if b < -1 || b >= len(bs) {
							t.Errorf("Pick = %d with %d backends", b, len(bs))
							return
						}
					}
				})
			}
			pickers.Wait()
			close(done)
			wg.Wait()
		})
	}
}

// mustPolicy is newPolicy for a known algorithm.
func mustPolicy(t testing.TB, algorithm string, backends []*Backend) Policy {
	t.Helper()
	p, err := newPolicy(algorithm, backends)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUnknownBalanceIsRefused(t *testing.T) {
	bs := equal(3)
	for _, name := range []string{"", "roundrobin", "Round-Robin", "least_conn"} {
		if p, err := newPolicy(name, bs); !errors.Is(err, ErrUnknownBalance) || p != nil {
			t.Errorf("newPolicy(%q) = %v, %v; want ErrUnknownBalance", name, p, err)
		}
		if _, err := NewPool(bs, name); !errors.Is(err, ErrUnknownBalance) || !strings.Contains(err.Error(), "expected one of round-robin") {
			t.Errorf("NewPool(%q): %v; want ErrUnknownBalance naming the algorithms", name, err)
		}
		settings := config.Default().Defaults
		settings.Balance = name
		if s, err := NewSet(context.Background(), "web", []config.Backend{{Address: "127.0.0.1:1", Weight: 1}}, settings, nil, nil); !errors.Is(err, ErrUnknownBalance) || s != nil {
			t.Errorf("NewSet with balance %q = %v, %v; want ErrUnknownBalance", name, s, err)
		}
	}
}

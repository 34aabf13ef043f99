package admission_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/admission"
)

// t0 is an arbitrary start: every test drives time by hand from it.
var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

var (
	alice = netip.MustParseAddr("192.0.2.1")
	bob   = netip.MustParseAddr("192.0.2.2")
	carol = netip.MustParseAddr("2001:db8::3")
	dave  = netip.MustParseAddr("2001:db8::4")
)

// addrN is the n-th of many distinct addresses, IPv4 and IPv6 alternately.
func addrN(n int) netip.Addr {
	if n%2 == 0 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], 0x0a000000+uint32(n/2))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
	binary.BigEndian.PutUint64(b[8:], uint64(n))
	return netip.AddrFrom16(b)
}

func TestNewClientsOff(t *testing.T) {
	if c := admission.NewClients(0, 10, 0, 0); c != nil {
		t.Fatal("NewClients with no rate and no cap is not nil")
	}
	var c *admission.Clients
	for range 3 {
		if v := c.Admit(alice, t0); v != admission.OK {
			t.Fatalf("a nil Clients said %v", v)
		}
	}
	c.Release(alice)
	if st := c.Stats(); st != (admission.ClientStats{}) {
		t.Errorf("a nil Clients has stats %+v", st)
	}
}

// attempt is one Admit at a time, with the verdict expected.
type attempt struct {
	at   int // milliseconds after t0
	want admission.Verdict
}

func TestClientsRate(t *testing.T) {
	const ok, limited = admission.OK, admission.RateLimited
	tests := []struct {
		name     string
		rate     float64
		burst    int
		attempts []attempt
	}{
		{
			name: "burst at once, then refused", rate: 2, burst: 3,
			attempts: []attempt{{0, ok}, {0, ok}, {0, ok}, {0, limited}, {0, limited}},
		},
		{
			name: "below the rate", rate: 2, burst: 1,
			attempts: []attempt{{0, ok}, {600, ok}, {1200, ok}, {1800, ok}, {2400, ok}},
		},
		{
			name: "at the rate", rate: 2, burst: 1,
			attempts: []attempt{{0, ok}, {500, ok}, {1000, ok}, {1500, ok}, {2000, ok}, {2500, ok}},
		},
		{
			name: "above the rate", rate: 2, burst: 1,
			// Every 400 ms: a refused attempt spends nothing, so every
			// other one gets through.
			attempts: []attempt{{0, ok}, {400, limited}, {800, ok}, {1200, limited}, {1600, ok}},
		},
		{
			name: "a token refills at 1/rate", rate: 4, burst: 2,
			attempts: []attempt{{0, ok}, {0, ok}, {0, limited}, {249, limited}, {250, ok}, {250, limited}},
		},
		{
			name: "idle refills up to burst only", rate: 2, burst: 3,
			attempts: []attempt{{0, ok}, {0, ok}, {0, ok}, {10000, ok}, {10000, ok}, {10000, ok}, {10000, limited}},
		},
		{
			name: "fractional rate", rate: 0.5, burst: 1,
			attempts: []attempt{{0, ok}, {1000, limited}, {1999, limited}, {2000, ok}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := admission.NewClients(tt.rate, tt.burst, 0, 0)
			for i, a := range tt.attempts {
				if got := c.Admit(alice, ms(a.at)); got != a.want {
					t.Fatalf("attempt %d at %d ms: %v, want %v", i, a.at, got, a.want)
				}
				c.Release(alice) // no cap: a no-op
			}
		})
	}
}

func TestClientsCap(t *testing.T) {
	tests := []struct {
		name  string
		max   int
		open  int // Admits in a row
		wantN int // how many are OK
	}{
		{"below", 3, 2, 2},
		{"at", 3, 3, 3},
		{"above", 3, 5, 3},
		{"one", 1, 4, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := admission.NewClients(0, 0, tt.max, 0)
			okN := 0
			for i := range tt.open {
				switch v := c.Admit(alice, ms(i)); v {
				case admission.OK:
					okN++
				case admission.OverLimit:
				default:
					t.Fatalf("Admit: %v", v)
				}
			}
			if okN != tt.wantN {
				t.Fatalf("%d admitted, want %d", okN, tt.wantN)
			}
			// Release frees exactly one slot.
			c.Release(alice)
			if v := c.Admit(alice, ms(100)); v != admission.OK {
				t.Fatalf("after a Release: %v", v)
			}
			if okN == tt.max {
				if v := c.Admit(alice, ms(100)); v != admission.OverLimit {
					t.Fatalf("a Release freed more than one slot: %v", v)
				}
			}
		})
	}
}

func TestClientsReleaseBeyondZero(t *testing.T) {
	c := admission.NewClients(0, 0, 2, 0)
	c.Admit(alice, t0)
	for range 5 {
		c.Release(alice) // one too many, and more: ignored
	}
	c.Release(bob) // never admitted: ignored
	for i, want := range []admission.Verdict{admission.OK, admission.OK, admission.OverLimit} {
		if v := c.Admit(alice, t0); v != want {
			t.Fatalf("Admit %d: %v, want %v: the count went below zero", i, v, want)
		}
	}
}

func TestClientsRateAndCap(t *testing.T) {
	c := admission.NewClients(1, 2, 1, 0)
	steps := []struct {
		do   string // "admit" or "release"
		at   int
		want admission.Verdict
	}{
		{"admit", 0, admission.OK},
		// At the cap: refused, and the attempt spent the second token.
		{"admit", 0, admission.OverLimit},
		{"release", 0, 0},
		{"admit", 0, admission.RateLimited},
		// A rate-limited attempt counts nothing: the cap is still free.
		{"admit", 1000, admission.OK},
		{"admit", 2000, admission.OverLimit},
		{"release", 2000, 0},
		{"admit", 2000, admission.RateLimited},
		{"admit", 3000, admission.OK},
	}
	for i, s := range steps {
		if s.do == "release" {
			c.Release(alice)
			continue
		}
		if v := c.Admit(alice, ms(s.at)); v != s.want {
			t.Fatalf("step %d (%s at %d ms): %v, want %v", i, s.do, s.at, v, s.want)
		}
	}
}

func TestClientsAreIndependent(t *testing.T) {
	c := admission.NewClients(1, 1, 1, 0)
	if v := c.Admit(alice, t0); v != admission.OK {
		t.Fatal(v)
	}
	if v := c.Admit(alice, t0); v != admission.RateLimited {
		t.Fatalf("alice's second: %v", v)
	}
	for _, a := range []netip.Addr{bob, carol, dave} {
		if v := c.Admit(a, t0); v != admission.OK {
			t.Fatalf("%s, after alice was limited: %v", a, v)
		}
	}
	c.Release(bob)
	if v := c.Admit(alice, ms(1000)); v != admission.OverLimit {
		t.Fatalf("bob's Release freed alice's slot: %v", v)
	}
}

func TestClientsMappedIPv4IsIPv4(t *testing.T) {
	mapped := netip.AddrFrom16(alice.As16()) // ::ffff:192.0.2.1
	c := admission.NewClients(0, 0, 1, 0)
	if v := c.Admit(alice, t0); v != admission.OK {
		t.Fatal(v)
	}
	if v := c.Admit(mapped, t0); v != admission.OverLimit {
		t.Fatalf("%s is another client than %s: %v", mapped, alice, v)
	}
	c.Release(mapped)
	if v := c.Admit(alice, t0); v != admission.OK {
		t.Fatalf("Release(%s) did not free %s's slot: %v", mapped, alice, v)
	}

	// Zones do not make clients either.
	z1, z2 := netip.MustParseAddr("fe80::1%eth0"), netip.MustParseAddr("fe80::1%eth1")
	if v := c.Admit(z1, t0); v != admission.OK {
		t.Fatal(v)
	}
	if v := c.Admit(z2, t0); v != admission.OverLimit {
		t.Fatalf("zones made two clients: %v", v)
	}
	if st := c.Stats(); st.Entries != 2 {
		t.Errorf("%d entries, want 2", st.Entries)
	}
}

// TestClientsEviction checks what goes when: idle clients whose bucket has
// refilled, then (at capacity) the one idle the longest, never one with an
// open connection.
func TestClientsEviction(t *testing.T) {
	t.Run("a refilled idle client makes room", func(t *testing.T) {
		c := admission.NewClients(1, 3, 5, 100) // a token a second, 3 at most
		c.Admit(alice, t0)
		c.Release(alice)
		c.Admit(bob, ms(500)) // alice has 2.5 tokens of 3: kept
		c.Release(bob)
		if st := c.Stats(); st.Entries != 2 || st.Evictions != 0 {
			t.Fatalf("%+v, want 2 entries, no eviction", st)
		}
		c.Admit(carol, ms(1000)) // alice is full again; bob is not
		st := c.Stats()
		if st.Entries != 2 || st.Evictions != 1 || st.Resets != 0 {
			t.Fatalf("%+v, want 2 entries after 1 eviction, no reset", st)
		}
		// Bob kept his state: 2.5 tokens at 1 s, not a fresh 3.
		for i, want := range []admission.Verdict{admission.OK, admission.OK, admission.RateLimited} {
			if v := c.Admit(bob, ms(1000)); v != want {
				t.Fatalf("bob's attempt %d: %v, want %v: bob was forgotten", i, v, want)
			}
		}
	})
	t.Run("without a rate an idle client holds nothing", func(t *testing.T) {
		c := admission.NewClients(0, 0, 1, 100)
		c.Admit(alice, t0)
		c.Release(alice)
		c.Admit(bob, t0)
		if st := c.Stats(); st.Entries != 1 || st.Evictions != 1 || st.Resets != 0 {
			t.Fatalf("%+v, want alice evicted for bob", st)
		}
	})
	t.Run("an open connection is never evicted", func(t *testing.T) {
		c := admission.NewClients(1000, 1, 1, 2)
		c.Admit(alice, t0) // held
		for i := range 100 {
			a := addrN(i)
			c.Admit(a, ms(10*i))
			c.Release(a)
		}
		if v := c.Admit(alice, ms(5000)); v != admission.OverLimit {
			t.Fatalf("alice's open connection was forgotten: %v", v)
		}
		c.Release(alice)
		if v := c.Admit(alice, ms(6000)); v != admission.OK {
			t.Fatalf("alice's Release did not find her: %v", v)
		}
	})
	t.Run("at capacity the longest idle is reset", func(t *testing.T) {
		c := admission.NewClients(1, 1, 5, 2) // refill: 1 s
		c.Admit(alice, ms(0))
		c.Release(alice)
		c.Admit(bob, ms(10))
		c.Release(bob)
		// Alice has been idle the longest; a rate-limited attempt from her
		// makes her the most recent, though.
		if v := c.Admit(alice, ms(20)); v != admission.RateLimited {
			t.Fatal(v)
		}
		c.Admit(carol, ms(30)) // full: bob goes, before his bucket refilled
		st := c.Stats()
		if st.Entries != 2 || st.Evictions != 1 || st.Resets != 1 {
			t.Fatalf("%+v, want one reset eviction", st)
		}
		if v := c.Admit(alice, ms(40)); v != admission.RateLimited {
			t.Fatalf("alice was evicted instead of bob: %v", v)
		}
		// Bob comes back with a fresh bucket (and evicts alice, the
		// longest idle now, whose bucket is not full either).
		if v := c.Admit(bob, ms(40)); v != admission.OK {
			t.Fatalf("bob was not reset: %v", v)
		}
		if st := c.Stats(); st.Resets != 2 {
			t.Fatalf("%+v, want two resets", st)
		}
	})
}

// TestClientsFullOfOpenConnections checks the decision at capacity when no
// entry can go: newcomers are admitted untracked.
func TestClientsFullOfOpenConnections(t *testing.T) {
	c := admission.NewClients(1, 1, 1, 4)
	for i := range 4 {
		if v := c.Admit(addrN(i), t0); v != admission.OK {
			t.Fatal(v)
		}
	}
	// Neither rate limited nor capped: no state to limit with.
	for range 3 {
		if v := c.Admit(alice, t0); v != admission.OK {
			t.Fatalf("an untracked client: %v", v)
		}
	}
	st := c.Stats()
	if st.Entries != 4 || st.Capacity != 4 || st.Untracked != 3 || st.Evictions != 0 {
		t.Fatalf("%+v, want 4 entries and 3 untracked", st)
	}
	c.Release(alice) // ignored: alice has no entry
	for i := range 4 {
		if v := c.Admit(addrN(i), ms(1000)); v != admission.OverLimit {
			t.Fatalf("client %d lost its count: %v", i, v)
		}
	}
	// A connection ends: its client is idle, and the next newcomer is
	// tracked again (in its place).
	c.Release(addrN(0))
	if v := c.Admit(bob, ms(2000)); v != admission.OK {
		t.Fatal(v)
	}
	if v := c.Admit(bob, ms(2000)); v == admission.OK {
		t.Fatal("bob is not tracked")
	}
	if st := c.Stats(); st.Untracked != 3 || st.Evictions != 1 {
		t.Fatalf("%+v", st)
	}
}

func TestClientsFreshBucketIsFull(t *testing.T) {
	// The bucket is filled in place (see fill); check it for extreme
	// rates and bursts.
	for _, tt := range []struct {
		rate  float64
		burst int
	}{{1e-6, 1}, {0.001, 50}, {1, 1}, {1e6, 1000}} {
		t.Run(fmt.Sprint(tt.rate, "/", tt.burst), func(t *testing.T) {
			c := admission.NewClients(tt.rate, tt.burst, 0, 0)
			for i := range tt.burst {
				if v := c.Admit(alice, t0); v != admission.OK {
					t.Fatalf("attempt %d of a burst of %d: %v", i, tt.burst, v)
				}
			}
			if v := c.Admit(alice, t0); v != admission.RateLimited {
				t.Fatalf("past the burst: %v", v)
			}
		})
	}
}

// TestClientsMemoryBound floods a table of 10 000 with a million distinct
// sources: the table stays at its capacity, the heap grows by a bounded
// amount, and clients holding connections keep their state throughout.
func TestClientsMemoryBound(t *testing.T) {
	const capacity, flood, held, maxPer = 10_000, 1_000_000, 100, 3
	n := flood
	if testing.Short() {
		n = flood / 10
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	c := admission.NewClients(10, 5, maxPer, capacity)
	holder := func(i int) netip.Addr { return addrN(flood + i) }
	for i := range held {
		for range maxPer {
			if v := c.Admit(holder(i), t0); v != admission.OK {
				t.Fatal(v)
			}
		}
	}
	now := t0
	for i := range n {
		// One new source per microsecond: no bucket refills (0.5 s)
		// before the table wraps (10 ms), the worst case for the bound.
		now = now.Add(time.Microsecond)
		a := addrN(i)
		if v := c.Admit(a, now); v != admission.OK {
			t.Fatalf("source %d: %v", i, v)
		}
		if i%3 != 0 {
			c.Release(a)
		} // else it keeps a connection until the next round

		if i%3 == 0 && i >= 3 {
			c.Release(addrN(i - 3))
		}
		if i%10_000 == 0 {
			if st := c.Stats(); st.Entries > capacity {
				t.Fatalf("after %d sources: %d entries, capacity %d", i, st.Entries, capacity)
			}
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	st := c.Stats()
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d sources: %+v; heap grew %.1f MiB", n, st, float64(grown)/(1<<20))
	if st.Entries > capacity {
		t.Errorf("%d entries, capacity %d", st.Entries, capacity)
	}
	if grown > 10<<20 {
		t.Errorf("the heap grew by %d bytes for a table of %d", grown, capacity)
	}
	if st.Untracked != 0 {
		t.Errorf("%d untracked admissions: idle entries were there to evict", st.Untracked)
	}

	// The holders survived the flood: still at their cap, and their
	// Release finds them.
	for i := range held {
		if v := c.Admit(holder(i), now); v != admission.OverLimit {
			t.Fatalf("holder %d lost its count: %v", i, v)
		}
		c.Release(holder(i))
		if v := c.Admit(holder(i), now.Add(time.Second)); v != admission.OK {
			t.Fatalf("holder %d: Release did not free a slot: %v", i, v)
		}
	}
	runtime.KeepAlive(c)
}

// TestClientsConcurrent has goroutines admit and release a few shared
// clients at once: the cap holds at every moment (checked against counts
// of the test's own), and every count is back to zero at the end.
func TestClientsConcurrent(t *testing.T) {
	const clients, maxPer, workers, rounds = 16, 3, 8, 2000
	c := admission.NewClients(1e9, 1e6, maxPer, 0)
	var open [clients]atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var mine []int
			for r := range rounds {
				i := (w*7 + r) % clients
				switch c.Admit(addrN(i), t0.Add(time.Duration(r)*time.Millisecond)) {
				case admission.OK:
					if n := open[i].Add(1); n > maxPer {
						t.Errorf("client %d has %d connections, cap %d", i, n, maxPer)
					}
					mine = append(mine, i)
				case admission.RateLimited:
					t.Error("rate limited under a rate of 1e9")
				}
				if len(mine) > 0 && r%2 == 1 {
					j := mine[0]
					mine = mine[1:]
					open[j].Add(-1)
					c.Release(addrN(j))
				}
			}
			for _, j := range mine {
				open[j].Add(-1)
				c.Release(addrN(j))
			}
		})
	}
	wg.Wait()
	for i := range clients {
		for k := range maxPer + 1 {
			want := admission.OK
			if k == maxPer {
				want = admission.OverLimit
			}
			if v := c.Admit(addrN(i), t0.Add(time.Hour)); v != want {
				t.Fatalf("client %d, admission %d after all ended: %v, want %v", i, k, v, want)
			}
		}
	}
}

func TestClientsDoNotAllocate(t *testing.T) {
	for _, tt := range []struct {
		name      string
		rate      float64
		burst     int
		maxPer    int
		addr      netip.Addr
		wantAlloc float64
	}{
		{"rate and cap, IPv4", 1e9, 1e9, 10, alice, 0},
		{"rate and cap, IPv6", 1e9, 1e9, 10, carol, 0},
		{"rate only", 1e9, 1e9, 0, alice, 0},
		{"cap only", 0, 0, 10, carol, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := admission.NewClients(tt.rate, tt.burst, tt.maxPer, 0)
			c.Admit(tt.addr, t0)
			c.Release(tt.addr)
			now := t0
			allocs := testing.AllocsPerRun(1000, func() {
				now = now.Add(time.Microsecond)
				if v := c.Admit(tt.addr, now); v != admission.OK {
					t.Fatal(v)
				}
				c.Release(tt.addr)
			})
			if allocs != tt.wantAlloc {
				t.Errorf("Admit+Release of a known client: %v allocations", allocs)
			}
		})
	}
	t.Run("new clients in a full table", func(t *testing.T) {
		const capacity = 1000
		c := admission.NewClients(1, 1, 1, capacity)
		now := t0
		i := 0
		next := func() {
			now = now.Add(time.Millisecond)
			a := addrN(i)
			i++
			c.Admit(a, now)
			c.Release(a)
		}
		for range 10 * capacity {
			next() // grow the table and its map to their size
		}
		if allocs := testing.AllocsPerRun(1000, next); allocs != 0 {
			t.Errorf("a new client in a full table: %v allocations", allocs)
		}
	})
}

func BenchmarkClients(b *testing.B) {
	b.Run("existing", func(b *testing.B) {
		c := admission.NewClients(1e9, 1e9, 1000, 0)
		now := t0
		for b.Loop() {
			now = now.Add(time.Microsecond)
			c.Admit(alice, now)
			c.Release(alice)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		// Each goroutine its own client, as event loops see different
		// clients: contention only where two land in one shard.
		c := admission.NewClients(1e9, 1e9, 1000, 0)
		var id atomic.Uint32
		b.RunParallel(func(pb *testing.PB) {
			a := addrN(int(id.Add(1)))
			now := time.Now()
			for pb.Next() {
				c.Admit(a, now)
				c.Release(a)
			}
		})
	})
	b.Run("parallel-one-client", func(b *testing.B) {
		// The worst case: every goroutine on one client, one shard.
		c := admission.NewClients(1e9, 1e9, 1<<30, 0)
		b.RunParallel(func(pb *testing.PB) {
			now := time.Now()
			for pb.Next() {
				c.Admit(alice, now)
				c.Release(alice)
			}
		})
	})
	b.Run("new-client-full-table", func(b *testing.B) {
		// A flood of new sources against a table already full of idle
		// clients whose buckets have not refilled: each evicts one.
		c := admission.NewClients(10, 5, 3, admission.DefaultCapacity)
		now := t0
		i := 0
		for ; i < 2*admission.DefaultCapacity; i++ {
			now = now.Add(time.Microsecond)
			c.Admit(addrN(i), now)
			c.Release(addrN(i))
		}
		for b.Loop() {
			now = now.Add(time.Microsecond)
			a := addrN(i)
			i++
			c.Admit(a, now)
			c.Release(a)
		}
	})
}

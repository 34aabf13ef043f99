package evloop

import (
	"math/rand/v2"
	"testing"
)

// item is what a loop times: a connection or a session.
type item struct {
	timer      Slot
	lastActive int64
	_          [40]int64 // the rest of a connection
}

// BenchmarkTimers is a loop's timer work with 10,000 connections open and
// an idle timeout of n ticks, one event a tick. TCP: an event pushes its
// connection's deadline later; one in eight closes one and opens another.
// UDP: an event only notes when its session moved; a due timer is set
// again for a session that moved since, and one in four events closes a
// session and opens another.
func BenchmarkTimers(b *testing.B) {
	const n = 10000
	rng := rand.New(rand.NewPCG(1, 2))
	ops := make([]int32, 1<<16)
	for i := range ops {
		ops[i] = int32(rng.IntN(n))
	}
	setup := func() ([]*item, *Timers[*item]) {
		items, h := make([]*item, n), new(Timers[*item])
		for i := range items {
			items[i] = &item{}
			h.Set(&items[i].timer, items[i], int64(i))
		}
		return items, h
	}
	b.Run("tcp", func(b *testing.B) {
		items, h := setup()
		for i := range b.N {
			now := int64(n + i)
			it := items[ops[i&(len(ops)-1)]]
			switch i & 7 {
			case 0:
				h.Stop(&it.timer)
				h.Set(&it.timer, it, now+n)
			case 1:
				for it, _, ok := h.PopDue(now); ok; it, _, ok = h.PopDue(now) {
					h.Set(&it.timer, it, now+n)
				}
			default:
				h.Set(&it.timer, it, now+int64(ops[(i+1)&(len(ops)-1)]))
			}
		}
	})
	b.Run("udp", func(b *testing.B) {
		items, h := setup()
		for i := range b.N {
			now := int64(n + i)
			it := items[ops[i&(len(ops)-1)]]
			it.lastActive = now
			if i&3 == 0 {
				h.Stop(&it.timer)
				h.Set(&it.timer, it, now+n)
			}
			for it, at, ok := h.First(); ok && at <= now; it, at, ok = h.First() {
				due := it.lastActive + n
				if due <= now {
					h.Stop(&it.timer) // closes; another opens
					due = now + n
				}
				h.Set(&it.timer, it, due)
			}
		}
	})
}

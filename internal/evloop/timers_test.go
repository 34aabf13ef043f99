package evloop

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestTimersAgainstAModel(t *testing.T) {
	// Random arms, moves, stops and pops of two timers each of 50
	// connections, checked against a plain map: the heap pops in deadline
	// order, holds exactly the armed timers, and every slot knows its place.
	type key struct{ conn, kind int }
	rng := rand.New(rand.NewPCG(1, 2))
	var slots [50][2]Slot
	var h Timers[key]
	model := map[key]int64{}
	for step := range 20000 {
		k := key{rng.IntN(len(slots)), rng.IntN(2)}
		slot := &slots[k.conn][k.kind]
		switch op := rng.IntN(4); {
		case op < 2:
			at := rng.Int64N(1000)
			h.Set(slot, k, at)
			model[k] = at
		case op == 2:
			h.Stop(slot)
			delete(model, k)
		default:
			_, first, ok := h.First()
			if ok != (len(model) > 0) {
				t.Fatalf("step %d: First says %v with %d armed", step, ok, len(model))
			}
			got, from, ok := h.PopDue(first)
			if !ok {
				continue
			}
			if from != &slots[got.conn][got.kind] {
				t.Fatalf("step %d: %v popped from another's slot", step, got)
			}
			if want, armed := model[got]; !armed || want != first {
				t.Fatalf("step %d: popped %v at %d, armed: %v at %d", step, got, first, armed, want)
			}
			for _, at := range model {
				if at < first {
					t.Fatalf("step %d: popped %d before %d", step, first, at)
				}
			}
			delete(model, got)
			if s := slots[got.conn][got.kind]; s != 0 {
				t.Fatalf("step %d: a popped timer is still in slot %d", step, s)
			}
		}
		if h.Len() != len(model) {
			t.Fatalf("step %d: %d timers, %d armed", step, h.Len(), len(model))
		}
		for i, e := range h.h {
			if int(*e.slot) != i+1 {
				t.Fatalf("step %d: timer %d thinks it is at %d", step, i, *e.slot-1)
			}
			if i > 0 && h.h[(i-1)/2].at > e.at {
				t.Fatalf("step %d: heap order broken at %d", step, i)
			}
		}
		if _, _, ok := h.PopDue(-1); ok {
			t.Fatalf("step %d: a timer was due before every deadline", step)
		}
	}
}

func TestWaitMillis(t *testing.T) {
	const ms = int64(time.Millisecond)
	for _, tc := range []struct {
		at, now int64
		want    int
	}{
		{at: 5 * ms, now: 5 * ms, want: 0},
		{at: 5 * ms, now: 6 * ms, want: 0},
		{at: 5*ms + 1, now: 5 * ms, want: 1},
		{at: 7 * ms, now: 5 * ms, want: 2},
		{at: 7*ms + 1, now: 5 * ms, want: 3},
	} {
		if got := WaitMillis(tc.at, tc.now); got != tc.want {
			t.Errorf("WaitMillis(%d, %d) = %d, want %d", tc.at, tc.now, got, tc.want)
		}
	}
}

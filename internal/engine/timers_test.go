//go:build linux

package engine

import (
	"math/rand/v2"
	"testing"
)

func TestTimerHeapAgainstAModel(t *testing.T) {
	// Random arms, moves, stops and pops of timers of 50 connections,
	// checked against a plain map: the heap pops in deadline order, holds
	// exactly the armed timers, and every connection knows its place.
	rng := rand.New(rand.NewPCG(1, 2))
	conns := make([]*conn, 50)
	for i := range conns {
		conns[i] = &conn{}
	}
	type key struct {
		c    *conn
		kind timerKind
	}
	var h timerHeap
	model := map[key]int64{}
	for step := range 20000 {
		c, kind := conns[rng.IntN(len(conns))], timerKind(rng.IntN(int(timerKinds)))
		switch op := rng.IntN(4); {
		case op < 2:
			at := rng.Int64N(1000)
			h.set(c, kind, at)
			model[key{c, kind}] = at
		case op == 2:
			h.stop(c, kind)
			delete(model, key{c, kind})
		case len(h) > 0:
			e := h.pop()
			want, ok := model[key{e.c, e.kind}]
			if !ok || want != e.at {
				t.Fatalf("step %d: popped %d, armed: %v at %d", step, e.at, ok, want)
			}
			for _, at := range model {
				if at < e.at {
					t.Fatalf("step %d: popped %d before %d", step, e.at, at)
				}
			}
			delete(model, key{e.c, e.kind})
		}
		if len(h) != len(model) {
			t.Fatalf("step %d: %d entries, %d armed", step, len(h), len(model))
		}
		for i, e := range h {
			if int(e.c.timer[e.kind]) != i+1 {
				t.Fatalf("step %d: entry %d thinks it is at %d", step, i, e.c.timer[e.kind]-1)
			}
			if i > 0 && h[(i-1)/2].at > e.at {
				t.Fatalf("step %d: heap order broken at %d", step, i)
			}
		}
	}
}

package testutil

import (
	"fmt"
	"runtime/metrics"
	"testing"
	"time"
)

// What one input of a fuzz target may cost. More is a finding, as a
// panic is: a parser that takes a second or 64 MiB for one input is one
// an attacker can use to exhaust pj.
const (
	FuzzTime  = time.Second
	FuzzAlloc = 64 << 20
)

// hangFactor is how many times FuzzTime an input may run before the
// process is stopped: a hang never returns to be judged, so a watchdog
// crashes the fuzzing worker, which makes the fuzzer keep the input.
const hangFactor = 10

// WithinBudget runs f, one input of a fuzz target, and fails t if it took
// longer than FuzzTime or allocated more than FuzzAlloc bytes. Under the
// race detector, which slows everything down, the time allowed is ten
// times longer.
func WithinBudget(t testing.TB, f func()) {
	t.Helper()
	if took, limit := within(t, f); took > limit {
		t.Errorf("one input took %s (the budget is %s)", took.Round(time.Millisecond), limit)
	}
}

// WithinMemory is WithinBudget for a test that feeds one large input on
// purpose: the same bound on memory, but on time only the watchdog's (a
// hang), since a test's timing depends on the machine's load, not on the
// code alone.
func WithinMemory(t testing.TB, f func()) {
	t.Helper()
	within(t, f)
}

// within runs f under the watchdog and the memory budget, and returns how
// long it took and the time budget.
func within(t testing.TB, f func()) (took, limit time.Duration) {
	t.Helper()
	limit = FuzzTime
	if raceEnabled {
		limit *= 10
	}
	watchdog := time.AfterFunc(hangFactor*limit, func() {
		panic(fmt.Sprintf("%s: one input ran for more than %s", t.Name(), hangFactor*limit))
	})
	defer watchdog.Stop()
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(sample)
	before := sample[0].Value.Uint64()
	start := time.Now()
	f()
	took = time.Since(start)
	metrics.Read(sample)
	if alloc := sample[0].Value.Uint64() - before; alloc > FuzzAlloc {
		t.Errorf("one input allocated %d MiB (the budget is %d MiB)", alloc>>20, FuzzAlloc>>20)
	}
	return took, limit
}

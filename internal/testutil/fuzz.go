package testutil

import (
	"fmt"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// What one input of a fuzz target may cost. More is a finding, as a
// panic is: a parser that takes a second or 64 MiB for one input is one
// an attacker can use to exhaust pj.
const (
	FuzzTime  = time.Second
	FuzzAlloc = 64 << 20
)

// hangAfter is how long, by the clock, an input may run before the process
// is stopped: a hang never returns to be judged, so a watchdog crashes the
// fuzzing worker, which makes the fuzzer keep the input. It is generous:
// a fuzzer run at low priority on a busy machine may wait long for a CPU.
const hangAfter = time.Minute

// WithinBudget runs f, one input of a fuzz target, and fails t if it used
// more than FuzzTime of CPU or allocated more than FuzzAlloc bytes. Time is
// the CPU time of the thread that runs f (f is held on one), not the
// clock's: a fuzzer at nice 19 beside a build may wait seconds for a CPU
// without the input being any slower. Under the race detector, which slows
// everything down, ten times more is allowed.
func WithinBudget(t testing.TB, f func()) {
	t.Helper()
	limit, hang := budgetTimes()
	within(t, f, limit, FuzzAlloc, hang)
}

// WithinMemory is WithinBudget without its bound on time, for a test that
// feeds one large input on purpose, where time depends on the machine
// (the race detector, other processes) more than on the code: the same
// bound on memory, and the watchdog for hangs.
func WithinMemory(t testing.TB, f func()) {
	t.Helper()
	_, hang := budgetTimes()
	within(t, f, 0, FuzzAlloc, hang)
}

func budgetTimes() (limit, hang time.Duration) {
	if raceEnabled {
		return 10 * FuzzTime, 5 * hangAfter
	}
	return FuzzTime, hangAfter
}

// within runs f on one thread, under a watchdog that panics after hang,
// and fails t if f used more than cpu of CPU time (0: no bound) or
// allocated more than alloc bytes.
func within(t testing.TB, f func(), cpu time.Duration, alloc uint64, hang time.Duration) {
	t.Helper()
	watchdog := time.AfterFunc(hang, func() {
		panic(fmt.Sprintf("%s: one input ran for more than %s", t.Name(), hang))
	})
	defer watchdog.Stop()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(sample)
	before := sample[0].Value.Uint64()
	start := threadCPU()
	f()
	took := threadCPU() - start
	metrics.Read(sample)
	if n := sample[0].Value.Uint64() - before; n > alloc {
		t.Errorf("one input allocated %d MiB (the budget is %d MiB)", n>>20, alloc>>20)
	}
	if cpu > 0 && took > cpu {
		t.Errorf("one input took %s of CPU (the budget is %s)", took.Round(time.Millisecond), cpu)
	}
}

// threadCPU is the CPU time the calling thread has used.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0 // no clock: nothing is judged too slow
	}
	return time.Duration(ts.Nano())
}

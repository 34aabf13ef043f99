package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of the connection loop besides the deadline.
const (
	maxCycles = 1 << 24 // per worker
	// errorPause keeps a worker whose target refuses from spinning.
	errorPause = 10 * time.Millisecond
	// cycleTimeout bounds one connect-echo-close cycle.
	cycleTimeout = 5 * time.Second
	// maxErrorTimes bounds how many failure times a run reports.
	maxErrorTimes = 1000
)

// runConn measures connection set-up and tear-down: cfg.connWorkers workers
// each loop connect → send 1 byte → read its echo → close for cfg.duration,
// or until cfg.count cycles (when positive) have been made. The time of
// every failed cycle is reported (error_times_unix_ms, the first
// maxErrorTimes), so that a caller can tell when the failures happened.
func runConn(ctx context.Context, cfg *runConfig, r *result) error {
	return runCycles(ctx, cfg, r, connCycle)
}

// runConnPaced is runConn at a steady pace, cfg.connRate cycles per
// second over all workers: a load the target sustains, so the times are a
// connection's own rather than those of a queue at saturation (what a
// pool of warm connections buys shows here: at saturation every
// connection still costs the target a backend connection). A cycle's time
// starts when its turn comes.
func runConnPaced(ctx context.Context, cfg *runConfig, r *result) error {
	t := time.NewTicker(time.Second / time.Duration(cfg.connRate))
	defer t.Stop()
	cfg.pace = t.C
	r.set("conn_rate", cfg.connRate)
	return runCycles(ctx, cfg, r, connCycle)
}

// runCycles runs cycle in cfg.connWorkers workers as runConn describes,
// and reports its figures.
func runCycles(ctx context.Context, cfg *runConfig, r *result, cycle func(context.Context, *runConfig) error) error {
	before, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	start := time.Now()
	deadline := start.Add(cfg.duration)
	outs := make([]tally, cfg.connWorkers)
	var claimed atomic.Int64 // cycles begun, against cfg.count
	var wg sync.WaitGroup
	for w := range outs {
		wg.Go(func() {
			o := newTally()
			for i := 0; i < maxCycles && time.Now().Before(deadline); i++ {
				if cfg.count > 0 && claimed.Add(1) > int64(cfg.count) {
					break
				}
				if cfg.pace != nil {
					select {
					case <-cfg.pace:
					case <-time.After(time.Until(deadline)):
						continue // the loop ends: past the deadline
					}
				}
				t0 := time.Now()
				if err := cycle(ctx, cfg); err != nil {
					o.fail(err)
					continue
				}
				o.samples = append(o.samples, time.Since(t0))
			}
			o.end = time.Now()
			outs[w] = o
		})
	}
	wg.Wait()
	after, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}

	t := sum(outs, start)
	all, nerr, firstErr := t.samples, t.errors, t.firstErr
	if len(all) == 0 {
		return fmt.Errorf("no connection cycle completed (%d failed, the first: %w)", nerr, firstErr)
	}
	elapsed := t.end.Sub(start).Seconds()
	l := summarise(all)
	cpu := after - before
	r.set("cps", float64(len(all))/elapsed)
	r.set("p50_us", l.p50)
	r.set("p99_us", l.p99)
	r.set("errors", nerr)
	r.setCPU("cpu_s_per_1k_conn", cpu*1000/float64(len(all)), cfg.measured())
	r.set("conns_ok", len(all))
	r.set("workers", cfg.connWorkers)
	r.set("elapsed_s", elapsed)
	r.setCPU("cpu_s", cpu, cfg.measured())
	if firstErr != nil {
		r.set("first_error", firstErr.Error())
	}
	r.set("error_times_unix_ms", t.errorTimes[:min(len(t.errorTimes), maxErrorTimes)])
	return nil
}

// tally is what the workers of a cycling mode (conn, sni, tlsfull,
// tlsresume) saw: the time each completed cycle took, and the failures.
type tally struct {
	samples    []time.Duration
	errors     int
	errorTimes []int64 // Unix milliseconds of the first maxErrorTimes failures
	firstErr   error
	end        time.Time // when the worker stopped
}

func newTally() tally { return tally{samples: make([]time.Duration, 0, 1<<12)} }

// fail records a failed cycle, then pauses: a failing target is not
// hammered.
func (o *tally) fail(err error) {
	o.errors++
	if len(o.errorTimes) < maxErrorTimes {
		o.errorTimes = append(o.errorTimes, time.Now().UnixMilli())
	}
	if o.firstErr == nil {
		o.firstErr = err
	}
	time.Sleep(errorPause)
}

// sum adds up the workers' tallies of a run that started at start: the
// first error of the first worker that had one, failure times in order,
// and the last worker's end.
func sum(outs []tally, start time.Time) tally {
	t := tally{errorTimes: []int64{}, end: start}
	for _, o := range outs {
		t.samples = append(t.samples, o.samples...)
		t.errors += o.errors
		t.errorTimes = append(t.errorTimes, o.errorTimes...)
		if t.firstErr == nil {
			t.firstErr = o.firstErr
		}
		if o.end.After(t.end) {
			t.end = o.end
		}
	}
	slices.Sort(t.errorTimes)
	return t
}

// connCycle is one connect → 1-byte echo → close.
func connCycle(ctx context.Context, cfg *runConfig) error {
	c, err := cfg.dial(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(cycleTimeout)); err != nil {
		return err
	}
	if _, err := c.Write([]byte{'c'}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("read the echo: %w", err)
	}
	if b[0] != 'c' {
		return errors.New("the echo came back altered")
	}
	return c.Close()
}

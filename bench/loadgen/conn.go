package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	// cycleTimeout bounds one cycle's exchange.
	cycleTimeout = 5 * time.Second
	// maxErrorTimes bounds how many failure times a run reports.
	maxErrorTimes = 1000
)

// The cycling modes (conn, connpaced, sni, tlsfull, tlsresume) measure
// connection set-up and tear-down: cfg.connWorkers workers each loop
// connect → exchange → close for cfg.duration, or until cfg.count cycles
// (when positive) have begun. With cfg.pace the cycles start at
// cfg.connRate per second over all workers: a load the target sustains,
// so the times are a connection's own rather than those of a queue at
// saturation (what a pool of warm connections buys shows there: at
// saturation every connection still costs the target a backend
// connection); a cycle's time then starts when its turn comes. When each
// failed cycle failed, and when it began, are reported
// (error_times_unix_ms and error_starts_unix_ms, pair by pair, the first
// maxErrorTimes), so that a caller can tell what a failure was in flight
// through: on a loaded machine a failure may be seen long after its cause.

// cycling reports whether mode is one of the cycling modes: those that
// take -count and -pace.
func cycling(mode string) bool {
	return slices.Contains([]string{"conn", "connpaced", "sni", "tlsfull", "tlsresume"}, mode)
}

// A cycler is how a worker makes its cycles: dial opens a connection to
// the target (its handshake included), exchange does a cycle's bytes on
// it.
type cycler struct {
	dial     func(context.Context) (net.Conn, error)
	exchange func(net.Conn) error
}

// cycle makes one cycle: dial, the exchange within cycleTimeout, close.
func (cy cycler) cycle(ctx context.Context) error {
	c, err := cy.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(cycleTimeout)); err != nil {
		return err
	}
	if err := cy.exchange(c); err != nil {
		return err
	}
	return c.Close()
}

// echoByte is the exchange of conn and of the TLS handshake modes: one
// byte, and its echo.
func echoByte(b byte) func(net.Conn) error {
	return func(c net.Conn) error {
		if _, err := c.Write([]byte{b}); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		var got [1]byte
		if _, err := io.ReadFull(c, got[:]); err != nil {
			return fmt.Errorf("read the echo: %w", err)
		}
		if got[0] != b {
			return errors.New("the echo came back altered")
		}
		return nil
	}
}

// cycleFigures names what a cycling mode reports.
type cycleFigures struct {
	rate   string // cycles per second
	cpu    string // the target's CPU seconds per 1000 cycles
	done   string // cycles completed
	cycles string // what a cycle is, for an error
}

var (
	connFigures      = cycleFigures{"cps", "cpu_s_per_1k_conn", "conns_ok", "connection cycle"}
	handshakeFigures = cycleFigures{"hps", "cpu_s_per_1k_hs", "handshakes", "handshake"}
)

// runConn is conn and connpaced: connect → 1 byte → its echo → close.
func runConn(ctx context.Context, cfg *runConfig, r *result) error {
	_, err := runCycles(ctx, cfg, r, connFigures, func() cycler {
		return cycler{dial: cfg.dial, exchange: echoByte('c')}
	})
	return err
}

// runCycles runs cfg.connWorkers workers, each making its cycles with the
// cycler newCycler gives it, as the cycling modes do; it reports their
// figures and returns how many cycles completed.
func runCycles(ctx context.Context, cfg *runConfig, r *result, names cycleFigures, newCycler func() cycler) (int, error) {
	if cfg.pace {
		r.set("conn_rate", cfg.connRate)
	}
	outs := make([]tally, cfg.connWorkers)
	var claimed atomic.Int64 // cycles begun, against cfg.count
	w, err := cfg.measure(func(deadline time.Time) error {
		var pace <-chan time.Time // the turns, from the window's start
		if cfg.pace {
			t := time.NewTicker(time.Second / time.Duration(cfg.connRate))
			defer t.Stop()
			pace = t.C
		}
		var wg sync.WaitGroup
		for i := range outs {
			wg.Go(func() {
				cy := newCycler()
				o := newTally()
				for n := 0; n < maxCycles && time.Now().Before(deadline); n++ {
					if cfg.count > 0 && claimed.Add(1) > int64(cfg.count) {
						break
					}
					if pace != nil {
						select {
						case <-pace:
						case <-time.After(time.Until(deadline)):
							continue // the loop ends: past the deadline
						}
					}
					t0 := time.Now()
					if err := cy.cycle(ctx); err != nil {
						o.fail(err, t0)
						continue
					}
					o.samples = append(o.samples, time.Since(t0))
				}
				outs[i] = o
			})
		}
		wg.Wait()
		return nil
	})
	if err != nil {
		return 0, err
	}
	t := sum(outs)
	n := len(t.samples)
	if n == 0 {
		return 0, fmt.Errorf("no %s completed (%d failed, the first: %w)", names.cycles, t.errors, t.firstErr)
	}
	l := summarise(t.samples)
	r.set(names.rate, float64(n)/w.seconds())
	r.set("p50_us", l.p50)
	r.set("p99_us", l.p99)
	r.set("errors", t.errors)
	r.setCPU(names.cpu, w.cpu*1000/float64(n), cfg.measured())
	r.set(names.done, n)
	r.set("workers", cfg.connWorkers)
	r.setWindow(cfg, w)
	if t.firstErr != nil {
		r.set("first_error", t.firstErr.Error())
	}
	kept := t.failures[:min(len(t.failures), maxErrorTimes)]
	times, starts := make([]int64, 0, len(kept)), make([]int64, 0, len(kept))
	for _, f := range kept {
		times, starts = append(times, f.at), append(starts, f.began)
	}
	r.set("error_times_unix_ms", times)
	r.set("error_starts_unix_ms", starts)
	return n, nil
}

// tally is what a worker of a cycling mode saw: the time each completed
// cycle took, and the failures.
type tally struct {
	samples  []time.Duration
	errors   int
	failures []failure // the first maxErrorTimes
	firstErr error
}

// failure is when a failed cycle began and when it failed, in Unix
// milliseconds.
type failure struct{ began, at int64 }

func newTally() tally { return tally{samples: make([]time.Duration, 0, 1<<12)} }

// fail records a failed cycle, then pauses: a failing target is not
// hammered.
func (o *tally) fail(err error, began time.Time) {
	o.errors++
	if len(o.failures) < maxErrorTimes {
		o.failures = append(o.failures, failure{began: began.UnixMilli(), at: time.Now().UnixMilli()})
	}
	if o.firstErr == nil {
		o.firstErr = err
	}
	time.Sleep(errorPause)
}

// sum adds up the workers' tallies: the first error of the first worker
// that had one, and the failures in the order they happened.
func sum(outs []tally) tally {
	var t tally
	for _, o := range outs {
		t.samples = append(t.samples, o.samples...)
		t.errors += o.errors
		t.failures = append(t.failures, o.failures...)
		if t.firstErr == nil {
			t.firstErr = o.firstErr
		}
	}
	slices.SortFunc(t.failures, func(a, b failure) int { return cmp.Compare(a.at, b.at) })
	return t
}

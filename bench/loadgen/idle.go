package main

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of the idle mode.
const (
	idleDialers = 16 // connections opened (and checked) in parallel
	// The target has settled when its descriptor count has not changed
	// for settleStable polls settlePoll apart; it gets settleMax.
	settlePoll   = 250 * time.Millisecond
	settleStable = 4
	settleMax    = 30 * time.Second
	// After closing, the target gets drainMax to give its descriptors
	// back (a leak shows as fd_after_close above fd_before).
	drainMax = 20 * time.Second
	// drainSlack is how many descriptors more than before may stay open
	// after closing without a warning: spare pipes, cached sockets.
	drainSlack = 64
)

// runIdle measures what idle connections cost a target: it opens
// cfg.idleConns connections, does one tiny echo on each (so the proxy has
// really connected to the backend), waits for the target to settle, and
// reads its memory and descriptors against a reading taken before.
func runIdle(ctx context.Context, cfg *runConfig, r *result) error {
	want := cfg.idleConns
	var before usage
	if cfg.measured() {
		var err error
		if before, err = cfg.proc.measure(cfg.roots, true, true); err != nil {
			return fmt.Errorf("target before: %w", err)
		}
	}
	backendBefore := cfg.backendFDs()

	conns := make([]net.Conn, want)
	defer closeAll(conns)
	opened, openErr := forEachParallel(want, func(i int) error {
		c, err := cfg.dial(ctx)
		if err != nil {
			return err
		}
		conns[i] = c
		return tinyEcho(c, 'i')
	})
	if opened == 0 {
		return fmt.Errorf("no connection could be opened: %w", openErr)
	}

	settle := time.Now()
	var after usage
	if cfg.measured() {
		var err error
		if after, err = cfg.waitSettled(ctx); err != nil {
			return err
		}
	}
	settleS := time.Since(settle).Seconds()
	backendAfter := cfg.backendFDs()

	if cfg.idleHold > 0 {
		if err := sleepCtx(ctx, cfg.idleHold); err != nil {
			return err
		}
		r.set("hold_s", cfg.idleHold.Seconds())
	}
	// Are they all still there? One more echo on each.
	held, heldErr := forEachParallel(want, func(i int) error {
		if conns[i] == nil {
			return fmt.Errorf("connection %d was never opened", i)
		}
		return tinyEcho(conns[i], 'k')
	})
	closeAll(conns)
	clear(conns)

	n := float64(opened)
	r.set("held", held)
	if cfg.measured() {
		r.set("kib_per_conn", float64(after.pssKiB-before.pssKiB)/n)
		r.set("fds_per_conn", float64(after.fds-before.fds)/n)
	} else {
		r.set("kib_per_conn", nil)
		r.set("fds_per_conn", nil)
	}
	r.set("wanted", want)
	r.set("opened", opened)
	if cfg.measured() {
		r.set("fd_before", before.fds)
		r.set("fd_after", after.fds)
		r.set("pss_before_kib", before.pssKiB)
		r.set("pss_after_kib", after.pssKiB)
		r.set("procs_after", after.procs)
	}
	if backendBefore >= 0 && backendAfter >= 0 {
		r.set("backend_fd_delta", backendAfter-backendBefore)
	}
	r.set("settle_s", settleS)

	var warnings []string
	if openErr != nil {
		warnings = append(warnings, fmt.Sprintf("%d of %d connections failed to open: %v", want-opened, want, openErr))
	}
	if held < want {
		warnings = append(warnings, fmt.Sprintf("only %d of %d connections were still open at the end: %v", held, want, heldErr))
	}
	if cfg.measured() {
		if perConn := float64(after.fds-before.fds) / n; perConn < 1.5 {
			warnings = append(warnings, fmt.Sprintf("the target's descriptors grew by only %.2f per connection: it may not hold them", perConn))
		}
		left, drainS, err := cfg.waitDrained(ctx, before.fds)
		if err != nil {
			return err
		}
		r.set("fd_after_close", left)
		r.set("drain_s", drainS)
		if left > before.fds+drainSlack {
			warnings = append(warnings, fmt.Sprintf("%d descriptors more than before were still open %.0fs after closing", left-before.fds, drainS))
		}
	}
	if len(warnings) > 0 {
		r.set("warning", fmt.Sprint(warnings))
	}
	return nil
}

// tinyEcho sends one byte and reads it back, within replyWait.
func tinyEcho(c net.Conn, b byte) error {
	if err := c.SetDeadline(time.Now().Add(replyWait)); err != nil {
		return err
	}
	if err := echoByte(b)(c); err != nil {
		return err
	}
	return c.SetDeadline(time.Time{})
}

// forEachParallel runs f(0..n-1) on idleDialers goroutines and returns how
// many succeeded and the first error.
func forEachParallel(n int, f func(int) error) (int, error) {
	var (
		next, ok atomic.Int64
		mu       sync.Mutex
		first    error
		wg       sync.WaitGroup
	)
	for range idleDialers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("connection %d: %w", i, err)
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	return int(ok.Load()), first
}

// waitSettled polls the target's descriptor count until it stops changing
// (or settleMax passes), then reads descriptors and memory.
func (cfg *runConfig) waitSettled(ctx context.Context) (usage, error) {
	limit := time.Now().Add(settleMax)
	prev, stable := -1, 0
	for stable < settleStable && time.Now().Before(limit) {
		u, err := cfg.proc.measure(cfg.roots, true, false)
		if err != nil {
			return usage{}, fmt.Errorf("target while settling: %w", err)
		}
		if u.fds == prev {
			stable++
		} else {
			prev, stable = u.fds, 0
		}
		if err := sleepCtx(ctx, settlePoll); err != nil {
			return usage{}, err
		}
	}
	u, err := cfg.proc.measure(cfg.roots, true, true)
	if err != nil {
		return usage{}, fmt.Errorf("target after opening: %w", err)
	}
	return u, nil
}

// waitDrained polls, after the connections are closed, until the target's
// descriptors are back to baseline or have stopped falling (a proxy may keep
// a few spare pipes or sockets), or drainMax passes; it returns the last
// count and the time it took.
func (cfg *runConfig) waitDrained(ctx context.Context, baseline int) (int, float64, error) {
	start := time.Now()
	prev, stable := -1, 0
	for {
		u, err := cfg.proc.measure(cfg.roots, true, false)
		if err != nil {
			return 0, 0, fmt.Errorf("target after closing: %w", err)
		}
		if u.fds == prev {
			stable++
		} else {
			prev, stable = u.fds, 0
		}
		if u.fds <= baseline || stable >= settleStable || time.Since(start) > drainMax {
			return u.fds, time.Since(start).Seconds(), nil
		}
		if err := sleepCtx(ctx, settlePoll); err != nil {
			return 0, 0, err
		}
	}
}

// backendFDs counts the backend's descriptors, -1 if unknown.
func (cfg *runConfig) backendFDs() int {
	if cfg.backendPID <= 0 {
		return -1
	}
	n, err := cfg.proc.fdCount(cfg.backendPID)
	if err != nil {
		return -1
	}
	return n
}

// sleepCtx sleeps for d unless ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

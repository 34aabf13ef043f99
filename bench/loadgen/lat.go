package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// Bounds of the ping-pong loops besides the deadline.
const (
	warmRounds  = 10      // echoes per connection before timing starts
	maxRequests = 1 << 32 // per connection; a few seconds is far below
)

// runLat measures request/response latency: each of n persistent
// connections sends cfg.msgSize bytes and waits for their echo, one at a
// time, for cfg.duration.
func runLat(ctx context.Context, cfg *runConfig, r *result, n int) error {
	if cfg.msgSize < 16 {
		return fmt.Errorf("message size %d: want at least 16 bytes", cfg.msgSize)
	}
	conns := make([]*net.TCPConn, n)
	defer closeAll(conns)
	for i := range conns {
		c, err := cfg.dial(ctx)
		if err != nil {
			return fmt.Errorf("open connection %d: %w", i, err)
		}
		conns[i] = c
	}
	// Warm up: the proxy has dialled the backend and every buffer and
	// code path is touched before the clock starts.
	for i, c := range conns {
		if err := pingPong(c, cfg.msgSize, warmRounds, time.Now().Add(replyWait), nil); err != nil {
			return fmt.Errorf("warm up connection %d: %w", i, err)
		}
	}

	before, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	start := time.Now()
	deadline := start.Add(cfg.duration)
	samples := make([][]time.Duration, n)
	ends := make([]time.Time, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			s := make([]time.Duration, 0, 1<<14)
			errs[i] = pingPong(c, cfg.msgSize, maxRequests, deadline, &s)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("connection %d: %w", i, errs[i])
			}
			samples[i], ends[i] = s, time.Now()
		})
	}
	wg.Wait()
	after, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	all := slices.Concat(samples...)
	if len(all) == 0 {
		return errors.New("no request completed")
	}
	elapsed := slices.MaxFunc(ends, time.Time.Compare).Sub(start).Seconds()
	l := summarise(all)
	cpu := after - before
	r.set("p50_us", l.p50)
	r.set("p99_us", l.p99)
	r.set("p999_us", l.p999)
	r.set("rps", float64(len(all))/elapsed)
	r.setCPU("cpu_us_per_req", cpu*1e6/float64(len(all)), cfg.measured())
	r.set("requests", len(all))
	r.set("conns", n)
	r.set("msg_bytes", cfg.msgSize)
	r.set("elapsed_s", elapsed)
	r.setCPU("cpu_s", cpu, cfg.measured())
	return nil
}

// pingPong sends up to rounds messages of size bytes on c, each after the
// echo of the one before, until deadline; each message carries its number,
// and an echo that differs is an error. With samples set it records each
// round trip, and stops at the deadline; without, the rounds are a warm-up
// that must all complete before it.
func pingPong(c *net.TCPConn, size, rounds int, deadline time.Time, samples *[]time.Duration) error {
	if err := c.SetDeadline(deadline.Add(replyWait)); err != nil {
		return err
	}
	msg := bytes.Repeat([]byte{'p'}, size)
	got := make([]byte, size)
	for seq := range rounds {
		if samples != nil && !time.Now().Before(deadline) {
			return nil
		}
		binary.BigEndian.PutUint64(msg[size-8:], uint64(seq))
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("write message %d: %w", seq, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("read echo %d: %w", seq, err)
		}
		rtt := time.Since(t0)
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("echo %d came back altered", seq)
		}
		if samples != nil {
			*samples = append(*samples, rtt)
		}
	}
	return nil
}

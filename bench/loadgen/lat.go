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
	// Warm up: the proxy has dialled the backend and every buffer and
	// code path is touched before the clock starts.
	conns, err := openConns(ctx, n, "connection", cfg.dial, func(_ int, c net.Conn) error {
		if err := pingPong(c, cfg.msgSize, warmRounds, time.Now().Add(replyWait), nil); err != nil {
			return fmt.Errorf("warm up: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer closeAll(conns)

	samples := make([][]time.Duration, n)
	w, err := cfg.measure(func(deadline time.Time) error {
		return onEach(conns, "connection", func(i int, c net.Conn) error {
			samples[i] = make([]time.Duration, 0, 1<<14)
			return pingPong(c, cfg.msgSize, maxRequests, deadline, &samples[i])
		})
	})
	if err != nil {
		return err
	}
	all := slices.Concat(samples...)
	if len(all) == 0 {
		return errors.New("no request completed")
	}
	r.setLatency(cfg, all, w)
	r.set("conns", n)
	r.set("msg_bytes", cfg.msgSize)
	r.setWindow(cfg, w)
	return nil
}

// pingPong sends up to rounds messages of size bytes on c, each after the
// echo of the one before, until deadline; each message carries its number,
// and an echo that differs is an error. With samples set it records each
// round trip, and stops at the deadline; without, the rounds are a warm-up
// that must all complete before it.
func pingPong(c net.Conn, size, rounds int, deadline time.Time, samples *[]time.Duration) error {
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

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// A delay line: what tc netem would add between a proxy and its backend,
// on a machine without it. Each connection accepted is relayed to the
// backend; every chunk of bytes read from either side is written to the
// other delay after it was read, and nothing reaches the backend before
// 2×delay after the accept, standing for the round trip of the TCP
// connect (which on loopback completes at once). A path with a round trip
// of 2×delay, then, for the data; no loss, no bandwidth limit.

// chunk is bytes read (or, with eof, the end of the stream) and when
// they are due at the other side.
type chunk struct {
	data []byte
	eof  bool
	due  time.Time
}

// delayQueue bounds the chunks in flight per direction: a reader ahead of
// its writer by that many waits.
const delayQueue = 256

func cmdDelay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("delay", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "loopback address to listen on")
	to := fs.String("to", "", "the backend's loopback address")
	delay := fs.Duration("delay", time.Millisecond, "one-way delay of every byte (the round trip is twice this)")
	portFile := fs.String("port-file", "", "write the port listened on to this file")
	lifetime := fs.Duration("lifetime", 2*time.Hour, "exit after this long")
	parent := fs.Int("parent", 0, "exit when this process is no longer our parent (0: do not watch)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *delay <= 0 || *delay > time.Second {
		return fmt.Errorf("delay: -delay %s: want more than 0 and at most 1s", *delay)
	}
	for _, a := range []string{*listen, *to} {
		if err := loopbackOnly(a); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *lifetime)
	defer cancel()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("delay: %w", err)
	}
	fmt.Fprintf(stdout, "delay line on %s to %s, %s each way\n", ln.Addr(), *to, *delay)
	if *portFile != "" {
		if err := writeWhole(*portFile, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)+"\n"); err != nil {
			ln.Close()
			return fmt.Errorf("delay: port file: %w", err)
		}
	}
	if *parent > 0 {
		go watchParent(ctx, cancel, *parent)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("delay: %w", err)
		}
		wg.Go(func() { delayConn(ctx, c, *to, *delay) })
	}
}

// delayConn relays c to the backend at to, both directions delayed.
func delayConn(ctx context.Context, c net.Conn, to string, delay time.Duration) {
	defer c.Close()
	notBefore := time.Now().Add(2 * delay)
	u, err := net.DialTimeout("tcp", to, 5*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	unwatch := context.AfterFunc(ctx, func() { c.Close(); u.Close() })
	defer unwatch()
	var wg sync.WaitGroup
	wg.Go(func() { delayCopy(u.(*net.TCPConn), c, delay, notBefore) })
	delayCopy(c.(*net.TCPConn), u, delay, time.Time{})
	wg.Wait()
}

// delayCopy reads src and writes each chunk to dst delay after it was
// read (and not before notBefore), then passes the end of stream on. An
// error on either side closes both.
func delayCopy(dst *net.TCPConn, src net.Conn, delay time.Duration, notBefore time.Time) {
	q := make(chan chunk, delayQueue)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			due := time.Now().Add(delay)
			if due.Before(notBefore) {
				due = notBefore
			}
			if n > 0 {
				q <- chunk{data: buf[:n], due: due}
			}
			if err != nil {
				q <- chunk{eof: errors.Is(err, io.EOF), due: due}
				return
			}
		}
	}()
	for ch := range q {
		if d := time.Until(ch.due); d > 0 {
			time.Sleep(d)
		}
		switch {
		case ch.eof:
			_ = dst.CloseWrite()
		case ch.data == nil:
			_ = dst.Close()
			_ = src.Close()
		default:
			if _, err := dst.Write(ch.data); err != nil {
				_ = src.Close()
			}
		}
	}
}

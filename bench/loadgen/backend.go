package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The backend's protocol. The first byte of a connection chooses what the
// backend does with it; the generator's echo payloads never start with
// these two bytes.
const (
	// hdrSink is followed by one flag byte (1: verify against the
	// pattern); the backend then reads to EOF and answers with a
	// sinkReply.
	hdrSink = 0x01
	// hdrSource makes the backend write the pattern until the
	// connection breaks.
	hdrSource = 0x02
	// hdrTLS (sni.go), a TLS ClientHello, is answered with a canned
	// answer.
	// Any other first byte: echo everything back until EOF.
)

// sinkReply is the backend's answer at the end of an upload: the bytes it
// received (8, big endian), whether they matched the pattern (1 byte, 0 =
// yes or not checked), and the offset of the first wrong byte (8).
const sinkReplyLen = 17

// backend serves the generator's connections on a loopback listener.
type backend struct {
	pat *pattern
	// connLife bounds every connection: no handler outlives it, whatever
	// the peer does.
	connLife time.Duration
}

// serve accepts until ctx ends, then closes the listener and every
// connection and waits for the handlers.
func (b *backend) serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer wg.Wait()
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors or buffers: wait and try again, as a
			// proxy would; the listen queue holds the clients. The
			// wait is bounded by ctx.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		wg.Go(func() {
			unwatch := context.AfterFunc(ctx, func() { c.Close() })
			defer unwatch()
			defer c.Close()
			_ = b.handle(c) // the client sees and reports any failure
		})
	}
}

// handle runs one connection according to its first byte.
func (b *backend) handle(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(b.connLife)); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if n == 0 {
		return err
	}
	switch buf[0] {
	case hdrSink:
		if n < 2 {
			if _, err := io.ReadFull(c, buf[1:2]); err != nil {
				return err
			}
			n = 2
		}
		return b.sink(c, buf[1] == 1, buf[2:n])
	case hdrSource:
		return b.source(c)
	case hdrTLS:
		return b.answerHello(c, buf[:n])
	default:
		return echo(c, buf, n)
	}
}

// echo writes back the n bytes already in buf, then everything else the
// client sends, until EOF.
func echo(c net.Conn, buf []byte, n int) error {
	for range maxEchoReads {
		if _, err := c.Write(buf[:n]); err != nil {
			return err
		}
		var err error
		n, err = c.Read(buf)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
	return fmt.Errorf("echo: more than %d reads on one connection", maxEchoReads)
}

// maxEchoReads bounds an echo loop by count as connLife bounds it by time;
// a few seconds of ping-pong is far below it.
const maxEchoReads = 1 << 30

// sink reads to EOF, counting and, if verify, checking the bytes against
// the pattern (first holds bytes read with the header), then answers with
// a sinkReply.
func (b *backend) sink(c net.Conn, verify bool, first []byte) error {
	var count int64
	bad := int64(-1)
	check := func(p []byte) {
		if verify && bad < 0 {
			if i := b.pat.mismatch(count, p); i >= 0 {
				bad = count + int64(i)
			}
		}
		count += int64(len(p))
	}
	check(first)
	buf := make([]byte, chunkSize)
	for {
		n, err := c.Read(buf)
		check(buf[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	var reply [sinkReplyLen]byte
	binary.BigEndian.PutUint64(reply[0:], uint64(count))
	if bad >= 0 {
		reply[8] = 1
		binary.BigEndian.PutUint64(reply[9:], uint64(bad))
	}
	_, err := c.Write(reply[:])
	return err
}

// source writes the pattern until the client goes away (a write error) or
// the connection's deadline passes.
func (b *backend) source(c net.Conn) error {
	var off int64
	for {
		n, err := c.Write(b.pat.at(off, chunkSize))
		off += int64(n)
		if err != nil {
			return err
		}
	}
}

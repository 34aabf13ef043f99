package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// runBulk measures throughput: cfg.streams connections made by dial carry
// the pattern client → backend (up) or backend → client (down) for
// cfg.duration. The first stream is verified byte for byte at its
// receiving end; the others are only counted, to keep the generator's own
// CPU low (it shares the cores with the target). tlsbulk is up with the
// TLS modes' dial.
func runBulk(ctx context.Context, cfg *runConfig, r *result, dial func(context.Context) (net.Conn, error), up bool) error {
	conns, err := openConns(ctx, cfg.streams, "stream", dial, func(i int, c net.Conn) error {
		hdr := []byte{hdrSource}
		if up {
			verify := byte(0)
			if i == 0 {
				verify = 1
			}
			hdr = []byte{hdrSink, verify}
		}
		if err := c.SetWriteDeadline(time.Now().Add(dialTimeout)); err != nil {
			return err
		}
		if _, err := c.Write(hdr); err != nil {
			return fmt.Errorf("write header: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer closeAll(conns)

	sysBefore, err := cfg.systemCPU()
	if err != nil {
		return err
	}
	moved := make([]int64, len(conns))
	w, err := cfg.measure(func(deadline time.Time) error {
		return onEach(conns, "stream", func(i int, c net.Conn) (err error) {
			if up {
				moved[i], err = upload(c, cfg.pat, deadline)
			} else {
				moved[i], err = download(c, cfg.pat, i == 0, deadline)
			}
			return err
		})
	})
	if err != nil {
		return err
	}
	sysAfter, err := cfg.systemCPU()
	if err != nil {
		return err
	}

	var total int64
	for _, n := range moved {
		total += n
	}
	if total == 0 {
		return errors.New("no byte went through in the measured time")
	}
	// Up ends when the backend has confirmed the last byte, so the time
	// includes draining the proxy's buffers; down ends at the deadline.
	gib := float64(total) / (1 << 30)
	r.set("gbps", float64(total)*8/w.seconds()/1e9)
	r.setCPU("cpu_s_per_gib", w.cpu/gib, cfg.measured())
	r.set("run_cpu_s_per_gib", (sysAfter.run-sysBefore.run)/gib)
	r.set("machine_cpu_s_per_gib", (sysAfter.machine-sysBefore.machine)/gib)
	r.set("bytes", total)
	r.set("streams", len(conns))
	r.setWindow(cfg, w)
	return nil
}

// upload writes the pattern until deadline, half-closes, and checks the
// backend's count and verdict. It returns the bytes sent. A write that a
// deadline cuts would leave half a record on a TLS connection and break
// it, so there the clock is checked between whole writes instead and the
// deadline only bounds a stuck target.
func upload(c net.Conn, pat *pattern, deadline time.Time) (int64, error) {
	_, whole := c.(*tls.Conn)
	cut := deadline
	if whole {
		cut = deadline.Add(replyWait)
	}
	if err := c.SetWriteDeadline(cut); err != nil {
		return 0, err
	}
	var off int64
	for time.Now().Before(deadline) {
		n, err := c.Write(pat.at(off, chunkSize))
		off += int64(n)
		if isTimeout(err) && !whole {
			break
		}
		if err != nil {
			return off, fmt.Errorf("write after %d bytes: %w", off, err)
		}
	}
	return confirmUpload(c, off)
}

// confirmUpload half-closes c after off bytes and checks the backend's
// count and verdict.
func confirmUpload(c net.Conn, off int64) (int64, error) {
	hc, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return off, fmt.Errorf("a %T cannot half-close", c)
	}
	if err := hc.CloseWrite(); err != nil {
		return off, fmt.Errorf("half-close after %d bytes: %w", off, err)
	}
	if err := c.SetReadDeadline(time.Now().Add(replyWait)); err != nil {
		return off, err
	}
	var reply [sinkReplyLen]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return off, fmt.Errorf("read the backend's count after sending %d bytes: %w", off, err)
	}
	got := int64(binary.BigEndian.Uint64(reply[0:]))
	if got != off {
		return off, fmt.Errorf("integrity: the backend received %d bytes, %d were sent", got, off)
	}
	if reply[8] != 0 {
		bad := binary.BigEndian.Uint64(reply[9:])
		return off, fmt.Errorf("integrity: byte %d arrived at the backend different from what was sent", bad)
	}
	return off, nil
}

// download reads until deadline, checking every byte against the pattern
// if verify. It returns the bytes received.
func download(c net.Conn, pat *pattern, verify bool, deadline time.Time) (int64, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	buf := make([]byte, chunkSize)
	var off int64
	for {
		n, err := c.Read(buf)
		if verify {
			if i := pat.mismatch(off, buf[:n]); i >= 0 {
				return off, fmt.Errorf("integrity: byte %d arrived different from what the backend sent", off+int64(i))
			}
		}
		off += int64(n)
		if isTimeout(err) {
			if off == 0 {
				return 0, errors.New("no byte arrived in the measured time")
			}
			return off, nil
		}
		if errors.Is(err, io.EOF) {
			return off, fmt.Errorf("the stream ended after %d bytes, before the deadline", off)
		}
		if err != nil {
			return off, fmt.Errorf("read after %d bytes: %w", off, err)
		}
	}
}

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

// runBulk measures throughput: cfg.streams connections carry the pattern
// client → backend (up) or backend → client (down) for cfg.duration. The
// first stream is verified byte for byte at its receiving end; the others
// are only counted, to keep the generator's own CPU low (it shares the
// cores with the target).
func runBulk(ctx context.Context, cfg *runConfig, r *result, up bool) error {
	conns := make([]*net.TCPConn, cfg.streams)
	defer closeAll(conns)
	for i := range conns {
		c, err := cfg.dial(ctx)
		if err != nil {
			return fmt.Errorf("open stream %d: %w", i, err)
		}
		conns[i] = c
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
			return fmt.Errorf("open stream %d: write header: %w", i, err)
		}
	}

	before, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	sysBefore, err := cfg.systemCPU()
	if err != nil {
		return err
	}
	start := time.Now()
	deadline := start.Add(cfg.duration)
	type outcome struct {
		bytes int64
		end   time.Time
		err   error
	}
	outs := make([]outcome, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			var o outcome
			if up {
				o.bytes, o.err = upload(c, cfg.pat, deadline)
			} else {
				o.bytes, o.err = download(c, cfg.pat, i == 0, deadline)
			}
			o.end = time.Now()
			if o.err != nil {
				o.err = fmt.Errorf("stream %d: %w", i, o.err)
			}
			outs[i] = o
		})
	}
	wg.Wait()
	after, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	sysAfter, err := cfg.systemCPU()
	if err != nil {
		return err
	}

	var total int64
	end := start
	var errs []error
	for _, o := range outs {
		total += o.bytes
		if o.end.After(end) {
			end = o.end
		}
		errs = append(errs, o.err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if total == 0 {
		return errors.New("no byte went through in the measured time")
	}
	// Up ends when the backend has confirmed the last byte, so the time
	// includes draining the proxy's buffers; down ends at the deadline.
	elapsed := end.Sub(start).Seconds()
	gib := float64(total) / (1 << 30)
	cpu := after - before
	r.set("gbps", float64(total)*8/elapsed/1e9)
	r.setCPU("cpu_s_per_gib", cpu/gib, cfg.measured())
	r.set("run_cpu_s_per_gib", (sysAfter.run-sysBefore.run)/gib)
	r.set("machine_cpu_s_per_gib", (sysAfter.machine-sysBefore.machine)/gib)
	r.set("bytes", total)
	r.set("streams", len(conns))
	r.set("elapsed_s", elapsed)
	r.setCPU("cpu_s", cpu, cfg.measured())
	return nil
}

// halfCloser is a connection that can end its sending side alone: a
// *net.TCPConn, or a *tls.Conn for tlsbulk.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// upload writes the pattern until deadline, half-closes, and checks the
// backend's count and verdict. It returns the bytes sent.
func upload(c halfCloser, pat *pattern, deadline time.Time) (int64, error) {
	if err := c.SetWriteDeadline(deadline); err != nil {
		return 0, err
	}
	var off int64
	for {
		n, err := c.Write(pat.at(off, chunkSize))
		off += int64(n)
		if isTimeout(err) {
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
func confirmUpload(c halfCloser, off int64) (int64, error) {
	if err := c.CloseWrite(); err != nil {
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
func download(c *net.TCPConn, pat *pattern, verify bool, deadline time.Time) (int64, error) {
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

package balance

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/pj-proxy/pj/internal/config"
)

// probe checks b once, as HAProxy's tcp-check does: connect, then, if the
// check says so, send a payload and expect the reply to start with a given
// prefix (Redis: send "PING\r\n", expect "+PONG"). The whole probe is
// bounded by the check's timeout.
func probe(ctx context.Context, b *Backend, hc config.HealthCheck, version byte) error {
	if b.Err != nil {
		return b.Err
	}
	if hc.Datagrams {
		return probeUDP(ctx, b, hc)
	}
	c, err := dialProbe(ctx, "tcp", b, hc.Timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if hc.SendProxy && version != 0 {
		// A check has no client: the header says so (v2 LOCAL, v1
		// UNKNOWN), as HAProxy's check-send-proxy does.
		if _, err := c.Write(localHeader(version)); err != nil {
			return probeError("send the PROXY header", err, hc.Timeout)
		}
	}
	send, expect := hc.Payload()
	if len(send) > 0 {
		if _, err := c.Write(send); err != nil {
			return probeError("send", err, hc.Timeout)
		}
	}
	if len(expect) > 0 {
		got := make([]byte, len(expect))
		n, err := io.ReadFull(c, got)
		if err != nil && n == 0 {
			return probeError("expect", err, hc.Timeout)
		}
		if !bytes.Equal(got[:n], expect) {
			return fmt.Errorf("expect: the reply %s does not start with %s", showBytes(got[:n]), showBytes(expect))
		}
	}
	return nil
}

// dialProbe opens a probe's connection to b (for UDP, a socket connected
// to it), with the whole probe's timeout as its deadline.
func dialProbe(ctx context.Context, network string, b *Backend, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, network, b.Addr.String())
	if err != nil {
		return nil, probeError("connect", err, timeout)
	}
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline) // on a fresh socket this cannot fail
	return c, nil
}

// probeUDP checks a UDP backend: it sends the check's payload as one
// datagram, from a socket connected to the backend, and waits for a reply
// that starts with what the check expects (any reply, if it expects
// nothing). An ICMP port unreachable fails it at once: "connection
// refused".
func probeUDP(ctx context.Context, b *Backend, hc config.HealthCheck) error {
	c, err := dialProbe(ctx, "udp", b, hc.Timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	send, expect := hc.Payload()
	if _, err := c.Write(send); err != nil {
		return probeError("send", err, hc.Timeout)
	}
	// A reply longer than the buffer is cut short, which is enough: only
	// its start is compared.
	got := make([]byte, max(len(expect), 1))
	n, err := c.Read(got)
	if err != nil {
		return probeError("expect", err, hc.Timeout)
	}
	if !bytes.HasPrefix(got[:n], expect) {
		return fmt.Errorf("expect: the reply %s does not start with %s", showBytes(got[:n]), showBytes(expect))
	}
	return nil
}

// showBytes writes bytes for a message: quoted if they are text, else in
// hexadecimal (a binary protocol's reply); at most 32 of them.
func showBytes(b []byte) string {
	cut := ""
	if len(b) > 32 {
		b, cut = b[:32], "..."
	}
	if utf8.Valid(b) && !bytes.ContainsFunc(b, func(r rune) bool { return !unicode.IsPrint(r) && !unicode.IsSpace(r) }) {
		return strconv.Quote(string(b)) + cut
	}
	return "hex " + hex.EncodeToString(b) + cut
}

// probeError keeps what an operator needs of a dial or I/O error:
// "connect: connection refused", "expect: timeout after 1s".
func probeError(step string, err error, timeout time.Duration) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%s: timeout after %s", step, timeout)
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return fmt.Errorf("%s: %w", step, se.Err)
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: the backend closed the connection", step)
	}
	return fmt.Errorf("%s: %w", step, err)
}

// jittered spreads probes: the interval ±10%, so that many pj instances
// (replicas in a cluster) do not probe a backend in lockstep.
func jittered(interval time.Duration) time.Duration {
	spread := int64(interval) / 5
	if spread <= 0 {
		return interval
	}
	return interval - time.Duration(spread/2) + time.Duration(rand.Int64N(spread))
}

// checkLoop probes b every interval until ctx is done. At most one probe
// of a backend is in flight, across reloads too (State.probing); a
// backend an operator took down is not probed.
func (s *Set) checkLoop(ctx context.Context, b *Backend) {
	hc := s.settings.HealthCheck
	// The first probe comes after a random part of the interval: a reload
	// or a restart of many instances does not fire every check at once.
	first := time.Duration(rand.Int64N(int64(hc.Interval)))
	repeat(ctx, first, func() time.Duration { return jittered(hc.Interval) }, func() {
		if b.Admin() == AdminDown || !b.probing.CompareAndSwap(false, true) {
			return
		}
		err := probe(ctx, b, hc, s.settings.ProxyVersion())
		b.probing.Store(false)
		if ctx.Err() != nil {
			return // stopped mid-probe: the result says nothing
		}
		if tr, changed := b.Observe(Result{OK: err == nil, Err: err}, hc.Rise, hc.Fall); changed {
			s.logTransition(b, tr)
		}
	})
}

// repeat calls do after first, then again after each pause next returns,
// until ctx is done.
func repeat(ctx context.Context, first time.Duration, next func() time.Duration, do func()) {
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		do()
		t.Reset(next())
	}
}

// logTransition logs a change of health, once.
func (s *Set) logTransition(b *Backend, tr Transition) {
	LogTransition(s.log, s.name, b, tr)
}

// localHeader is the PROXY protocol header of a connection that relays no
// client: "PROXY UNKNOWN" in v1, the LOCAL command in v2.
func localHeader(version byte) []byte {
	if version == 1 {
		return []byte("PROXY UNKNOWN\r\n")
	}
	h := append([]byte(nil), proxyproto.SIGV2...)
	return append(h, 0x20, 0x00, 0x00, 0x00) // version 2, LOCAL; unspecified family; no address
}

package balance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"

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
	ctx, cancel := context.WithTimeout(ctx, hc.Timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", b.Addr.String())
	if err != nil {
		return probeError("connect", err, hc.Timeout)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline) // on a fresh connection this cannot fail
	if hc.SendProxy && version != 0 {
		// A check has no client: the header says so (v2 LOCAL, v1
		// UNKNOWN), as HAProxy's check-send-proxy does.
		if _, err := c.Write(localHeader(version)); err != nil {
			return probeError("send the PROXY header", err, hc.Timeout)
		}
	}
	if hc.Send != "" {
		if _, err := io.WriteString(c, hc.Send); err != nil {
			return probeError("send", err, hc.Timeout)
		}
	}
	if hc.Expect != "" {
		got := make([]byte, len(hc.Expect))
		n, err := io.ReadFull(c, got)
		if err != nil && n == 0 {
			return probeError("expect", err, hc.Timeout)
		}
		if string(got[:n]) != hc.Expect {
			return fmt.Errorf("expect: the reply %q does not start with %q", got[:n], hc.Expect)
		}
	}
	return nil
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

package tlsproxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/certs"
	"github.com/pj-proxy/pj/internal/evloop"
)

// Terminator completes clients' TLS handshakes with a store's
// certificates, and counts them.
type Terminator struct {
	store *certs.Store
	stats *HandshakeStats
}

// HandshakeStats count a proxy's client handshakes; they carry over a
// reload with the Terminator that replaces the proxy's.
type HandshakeStats struct {
	Success atomic.Uint64
	Failure atomic.Uint64
}

// NewTerminator returns a Terminator of store. prev, if not nil, is the one
// it replaces: its counters carry over.
func NewTerminator(store *certs.Store, prev *Terminator) *Terminator {
	t := &Terminator{store: store, stats: &HandshakeStats{}}
	if prev != nil {
		t.stats = prev.stats
	}
	return t
}

// Store returns the terminator's certificate store.
func (t *Terminator) Store() *certs.Store { return t.store }

// Stats returns the terminator's handshake counters.
func (t *Terminator) Stats() *HandshakeStats { return t.stats }

// Handshake completes the server side of a TLS handshake on c within
// timeout. A client that says nothing, or too slowly, is refused when the
// time is up.
func (t *Terminator) Handshake(c net.Conn, timeout time.Duration) (*tls.Conn, error) {
	return t.handshake(c, timeout)
}

func (t *Terminator) handshake(c net.Conn, timeout time.Duration) (*tls.Conn, error) {
	tc := tls.Server(c, t.store.TLSConfig())
	// A deadline rather than HandshakeContext: no goroutine per
	// handshake. Aborting the connection closes c, which ends it too.
	_ = c.SetDeadline(time.Now().Add(timeout))
	err := tc.Handshake()
	_ = c.SetDeadline(time.Time{})
	if err != nil {
		t.stats.Failure.Add(1)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("TLS handshake: not completed within %s", timeout)
		}
		return nil, fmt.Errorf("TLS handshake: %w", evloop.UnwrapOp(err))
	}
	t.stats.Success.Add(1)
	return tc, nil
}

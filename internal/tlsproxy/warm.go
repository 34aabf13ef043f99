package tlsproxy

import (
	"fmt"
	"net"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/warm"
)

// Ahead is how a pool of warm connections completes TLS to a backend
// before a client comes: as a client's connection would (the backend's
// host name, d's trust and client certificate), but offering no ALPN, since
// no client has chosen a protocol yet.
func (d *Dialer) Ahead() warm.Handshake {
	return func(raw net.Conn, b *balance.Backend, deadline time.Time) (net.Conn, error) {
		tc, err := d.handshake(raw, BackendHost(b), nil, deadline)
		if err != nil {
			return nil, fmt.Errorf("TLS to %s: %w", b.Address, err)
		}
		return tc, nil
	}
}

package tlsproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/certs"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/evloop"
)

// Dialer originates TLS to backends with a certs.Client's trust and
// client certificate. It serves the relay of handed-over connections, and
// anything else that needs a TLS connection to a backend (a warm pool
// handshakes ahead with Handshake).
type Dialer struct {
	client *certs.Client
}

// NewDialer returns a Dialer of client.
func NewDialer(client *certs.Client) *Dialer { return &Dialer{client: client} }

// Client returns the dialer's reloadable TLS material.
func (d *Dialer) Client() *certs.Client { return d.client }

// Dial connects to b and completes a TLS handshake, all within ctx; alpn,
// if not empty, is offered to the backend.
func (d *Dialer) Dial(ctx context.Context, b *balance.Backend, alpn []string) (*tls.Conn, error) {
	var nd net.Dialer
	raw, err := nd.DialContext(ctx, "tcp", b.Addr.String())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", b.Address, evloop.UnwrapOp(err))
	}
	deadline, _ := ctx.Deadline()
	tc, err := d.handshake(raw, BackendHost(b), alpn, deadline)
	if err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("TLS to %s: %w", b.Address, err)
	}
	return tc, nil
}

// Handshake completes the client side of TLS on raw, a connection to a
// backend whose configured host is host, by deadline (zero: none).
func (d *Dialer) Handshake(raw net.Conn, host string, alpn []string, deadline time.Time) (*tls.Conn, error) {
	return d.handshake(raw, host, alpn, deadline)
}

func (d *Dialer) handshake(raw net.Conn, host string, alpn []string, deadline time.Time) (*tls.Conn, error) {
	tc := tls.Client(raw, d.client.Config(host, alpn))
	_ = raw.SetDeadline(deadline)
	err := tc.Handshake()
	_ = raw.SetDeadline(time.Time{})
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, errors.New("handshake not completed in time")
		}
		return nil, evloop.UnwrapOp(err)
	}
	return tc, nil
}

// BackendHost is the host name a backend was configured with, the default
// server name of TLS to it: the host of its HOST:PORT, or, for a backend
// found through an SRV record, its address.
func BackendHost(b *balance.Backend) string {
	name := b.Name
	if name == "" || config.IsSRV(name) {
		name = b.Address
	}
	host, _, err := net.SplitHostPort(name)
	if err != nil {
		return name
	}
	return host
}

package balance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/pj-proxy/pj/internal/config"
)

// Resolver looks up backend names; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
}

// NewResolver returns the resolver for a proxy's resolver setting: the
// system's for "", else one that asks the DNS server at HOST:PORT.
func NewResolver(server string) Resolver {
	if server == "" {
		return net.DefaultResolver
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	return &net.Resolver{
		PreferGo: true, // the cgo resolver would ignore Dial
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, server)
		},
	}
}

// resolveOne turns one configured backend into backends: itself for an IP
// address; one per address for a name (a Kubernetes headless service
// scales the pool); one per address of every target for an SRV name,
// where the records of the lowest priority are primaries and the others
// backups, and each record's weight is its backends' weight. States of
// addresses already known are kept.
func resolveOne(ctx context.Context, cb config.Backend, r Resolver, states map[string]*State) ([]*Backend, error) {
	host, port, err := config.SplitHostPort(cb.Address)
	if config.IsSRV(cb.Address) {
		host, port, err = cb.Address, 0, nil
	}
	if err != nil {
		return nil, err
	}
	mk := func(ip netip.Addr, port uint16, weight int, backup bool) *Backend {
		ap := netip.AddrPortFrom(ip.Unmap(), port)
		b := &Backend{Address: ap.String(), Name: cb.Address, Addr: ap, Weight: weight, Backup: backup}
		if b.State = states[b.Address]; b.State == nil {
			b.State = newState()
			states[b.Address] = b.State
		}
		return b
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []*Backend{mk(ip, port, cb.Weight, cb.Backup)}, nil
	}
	if config.IsSRV(host) {
		return resolveSRV(ctx, cb, host, r, mk)
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, dnsError(err))
	}
	out := make([]*Backend, 0, len(ips))
	for _, ip := range ips {
		out = append(out, mk(ip, port, cb.Weight, cb.Backup))
	}
	return out, nil
}

func resolveSRV(ctx context.Context, cb config.Backend, name string, r Resolver,
	mk func(netip.Addr, uint16, int, bool) *Backend) ([]*Backend, error) {
	_, srvs, err := r.LookupSRV(ctx, "", "", strings.TrimSuffix(name, "."))
	if err == nil && len(srvs) == 0 {
		err = errors.New("no SRV records")
	}
	if err != nil {
		return nil, fmt.Errorf("resolve SRV %s: %w", name, dnsError(err))
	}
	best := srvs[0].Priority
	for _, s := range srvs {
		best = min(best, s.Priority)
	}
	var out []*Backend
	var errs []error
	for _, s := range srvs {
		ips, err := r.LookupNetIP(ctx, "ip", strings.TrimSuffix(s.Target, "."))
		if err != nil {
			errs = append(errs, fmt.Errorf("resolve %s (SRV target of %s): %w", s.Target, name, dnsError(err)))
			continue
		}
		weight := int(s.Weight)
		if weight < 1 {
			weight = 1 // RFC 2782 weight 0: "very small chance"; one share here
		}
		for _, ip := range ips {
			out = append(out, mk(ip, s.Port, weight*cb.Weight, cb.Backup || s.Priority != best))
		}
	}
	if len(out) == 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// dnsError keeps what a lookup error says about the name ("no such host",
// "i/o timeout") and drops the server Go names, which is the system's
// even when a resolver setting sent the question elsewhere.
func dnsError(err error) error {
	var de *net.DNSError
	if errors.As(err, &de) {
		return errors.New(de.Err)
	}
	return err
}

package warm

import (
	"context"
	"net/netip"
	"time"
)

// SetDialer replaces Dial for p's refills; call it before Start.
func (p *Pools) SetDialer(f func(context.Context, netip.AddrPort, time.Duration) (int, error)) {
	p.dialer = f
}

// Refill looks the pools over at once, as a tick does.
func (p *Pools) Refill() { p.refill(true) }

// Dialing is how many dials to backend are in flight.
func (p *Pools) Dialing(backend string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bp := p.pools[backend]; bp != nil {
		return bp.dialing
	}
	return 0
}

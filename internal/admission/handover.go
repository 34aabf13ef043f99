package admission

import (
	"net/netip"
	"time"
)

// Hold counts an established connection of the client at addr that this
// process takes over from another (an upgrade): it was admitted there, so
// neither the rate nor the cap applies; it only counts towards the cap
// from now on. It must be followed by one Release when the connection
// ends.
func (c *Clients) Hold(addr netip.Addr) {
	if c == nil || c.max == 0 {
		return // nothing is counted without a cap
	}
	k := key(addr.As16())
	s := c.shard(&k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[k]
	if e == nil {
		if e = c.add(s, k, time.Now()); e == nil {
			s.untracked++
			return
		}
	}
	if e.count == 0 {
		s.idle.Remove(e)
	}
	e.count++
}

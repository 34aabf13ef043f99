package config

import (
	"strings"
)

// Transports a listen address may end in.
const (
	TCP = "tcp"
	UDP = "udp"
)

// SplitNetwork splits a listen address into its HOST:PORT and its
// transport: "0.0.0.0:5353/udp" is UDP, "0.0.0.0:80" and "0.0.0.0:80/tcp"
// are TCP. The suffix is case-insensitive.
func SplitNetwork(listen string) (addr, network string) {
	if i := strings.LastIndexByte(listen, '/'); i >= 0 {
		switch strings.ToLower(listen[i+1:]) {
		case UDP:
			return listen[:i], UDP
		case TCP:
			return listen[:i], TCP
		}
	}
	return listen, TCP
}

// listenHostPort is the HOST:PORT of a listen address.
func listenHostPort(listen string) string {
	addr, _ := SplitNetwork(listen)
	return addr
}

// transportProblems applies what a proxy's transport implies: a UDP proxy
// has checks of datagrams, and an idle timeout of UDPIdleTimeout unless it
// sets one (0 is not "never" for UDP). A setting of the other transport
// is a problem when the proxy sets it itself; one it inherits from the
// defaults (which serve both kinds of proxy) is left alone.
func (p *Proxy) transportProblems(defaults *Settings) []string {
	var problems []string
	network := TCP
	if p.IsUDP() {
		network = UDP
		p.HealthCheck.Datagrams = true
		if p.IdleTimeout == 0 {
			p.IdleTimeout = UDPIdleTimeout
		}
	}
	for _, k := range settingKeys {
		if i := k.info(); i.only != "" && i.only != network && k.differs(&p.Settings, defaults) {
			problems = append(problems, i.name+": "+i.wrongTransport())
		}
	}
	if network == TCP {
		return problems
	}
	hc := p.HealthCheck
	if hc.Explicit && hc.Interval > 0 && hc.Send == "" && hc.SendHex == "" {
		problems = append(problems, "health_check: a UDP backend is checked with a datagram and its reply: "+
			"set send (or send_hex), and expect (or expect_hex) to check what comes back; or interval: 0s for no active checks")
	}
	return problems
}

// IsUDP reports whether the proxy relays datagrams: its listen address
// ends in /udp.
func (p *Proxy) IsUDP() bool {
	_, n := SplitNetwork(p.Listen)
	return n == UDP
}

package config

import "strings"

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

// IsUDP reports whether the proxy relays datagrams: its listen address
// ends in /udp.
func (p *Proxy) IsUDP() bool {
	_, n := SplitNetwork(p.Listen)
	return n == UDP
}

package config

import (
	"reflect"
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
	own := func(differs bool, key, why string) {
		if differs {
			problems = append(problems, key+": "+why)
		}
	}
	if !p.IsUDP() {
		own(p.UDP != defaults.UDP, "udp", "applies to UDP proxies only (a listen address ending in /udp)")
		return problems
	}
	p.HealthCheck.Datagrams = true
	if p.IdleTimeout == 0 {
		p.IdleTimeout = UDPIdleTimeout
	}
	const tcpOnly = "applies to TCP proxies only; a UDP proxy relays datagrams as they are"
	own(p.MatchTimeout != defaults.MatchTimeout, "match_timeout", tcpOnly)
	own(p.ProxyProtocol != defaults.ProxyProtocol, "proxy_protocol", tcpOnly)
	own(p.AcceptProxyProtocol != nil && !reflect.DeepEqual(p.AcceptProxyProtocol, defaults.AcceptProxyProtocol),
		"accept_proxy_protocol", tcpOnly+" (admission keys apply to each datagram's source address)")
	own(p.Bandwidth != defaults.Bandwidth, "bandwidth", tcpOnly)
	own(p.Pool != defaults.Pool, "pool", tcpOnly+" (a UDP session has no connection to open ahead)")
	own(p.KernelRelay != defaults.KernelRelay, "kernel_relay", tcpOnly)
	own(p.TLS != nil && !reflect.DeepEqual(p.TLS, defaults.TLS), "tls", tcpOnly+" (pj does not speak DTLS)")
	own(p.BackendTLS != nil && !reflect.DeepEqual(p.BackendTLS, defaults.BackendTLS), "backend_tls", tcpOnly+" (pj does not speak DTLS)")
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

package config

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrAddress is wrapped by every address syntax error.
var ErrAddress = errors.New("invalid address")

// Host forms accepted in addresses, for error messages.
const hostForms = "an IPv4 address, an IPv6 address in brackets or a DNS name"

// SplitHostPort splits HOST:PORT where HOST is an IPv4 address, a bracketed
// IPv6 address, a DNS name or empty. Unlike net.SplitHostPort it accepts only
// decimal ports and explains what it expected.
func SplitHostPort(s string) (host string, port uint16, err error) {
	host, rest, err := cutHost(s)
	if err != nil {
		return "", 0, err
	}
	if !strings.HasPrefix(rest, ":") {
		if rest == "" {
			return "", 0, fmt.Errorf("%w %q: missing :PORT after the host", ErrAddress, s)
		}
		return "", 0, fmt.Errorf("%w %q: unexpected %q after the host", ErrAddress, s, rest)
	}
	port, err = parsePort(rest[1:])
	if err != nil {
		return "", 0, fmt.Errorf("%w %q: %w", ErrAddress, s, err)
	}
	return host, port, nil
}

// JoinHostPort is the inverse of SplitHostPort: IPv6 hosts get brackets.
func JoinHostPort(host string, port uint16) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + strconv.Itoa(int(port))
	}
	return host + ":" + strconv.Itoa(int(port))
}

// cutHost reads a host from the front of s and returns it with the rest of
// s. The host is checked: an IPv4 address, a bracketed IPv6 address, a DNS
// name, or empty.
func cutHost(s string) (host, rest string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", fmt.Errorf("%w %q: missing ']' after the IPv6 address", ErrAddress, s)
		}
		host = s[1:end]
		addr, perr := netip.ParseAddr(host)
		if perr != nil || !addr.Is6() || !validZone(addr.Zone()) {
			return "", "", fmt.Errorf("%w %q: %q is not an IPv6 address", ErrAddress, s, host)
		}
		return host, s[end+1:], nil
	}
	host, after, found := strings.Cut(s, ":")
	if found {
		rest = ":" + after
	}
	if host == "" {
		return "", rest, nil
	}
	if err := checkHost(host); err != nil {
		return "", "", fmt.Errorf("%w %q: %w", ErrAddress, s, err)
	}
	return host, rest, nil
}

// validZone accepts the zones of link-local addresses: interface names
// (letters, digits, '.', '-', '_') or numeric interface indexes.
func validZone(zone string) bool {
	for i := 0; i < len(zone); i++ {
		switch c := zone[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// checkHost accepts an IPv4 address or a DNS name (RFC 1123 labels, plus
// underscores for SRV names such as _http._tcp.example.com).
func checkHost(host string) error {
	if looksNumeric(host) {
		if addr, err := netip.ParseAddr(host); err == nil && addr.Is4() {
			return nil
		}
		return fmt.Errorf("%q is not a valid IPv4 address", host)
	}
	if len(host) > 253 {
		return fmt.Errorf("host name is %d characters long; at most 253 are allowed", len(host))
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is not %s (empty or over-long label)", host, hostForms)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q is not %s (a label starts or ends with '-')", host, hostForms)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
			default:
				return fmt.Errorf("%q is not %s (unexpected %q)", host, hostForms, string(rune(c)))
			}
		}
	}
	return nil
}

// looksNumeric reports whether host is made only of digits and dots, so that
// "300.1.1.1" is reported as a bad IPv4 address rather than accepted as a
// name (an all-numeric top-level label is not a valid DNS name).
func looksNumeric(host string) bool {
	for i := 0; i < len(host); i++ {
		if c := host[i]; c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing port number")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			if s[i] == ':' {
				return 0, fmt.Errorf("port %q is not a number (too many ':'; IPv6 addresses go in brackets, e.g. [::1]:80)", s)
			}
			return 0, fmt.Errorf("port %q is not a decimal number", s)
		}
	}
	if len(s) > 5 {
		return 0, fmt.Errorf("port %s is out of range 0-65535", s)
	}
	n, _ := strconv.Atoi(s) // at most five digits: cannot fail
	if n > 65535 {
		return 0, fmt.Errorf("port %d is out of range 0-65535", n)
	}
	return uint16(n), nil
}

// IsSRV reports whether a backend address is a DNS SRV name
// (_service._proto.name), whose records give addresses, ports, weights and
// priorities; such a backend is written without a port.
func IsSRV(addr string) bool {
	return strings.HasPrefix(addr, "_") && !strings.Contains(addr, ":") &&
		(strings.Contains(addr, "._tcp.") || strings.Contains(addr, "._udp.")) && checkHost(addr) == nil
}

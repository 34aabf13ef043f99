package config

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The kinds of value a key may take, each with the check its keys share.
// A key's declaration picks one (settings.go).

// number is what the range rules apply to (time.Duration is an int64).
type number interface{ ~int | ~int64 | ~float64 }

// positive accepts values above zero.
func positive[T number](v T) string {
	if v <= 0 {
		return "must be positive"
	}
	return ""
}

// notNegative accepts zero and above; a key says what its 0 means.
func notNegative[T number](v T) string {
	if v < 0 {
		return "must not be negative"
	}
	return ""
}

// atLeastOne accepts values from 1 up.
func atLeastOne[T number](v T) string {
	if v < 1 {
		return "must be at least 1"
	}
	return ""
}

// duration is a Go duration string: "500ms", "1m30s".
func duration(rule func(time.Duration) string) value[time.Duration] {
	return value[time.Duration]{read: (*decoder).duration, check: rule, text: time.Duration.String}
}

// count is a whole number.
func count(rule func(int) string) value[int] {
	return value[int]{read: (*decoder).integer, check: rule, text: strconv.Itoa}
}

// rate is a number that may have a fraction.
func rate(rule func(float64) string) value[float64] {
	return value[float64]{read: (*decoder).number, check: rule,
		text: func(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }}
}

// size is a number of bytes: "10MiB", "1GB", or a whole number.
func size(rule func(int64) string) value[int64] {
	return value[int64]{read: (*decoder).size, check: rule,
		text: func(n int64) string { return strconv.FormatInt(n, 10) }}
}

// text is any string.
func text() value[string] { return value[string]{read: (*decoder).str} }

// givenName is a name that may be left out, for one made as leftOut
// says, but not written empty.
func givenName(leftOut string) value[string] {
	v := text()
	v.check = func(s string) string {
		if s == "" {
			return "must not be empty (leave it out to " + leftOut + ")"
		}
		return ""
	}
	return v
}

// boolean is true or false.
func boolean() value[bool] { return value[bool]{read: (*decoder).boolean} }

// address is HOST:PORT, or "" for none (the feature is off). A listen
// address may leave the host empty (every interface) and use port 0
// (ephemeral); an address to connect to needs both.
func address(listen bool) value[string] {
	example := "10.0.0.1:80"
	if listen {
		example = "0.0.0.0:8080"
	}
	return value[string]{
		read: func(d *decoder, n *node, path string) (string, bool) { return d.address(n, path, listen, false) },
		check: func(s string) string {
			host, port, err := SplitHostPort(s)
			switch {
			case s == "":
				return ""
			case err != nil:
				return unwrapAddress(err) + " (expected HOST:PORT, e.g. " + example + ")"
			case !listen && (host == "" || port == 0):
				return fmt.Sprintf("%q needs a host and a port from 1 to 65535 (expected HOST:PORT, e.g. %s)", s, example)
			}
			return ""
		},
	}
}

// listenAddress is a proxy's listen address: HOST:PORT, optionally
// followed by /udp (datagrams) or /tcp (the default, dropped).
func listenAddress() value[string] {
	return value[string]{
		read: func(d *decoder, n *node, path string) (string, bool) {
			return d.strAs(n, path, func(s string) (string, string) {
				addr, network := SplitNetwork(s)
				if i := strings.LastIndexByte(s, '/'); i >= 0 && addr == s {
					return "", fmt.Sprintf("%q: the transport after / must be udp or tcp (expected HOST:PORT or HOST:PORT/udp, e.g. 0.0.0.0:53/udp)", s)
				}
				host, port, err := SplitHostPort(addr)
				if err != nil {
					return "", unwrapAddress(err) + " (expected HOST:PORT, e.g. 0.0.0.0:8080)"
				}
				out := JoinHostPort(host, port)
				if network == UDP {
					out += "/" + UDP
				}
				return out, ""
			})
		},
		check: func(s string) string {
			if _, _, err := SplitHostPort(listenHostPort(s)); err != nil {
				return unwrapAddress(err) + " (expected HOST:PORT, e.g. 0.0.0.0:8080)"
			}
			return ""
		},
	}
}

// hexBytes is bytes written in hexadecimal: "abcd0100", or with spaces
// or colons between them ("ab cd 01 00"); kept as plain lower-case hex.
func hexBytes() value[string] {
	return value[string]{
		read: func(d *decoder, n *node, path string) (string, bool) {
			return d.strAs(n, path, func(s string) (string, string) {
				s = strings.ToLower(strings.NewReplacer(" ", "", ":", "", "\t", "").Replace(s))
				if _, err := hex.DecodeString(s); err != nil {
					return "", fmt.Sprintf("%q is not hexadecimal bytes (write e.g. \"abcd 0100\"): %v", s, err)
				}
				return s, ""
			})
		},
		check: func(s string) string {
			if _, err := hex.DecodeString(s); err != nil {
				return "is not hexadecimal bytes"
			}
			return ""
		},
		text: strconv.Quote,
	}
}

// prefixes is a list of address ranges: "10.0.0.0/8", "192.0.2.7".
func prefixes() value[[]netip.Prefix] {
	return value[[]netip.Prefix]{
		read:  (*decoder).prefixes,
		clone: slices.Clone[[]netip.Prefix],
		check: func(list []netip.Prefix) string {
			for _, p := range list {
				if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
					return p.String() + " is not a canonical address range (write e.g. 10.0.0.0/8)"
				}
			}
			return ""
		},
	}
}

// choice is one of a few names.
type choice[T ~string] struct {
	what   string // what a value is, in messages: "log format"
	values []T
	fold   bool // case does not matter: DEBUG is debug
	orNone bool // "" is accepted too, and turns the feature off
}

func (c choice[T]) names() []string {
	out := make([]string, len(c.values))
	for i, v := range c.values {
		out[i] = string(v)
	}
	return out
}

func (c choice[T]) value() value[T] {
	return value[T]{
		read: func(d *decoder, n *node, path string) (T, bool) {
			s, ok := d.enum(n, path, c.what, c.names(), c.fold)
			return T(s), ok
		},
		check: func(v T) string {
			if v == "" && c.orNone {
				return ""
			}
			for _, name := range c.values {
				if v == name || (c.fold && strings.EqualFold(string(v), string(name))) {
					return ""
				}
			}
			return "expected " + orList(c.names())
		},
		text: func(v T) string { return strconv.Quote(string(v)) },
	}
}

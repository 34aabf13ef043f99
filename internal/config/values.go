package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
)

// This file turns the scalar values of a configuration file into Go values:
// ${VAR} expansion, durations, numbers, sizes, address ranges. Each parser
// returns an error whose text completes "KEY: ...".

// expand replaces every ${NAME} in s by the value of the environment
// variable NAME, and $$ by $. A $ followed by anything else is kept as it
// is, so that most passwords need no escaping. It reports whether s
// referred to a variable.
func expand(s string, lookupEnv func(string) (string, bool)) (string, bool, error) {
	if !strings.Contains(s, "$") {
		return s, false, nil
	}
	var b strings.Builder
	used := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", false, fmt.Errorf("%q: ${ is not closed by } (write $$ for a literal $)", s)
			}
			name := s[i+2 : i+end]
			if !validVarName(name) {
				return "", false, fmt.Errorf("%q: ${%s} is not a variable reference: write ${NAME}, NAME made of letters, digits and _ (no defaults or other shell forms; $$ is a literal $)", s, name)
			}
			v, ok := lookupEnv(name)
			if !ok {
				return "", false, fmt.Errorf("environment variable %s is not set", name)
			}
			b.WriteString(v)
			used = true
			i += end
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), used, nil
}

func validVarName(name string) bool {
	if name == "" || ('0' <= name[0] && name[0] <= '9') {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_':
		default:
			return false
		}
	}
	return true
}

// parseInt reads an integer as YAML and TOML write them: decimal, 0x, 0o
// or 0b, with _ between digits.
func parseInt(text string) (int64, error) {
	n, err := strconv.ParseInt(strings.ReplaceAll(text, "_", ""), 0, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("%s is too large", text)
		}
		return 0, fmt.Errorf("%q is not a whole number", text)
	}
	return n, nil
}

// parseFloat reads a number that may have a fraction; it must be finite.
func parseFloat(text string) (float64, error) {
	f, err := strconv.ParseFloat(strings.ReplaceAll(text, "_", ""), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("%q is not a finite number", text)
	}
	return f, nil
}

// sizeUnits are the suffixes of parseSize, longest first within a family.
var sizeUnits = []struct {
	suffix string
	factor float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

const sizeHint = "write e.g. 10MiB, 500KiB, 1GB or a number of bytes"

// parseSize reads a number of bytes: a whole number, or a number with a
// unit: KiB, MiB, GiB, TiB (powers of 1024; K, M, G, T too) or KB, MB, GB,
// TB (powers of 1000). Case does not matter, a space may separate the
// unit, and a trailing "/s" is allowed where the size is a rate.
func parseSize(text string) (int64, error) {
	s := strings.ToLower(strings.TrimSpace(text))
	s = strings.TrimSuffix(s, "/s")
	factor := 1.0
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, factor = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.factor
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || s == "" || strings.ContainsAny(s, "xXpPeE_infa") || f < 0 {
		return 0, fmt.Errorf("%q is not a size (%s)", text, sizeHint)
	}
	bytes := f * factor
	if bytes >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", text)
	}
	return int64(math.Round(bytes)), nil
}

const prefixHint = "write e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32"

// parsePrefix reads an address range in CIDR notation, or a single
// address (a /32 or /128). IPv4 addresses written in IPv6's mapped form
// (::ffff:10.0.0.0/104) become IPv4 ranges, which is how client addresses
// are compared. Bits set past the prefix length are cleared.
func parsePrefix(text string) (netip.Prefix, error) {
	s := strings.TrimSpace(text)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, fmt.Errorf("%q is not an address range (%s)", text, prefixHint)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return p, fmt.Errorf("%q is not an address range (%s)", text, prefixHint)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("%q mixes IPv4-mapped and other IPv6 addresses; write the IPv4 range instead", text)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

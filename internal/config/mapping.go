package config

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// MappingSyntax is the grammar of a --proxy mapping, for error messages and help.
const MappingSyntax = "LISTEN_HOST:PORT[/udp]:BACKEND_HOST:PORT[,BACKEND_HOST:PORT...]"

// MappingExample is shown next to MappingSyntax.
const MappingExample = "0.0.0.0:8787:127.0.0.1:22"

// maxMappingText bounds how much of a mapping a message repeats (a
// mapping may list thousands of backends).
const maxMappingText = 512

// ErrMapping is wrapped by every mapping syntax error.
var ErrMapping = errors.New("invalid mapping")

// ParseMapping parses the command-line form of a proxy:
//
//	MAPPING  = LISTEN ":" BACKENDS
//	LISTEN   = HOST ":" PORT [ "/udp" | "/tcp" ]
//	                                    (empty HOST: every interface; PORT 0: ephemeral; /tcp: the default)
//	BACKENDS = HOST ":" PORT { "," HOST ":" PORT }
//	HOST     = IPv4 | "[" IPv6 "]" | DNS name
//
// The result has Listen, Backends (weight 1) and Source set; the rest is left
// for Validate to fill from the defaults.
func ParseMapping(s string) (Proxy, error) {
	fail := func(format string, args ...any) (Proxy, error) {
		why := shorten(fmt.Sprintf(format, args...), 2*maxMappingText)
		// More ':' than a mapping of IPv4 addresses and names has, and no
		// brackets: most likely a bare IPv6 address.
		if !strings.Contains(s, "[") && strings.Count(s, ":") > 3+strings.Count(s, ",") && !strings.Contains(why, "brackets") {
			why += " (IPv6 addresses go in brackets, e.g. [::1]:80)"
		}
		return Proxy{}, fmt.Errorf("%w %q: %s; expected %s, e.g. %s",
			ErrMapping, shorten(s, maxMappingText), why, MappingSyntax, MappingExample)
	}
	if strings.TrimSpace(s) == "" {
		return fail("empty")
	}
	if strings.ContainsFunc(s, unicode.IsSpace) {
		return fail("contains white space")
	}

	host, rest, err := cutHost(s)
	if err != nil {
		return fail("listen host: %s", unwrapAddress(err))
	}
	if !strings.HasPrefix(rest, ":") {
		return fail("missing listen port")
	}
	portText, backends, found := strings.Cut(rest[1:], ":")
	portText, transport, slash := strings.Cut(portText, "/")
	switch strings.ToLower(transport) {
	case TCP:
		transport = ""
	case UDP:
		transport = "/" + UDP
	case "":
		if !slash {
			break
		}
		fallthrough
	default:
		return fail("listen transport %q: expected udp or tcp (0.0.0.0:53/udp)", transport)
	}
	port, err := parsePort(portText)
	if err != nil {
		return fail("listen port: %s", err)
	}
	if !found || backends == "" {
		return fail("missing backend after the listen address")
	}

	p := Proxy{Listen: JoinHostPort(host, port) + transport, Source: "-p " + shorten(s, maxMappingText)}
	for b := range strings.SplitSeq(backends, ",") {
		if b == "" {
			return fail("empty backend in the list")
		}
		bhost, bport, err := SplitHostPort(b)
		if err != nil {
			return fail("backend %s", unwrapAddress(err))
		}
		if bhost == "" {
			return fail("backend %q has no host", b)
		}
		if bport == 0 {
			return fail("backend %q: port 0 is not a port one can connect to", b)
		}
		p.Backends = append(p.Backends, Backend{Address: JoinHostPort(bhost, bport), Weight: 1})
	}
	return p, nil
}

// unwrapAddress drops the "invalid address" prefix inside a mapping error,
// where "invalid mapping" already says it.
func unwrapAddress(err error) string {
	return strings.TrimPrefix(err.Error(), ErrAddress.Error()+" ")
}

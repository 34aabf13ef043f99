package route

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/pj-proxy/pj/internal/admission"
)

// Match is what a route asks of a connection. Every field given must
// hold; the zero Match holds for every connection.
type Match struct {
	// SNI holds when the ClientHello names one of these servers: a name,
	// compared without regard to case, or "*.example.com" for every name
	// that ends in ".example.com" (at any depth, but not example.com).
	SNI []string
	// ALPN holds when the ClientHello offers any of these protocols.
	ALPN []string
	// Protocol holds when the first bytes are this protocol's.
	Protocol Protocol
	// Source holds when the client's address is in one of these ranges.
	Source []netip.Prefix
}

// Check tells why the match cannot be used, or nil: a bad server name,
// an empty ALPN name, sni or alpn with a protocol that has no ClientHello.
func (m *Match) Check() error {
	_, err := newRule(m)
	return err
}

// needsBytes says whether the match can only be told from what the
// client sends.
func (m *Match) needsBytes() bool {
	return len(m.SNI) > 0 || len(m.ALPN) > 0 || m.Protocol != ProtocolUnknown
}

// rule is a Match made ready to test.
type rule struct {
	names    map[string]struct{} // exact server names, lower case
	suffixes []string            // ".example.com" for "*.example.com", lower case
	alpn     []string
	proto    Protocol
	source   *admission.CIDRSet // nil: any source
	hello    bool               // sni or alpn: the ClientHello must be read
	bytes    bool               // anything but source: bytes must be read
}

func newRule(m *Match) (rule, error) {
	r := rule{
		proto: m.Protocol,
		alpn:  slices.Clone(m.ALPN),
		hello: len(m.SNI) > 0 || len(m.ALPN) > 0,
		bytes: m.needsBytes(),
	}
	if m.Protocol >= numProtocols {
		return rule{}, fmt.Errorf("protocol: %v is not one pj knows", m.Protocol)
	}
	if m.Protocol != ProtocolUnknown && m.Protocol != ProtocolTLS && m.Protocol != ProtocolPostgres && r.hello {
		return rule{}, fmt.Errorf("protocol %s has no ClientHello: sni and alpn need tls or postgres", m.Protocol)
	}
	for _, p := range m.ALPN {
		if p == "" || len(p) > 255 {
			return rule{}, fmt.Errorf("alpn: %q is not a protocol name (1 to 255 bytes)", p)
		}
	}
	for _, s := range m.SNI {
		if err := CheckSNI(s); err != nil {
			return rule{}, fmt.Errorf("sni: %w", err)
		}
		s = strings.ToLower(s)
		if suffix, ok := strings.CutPrefix(s, "*"); ok {
			r.suffixes = append(r.suffixes, suffix)
			continue
		}
		if r.names == nil {
			r.names = make(map[string]struct{}, len(m.SNI))
		}
		r.names[s] = struct{}{}
	}
	if len(m.Source) > 0 {
		for _, p := range m.Source {
			if !p.IsValid() {
				return rule{}, fmt.Errorf("source: an invalid prefix")
			}
		}
		r.source = admission.NewCIDRSet(m.Source)
	}
	return r, nil
}

// CheckSNI tells whether s may be written in a route's sni list: a DNS
// name in ASCII (an internationalised name in its xn-- form), or "*."
// followed by one.
func CheckSNI(s string) error {
	name := strings.TrimPrefix(s, "*.")
	switch {
	case s == "":
		return fmt.Errorf("an empty name")
	case s == "*" || name == "":
		return fmt.Errorf("%q names no server; a route without sni takes every name", s)
	case strings.HasSuffix(name, "."):
		return fmt.Errorf("%q ends in a dot; clients send names without it", s)
	case len(name) > 253:
		return fmt.Errorf("%q is longer than a DNS name may be (253)", s)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q has an empty label or one longer than 63", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%q has %q; write a name in letters, digits, '-' and '.' "+
					"(xn-- for an internationalised name, \"*.\" only in front)", s, c)
			}
		}
	}
	return nil
}

// matchSNI tells whether the server name a client sent is one of the
// rule's.
func (r *rule) matchSNI(name string) bool {
	if name == "" {
		return false
	}
	name = strings.ToLower(name) // allocates only for a name with upper case
	if _, ok := r.names[name]; ok {
		return true
	}
	for _, s := range r.suffixes {
		if len(name) > len(s) && strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// matchALPN tells whether the client offered one of the rule's protocols.
func (r *rule) matchALPN(offered []string) bool {
	for _, p := range offered {
		if slices.Contains(r.alpn, p) {
			return true
		}
	}
	return false
}

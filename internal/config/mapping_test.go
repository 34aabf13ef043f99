package config_test

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

// validMappings are the mappings ParseMapping must accept, with what it must
// make of them. The first three are the original Rust tool's tests; the rest
// are the forms README.md documents. The fuzz target seeds from it too.
var validMappings = []struct {
	name     string
	in       string
	listen   string
	backends []string
}{
	{"original ipv4", "127.0.0.1:8080:192.168.1.1:9090", "127.0.0.1:8080", []string{"192.168.1.1:9090"}},
	{"original host names", "localhost:8080:localhost:9090", "localhost:8080", []string{"localhost:9090"}},
	{"original every interface", "0.0.0.0:80:10.0.0.1:8080", "0.0.0.0:80", []string{"10.0.0.1:8080"}},
	{"original form", "0.0.0.0:8787:127.0.0.1:22", "0.0.0.0:8787", []string{"127.0.0.1:22"}},
	{
		"documented three backends", "0.0.0.0:8080:backend1:80,backend2:80,backend3:80",
		"0.0.0.0:8080", []string{"backend1:80", "backend2:80", "backend3:80"},
	},
	{"documented ipv6 both sides", "[::]:8080:[::1]:80", "[::]:8080", []string{"[::1]:80"}},
	{"documented empty listen host", ":8080:127.0.0.1:80", ":8080", []string{"127.0.0.1:80"}},
	{"documented ephemeral listen port", "127.0.0.1:0:127.0.0.1:80", "127.0.0.1:0", []string{"127.0.0.1:80"}},
	{"empty host and port 0", ":0:b:1", ":0", []string{"b:1"}},
	{"ipv6 zone", "[fe80::1%eth0]:8080:[fe80::2%eth0]:80", "[fe80::1%eth0]:8080", []string{"[fe80::2%eth0]:80"}},
	{"numeric zone", "[fe80::1%2]:80:[fe80::2%25]:80", "[fe80::1%2]:80", []string{"[fe80::2%25]:80"}},
	{"vlan interface zone", "[fe80::1%eth0.100]:80:[fe80::2%en_p1-2]:80", "[fe80::1%eth0.100]:80", []string{"[fe80::2%en_p1-2]:80"}},
	{"ipv4-mapped ipv6", "[::ffff:10.0.0.1]:80:[::ffff:10.0.0.2]:80", "[::ffff:10.0.0.1]:80", []string{"[::ffff:10.0.0.2]:80"}},
	{"port bounds", "0.0.0.0:65535:b:1", "0.0.0.0:65535", []string{"b:1"}},
	{"backend port 65535", "0.0.0.0:1:b:65535", "0.0.0.0:1", []string{"b:65535"}},
	{
		"mixed backend families", "0.0.0.0:5432:[2001:db8::1]:5432,10.0.0.1:5432,db.internal:5432",
		"0.0.0.0:5432", []string{"[2001:db8::1]:5432", "10.0.0.1:5432", "db.internal:5432"},
	},
	{"fully qualified name", "0.0.0.0:53:ns1.example.com.:53", "0.0.0.0:53", []string{"ns1.example.com.:53"}},
	{"srv-style underscores", "0.0.0.0:80:_http._tcp.example.com:80", "0.0.0.0:80", []string{"_http._tcp.example.com:80"}},
	{"hyphen inside a label", "my-host:80:my-backend.example:80", "my-host:80", []string{"my-backend.example:80"}},
	{"upper case name kept as written", "LocalHost:80:DB.Example:80", "LocalHost:80", []string{"DB.Example:80"}},
	{"leading zeros are decimal", "0.0.0.0:08080:b:080", "0.0.0.0:8080", []string{"b:80"}},
	{"same backend twice is for Validate", "0.0.0.0:80:b:1,b:1", "0.0.0.0:80", []string{"b:1", "b:1"}},
	{"documented udp", "0.0.0.0:5353/udp:10.0.0.1:53", "0.0.0.0:5353/udp", []string{"10.0.0.1:53"}},
	{"udp in capitals", "0.0.0.0:53/UDP:10.0.0.1:53", "0.0.0.0:53/udp", []string{"10.0.0.1:53"}},
	{"tcp written out", "0.0.0.0:80/tcp:b:80", "0.0.0.0:80", []string{"b:80"}},
	{"udp ipv6 ephemeral", "[::1]:0/udp:[::1]:53,b:53", "[::1]:0/udp", []string{"[::1]:53", "b:53"}},
}

func TestParseMappingValid(t *testing.T) {
	for _, tt := range validMappings {
		t.Run(tt.name, func(t *testing.T) {
			p, err := config.ParseMapping(tt.in)
			if err != nil {
				t.Fatalf("ParseMapping(%q) = %v, want success", tt.in, err)
			}
			want := config.Proxy{Listen: tt.listen, Source: "-p " + tt.in}
			for _, b := range tt.backends {
				want.Backends = append(want.Backends, config.Backend{Address: b, Weight: 1})
			}
			if !reflect.DeepEqual(p, want) {
				t.Errorf("ParseMapping(%q)\n got %+v\nwant %+v", tt.in, p, want)
			}
		})
	}
}

// invalidMappings are the mappings ParseMapping must refuse, each with a
// piece of the reason the message must give. The first five are the
// original Rust tool's tests.
var invalidMappings = []struct {
	name string
	in   string
	why  string // must appear in the error message
}{
	{"original listen only", "127.0.0.1:8080", "missing backend"},
	{"original backend without port", "127.0.0.1:8080:192.168.1.1", "missing :PORT"},
	{"original host only", "127.0.0.1", "missing listen port"},
	{"original empty", "", "empty"},
	{"original extra field", "127.0.0.1:8080:192.168.1.1:9090:extra", `"9090:extra" is not a number`},

	{"only blanks", "   ", "empty"},
	{"leading space", " 0.0.0.0:80:b:80", "white space"},
	{"trailing space", "0.0.0.0:80:b:80 ", "white space"},
	{"space after comma", "0.0.0.0:80:b:80, c:80", "white space"},
	{"tab inside", "0.0.0.0:80:\tb:80", "white space"},
	{"trailing new line", "0.0.0.0:80:b:80\n", "white space"},
	{"carriage return", "0.0.0.0:80:b:80\r", "white space"},

	{"unbracketed ipv6 listen", "::1:8080:127.0.0.1:80", "brackets"},
	{"unbracketed ipv6 any listen", ":::8080:127.0.0.1:80", "brackets"},
	{"unbracketed ipv6 backend", "0.0.0.0:8080:::1:80", "brackets"},
	{"unbracketed ipv6 backend after bracketed listen", "[::]:8080:fe80::1:80", "brackets"},
	{"unbracketed ipv6 name-like first group", "fe80::1:8080:b:80", "brackets"},
	// Written out in full, an IPv6 address has no "::" to give it away;
	// the message must still point at the brackets.
	{"unbracketed full-form ipv6 listen", "2001:db8:0:0:0:0:0:1:8080:127.0.0.1:80", "brackets"},
	{"unbracketed full-form ipv6 backend", "0.0.0.0:8080:2001:db8:0:0:0:0:0:1:80", "brackets"},
	{"missing ] listen", "[::1:8080:b:80", "missing ']'"},
	{"missing ] backend", "0.0.0.0:80:[::1:80", "missing ']'"},
	{"ipv4 in brackets", "[127.0.0.1]:80:b:80", "is not an IPv6 address"},
	{"empty brackets", "[]:80:b:80", "is not an IPv6 address"},
	{"garbage in brackets", "0.0.0.0:80:[nope]:80", "is not an IPv6 address"},
	{"junk after brackets", "0.0.0.0:80:[::1]x:80", `unexpected "x:80" after the host`},
	{"empty zone", "[fe80::1%]:80:b:80", "is not an IPv6 address"},
	{"zone with a slash", "[fe80::1%eth/0]:80:b:80", "is not an IPv6 address"},
	{"zone with a comma", "[fe80::1%a,b]:80:c:80", "is not an IPv6 address"},
	{"zone with a colon", "0.0.0.0:80:[fe80::1%a:b]:80", "is not an IPv6 address"},
	{"zone with a control character", "0.0.0.0:80:[fe80::1%eth\x000]:80", "is not an IPv6 address"},
	{"unbracketed full-form ipv6 in a later backend", "0.0.0.0:80:a:1,2001:db8:0:0:0:0:0:1:80", "brackets"},

	{"listen port 65536", "0.0.0.0:65536:b:80", "out of range"},
	{"backend port 65536", "0.0.0.0:80:b:65536", "out of range"},
	{"listen port 99999", "0.0.0.0:99999:b:80", "out of range"},
	{"six-digit port", "0.0.0.0:123456:b:80", "out of range"},
	{"backend port 0", "0.0.0.0:80:b:0", "port 0"},
	{"backend port 00000", "0.0.0.0:80:b:00000", "port 0"},
	{"listen port name", "0.0.0.0:http:b:80", "not a decimal number"},
	{"unknown transport", "0.0.0.0:80/sctp:b:80", `listen transport "sctp": expected udp or tcp`},
	{"empty transport", "0.0.0.0:80/:b:80", `listen transport "": expected udp or tcp`},
	{"backend port name", "0.0.0.0:80:b:http", "not a decimal number"},
	{"negative port", "0.0.0.0:80:b:-1", "not a decimal number"},
	{"signed port", "0.0.0.0:+80:b:80", "not a decimal number"},
	{"hex port", "0.0.0.0:0x50:b:80", "not a decimal number"},
	{"empty listen port", "0.0.0.0::b:80", "missing port number"},
	{"empty backend port", "0.0.0.0:80:b:", "missing port number"},
	{"nothing after listen", "0.0.0.0:80:", "missing backend"},

	{"trailing comma", "a:1:b:2,", "empty backend"},
	{"leading comma", "a:1:,b:2", "empty backend"},
	{"double comma", "a:1:b:2,,c:3", "empty backend"},
	{"backend without host", "0.0.0.0:80::80", "has no host"},
	{"second backend without host", "0.0.0.0:80:b:80,:81", "has no host"},

	{"ipv4 octet over 255", "300.1.1.1:80:b:80", `"300.1.1.1" is not a valid IPv4 address`},
	{"backend ipv4 octet over 255", "0.0.0.0:80:10.0.0.256:80", `"10.0.0.256" is not a valid IPv4 address`},
	{"three-part ipv4", "1.2.3:80:b:80", "is not a valid IPv4 address"},
	{"five-part ipv4", "0.0.0.0:80:1.2.3.4.5:80", "is not a valid IPv4 address"},
	{"label starts with -", "-bad.example:80:b:80", "starts or ends with '-'"},
	{"label ends with -", "0.0.0.0:80:bad-.example:80", "starts or ends with '-'"},
	{"empty label", "0.0.0.0:80:a..b:80", "empty or over-long label"},
	{"leading dot", ".example:80:b:80", "empty or over-long label"},
	{"label of 64 characters", strings.Repeat("a", 64) + ".example:80:b:80", "empty or over-long label"},
	{"name of 254 characters", strings.Repeat("abcdefg.", 31) + "abcdef:80:b:80", "at most 253"},
	{"bad character in name", "bad!host:80:b:80", `unexpected "!"`},
	{"slash in name", "0.0.0.0:80:b/c:80", `unexpected "/"`},
	{"url instead of address", "0.0.0.0:80:http://b:80", "not a decimal number"},
}

func TestParseMappingInvalid(t *testing.T) {
	for _, tt := range invalidMappings {
		t.Run(tt.name, func(t *testing.T) {
			p, err := config.ParseMapping(tt.in)
			if err == nil {
				t.Fatalf("ParseMapping(%q) = %+v, want an error", tt.in, p)
			}
			if !errors.Is(err, config.ErrMapping) {
				t.Errorf("ParseMapping(%q) error %v does not wrap ErrMapping", tt.in, err)
			}
			msg := err.Error()
			// The input is quoted so that white space and control characters show.
			if !strings.Contains(msg, strconv.Quote(tt.in)) {
				t.Errorf("error %q does not name the input %q", msg, tt.in)
			}
			if !strings.Contains(msg, "expected") || !strings.Contains(msg, config.MappingSyntax) {
				t.Errorf("error %q does not say what was expected (%s)", msg, config.MappingSyntax)
			}
			if !strings.Contains(msg, tt.why) {
				t.Errorf("error %q does not give the reason %q", msg, tt.why)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q is more than one line (a usage error is one line on stderr)", msg)
			}
			if !reflect.DeepEqual(p, config.Proxy{}) {
				t.Errorf("ParseMapping(%q) returned %+v with its error, want the zero Proxy", tt.in, p)
			}
		})
	}
}

// TestParseMappingBracketHintOnlyForIPv6 checks the bracket hint is not
// added to errors that have nothing to do with IPv6, where it would mislead.
func TestParseMappingBracketHintOnlyForIPv6(t *testing.T) {
	for _, in := range []string{"0.0.0.0:http:b:80", "300.1.1.1:80:b:80", "a:1:b:2,", "[::1]:80:b:0"} {
		_, err := config.ParseMapping(in)
		if err == nil {
			t.Fatalf("ParseMapping(%q) succeeded, want an error", in)
		}
		if strings.Contains(err.Error(), "brackets") {
			t.Errorf("ParseMapping(%q) error %q mentions brackets", in, err)
		}
	}
}

// TestParseMappingWhiteSpaceNeverAccepted feeds white space the ASCII check
// does not list (vertical tab, form feed, Unicode spaces) through the one
// part of a mapping that takes arbitrary bytes, an IPv6 zone.
func TestParseMappingWhiteSpaceNeverAccepted(t *testing.T) {
	for _, space := range []string{"\v", "\f", "\u0085", "\u00a0", "\u2003", "\u3000"} {
		for _, in := range []string{
			"[fe80::1%eth" + space + "0]:80:b:80",
			"0.0.0.0:80:[fe80::1%" + space + "]:80",
		} {
			t.Run(strconv.Quote(in), func(t *testing.T) {
				p, err := config.ParseMapping(in)
				if err == nil {
					t.Fatalf("ParseMapping(%q) = %+v, want an error: a mapping never contains white space", in, p)
				}
				if !errors.Is(err, config.ErrMapping) {
					t.Errorf("error %v does not wrap ErrMapping", err)
				}
			})
		}
	}
}

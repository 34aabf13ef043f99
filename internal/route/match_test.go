package route

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestSNIPatterns(t *testing.T) {
	r, err := newRule(&Match{SNI: []string{"app.example.com", "*.App.Example.com", "db.example.com", "*.corp"}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		want bool
	}{
		{"app.example.com", true},
		{"APP.EXAMPLE.COM", true},
		{"db.example.com", true},
		{"a.app.example.com", true},
		{"x.y.app.example.com", true}, // any depth
		{"A.App.Example.Com", true},
		{"printer.corp", true},
		{"example.com", false},
		{"www.example.com", false},
		{"app.example.com.evil.net", false},
		{"evilapp.example.com", false},
		{"corp", false},
		{".corp", false},
		{"", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.matchSNI(tc.name); got != tc.want {
				t.Errorf("matchSNI(%q) = %v, want %v", tc.name, got, tc.want)
			}
		})
	}
}

func TestCheckSNI(t *testing.T) {
	good := []string{"example.com", "*.example.com", "a-b.c_d.example", "xn--bcher-kva.example", "localhost", strings.Repeat("a", 63) + ".com"}
	for _, s := range good {
		if err := CheckSNI(s); err != nil {
			t.Errorf("CheckSNI(%q) = %v", s, err)
		}
	}
	bad := map[string]string{
		"":                               "empty",
		"*":                              "names no server",
		"*.":                             "names no server",
		"example.com.":                   "ends in a dot",
		"a..example.com":                 "empty label",
		"*example.com":                   "has '*'",
		"app.*.example":                  "has '*'",
		"bücher.example":                 "has",
		"exa mple.com":                   "has ' '",
		strings.Repeat("a", 64) + ".com": "longer than 63",
		strings.Repeat(strings.Repeat("a", 60)+".", 5) + "com": "longer than a DNS name",
	}
	for s, want := range bad {
		err := CheckSNI(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckSNI(%q) = %v, want an error with %q", s, err, want)
		}
	}
}

func TestRuleErrors(t *testing.T) {
	cases := []struct {
		name string
		m    Match
		want string
	}{
		{"sni on ssh", Match{Protocol: ProtocolSSH, SNI: []string{"a.example"}}, "sni and alpn need tls or postgres"},
		{"alpn on http", Match{Protocol: ProtocolHTTP, ALPN: []string{"h2"}}, "sni and alpn need tls or postgres"},
		{"empty alpn", Match{ALPN: []string{""}}, "not a protocol name"},
		{"bad sni", Match{SNI: []string{"a..b"}}, "empty label"},
		{"invalid source", Match{Source: []netip.Prefix{{}}}, "invalid prefix"},
		{"unknown protocol", Match{Protocol: numProtocols}, "not one pj knows"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewTable([]Match{{}, tc.m})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "route 2: ") {
				t.Fatalf("NewTable = %v, want an error about route 2 with %q", err, tc.want)
			}
		})
	}
	for _, m := range []Match{
		{Protocol: ProtocolTLS, SNI: []string{"a.example"}, ALPN: []string{"h2"}},
		{Protocol: ProtocolPostgres, SNI: []string{"db.example"}},
		{Source: testutil.Prefixes("10.0.0.0/8", "::1/128")},
	} {
		if _, err := NewTable([]Match{m}); err != nil {
			t.Errorf("NewTable(%+v) = %v", m, err)
		}
	}
}

func TestALPN(t *testing.T) {
	r, err := newRule(&Match{ALPN: []string{"h2", "acme-tls/1"}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		offered []string
		want    bool
	}{
		{[]string{"h2", "http/1.1"}, true},
		{[]string{"http/1.1", "h2"}, true},
		{[]string{"acme-tls/1"}, true},
		{[]string{"http/1.1"}, false},
		{[]string{"H2"}, false}, // ALPN names are bytes, compared exactly
		{nil, false},
	}
	for _, tc := range cases {
		if got := r.matchALPN(tc.offered); got != tc.want {
			t.Errorf("matchALPN(%q) = %v, want %v", tc.offered, got, tc.want)
		}
	}
}

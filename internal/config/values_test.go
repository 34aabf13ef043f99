package config

import (
	"net/netip"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "1500": 1500, "10MiB": 10 << 20, "500KiB": 500 << 10, "1GB": 1e9, "1gb": 1e9, "2 MB": 2e6,
		"1.5KiB": 1536, "10M": 10 << 20, "3TiB": 3 << 40, "7B": 7, "10MiB/s": 10 << 20, " 4 kib ": 4096,
	}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "ten", "1e3", "0x10", "inf", "nan", "10 parsecs", "1_000", "99999999999TiB"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	good := map[string]string{
		"10.0.0.0/8":            "10.0.0.0/8",
		"10.1.2.3/8":            "10.0.0.0/8", // bits past the length are cleared
		"192.0.2.7":             "192.0.2.7/32",
		"2001:db8::1":           "2001:db8::1/128",
		"2001:db8::/32":         "2001:db8::/32",
		"::ffff:10.0.0.0/104":   "10.0.0.0/8",
		"::ffff:192.0.2.7":      "192.0.2.7/32",
		"::ffff:192.0.2.7/128":  "192.0.2.7/32",
		" 10.0.0.0/8 ":          "10.0.0.0/8",
		"0.0.0.0/0":             "0.0.0.0/0",
		"::/0":                  "::/0",
		"::ffff:172.16.0.0/108": "172.16.0.0/12",
	}
	for in, want := range good {
		got, err := parsePrefix(in)
		if err != nil || got != netip.MustParsePrefix(want) {
			t.Errorf("parsePrefix(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "10.0.0.0/33", "10.0.0.0/", "host.example", "fe80::1%eth0", "300.1.1.1", "::ffff:0:0/95", "10.0.0.0/8/8"} {
		if got, err := parsePrefix(in); err == nil {
			t.Errorf("parsePrefix(%q) = %v, want an error", in, got)
		}
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"connect_timeout", "idle_timeout", "interval", "address", "weight", "v1", "v2"}
	tests := map[string]string{
		"conect_timeout":  "connect_timeout",
		"Connect-Timeout": "connect_timeout",
		"idle-timeout":    "idle_timeout",
		"intervall":       "interval",
		"adress":          "address",
		"wieght":          "weight",
		"v3":              "", // as close to v1 as to v2
		"colour":          "",
		"x":               "",
		"timeout":         "", // too far from both timeouts
	}
	for in, want := range tests {
		if got := suggest(in, keys); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"a", "", 1}, {"kitten", "sitting", 3}, {"abc", "abc", 0}, {"héllo", "hello", 1}} {
		if got := editDistance(tt.a, tt.b); got != tt.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.d)
		}
	}
}

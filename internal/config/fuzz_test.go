package config_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

// FuzzParseMapping checks the properties every answer of ParseMapping must
// have, whatever the input: no panic; a success is canonical (its parts
// re-parse, and so does the mapping rebuilt from them, to the same result)
// and came from text without white space; a failure wraps ErrMapping and
// names the input and what was expected.
//
// The seeds are the table tests' inputs; more live in
// testdata/fuzz/FuzzParseMapping, including anything the fuzzer has found.
func FuzzParseMapping(f *testing.F) {
	for _, tt := range validMappings {
		f.Add(tt.in)
	}
	for _, tt := range invalidMappings {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		testutil.WithinBudget(t, func() { checkMapping(t, s) })
	})
}

// shortMapping is what a message repeats of a mapping at most.
const shortMapping = 512

func checkMapping(t *testing.T, s string) {
	p, err := config.ParseMapping(s)
	if err != nil {
		if !errors.Is(err, config.ErrMapping) {
			t.Errorf("ParseMapping(%q) error %v does not wrap ErrMapping", s, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "expected") || (len(s) <= shortMapping && !strings.Contains(msg, strconv.Quote(s))) {
			t.Errorf("ParseMapping(%q) error %q does not name the input and what was expected", s, msg)
		}
		if len(msg) > 4096 {
			t.Errorf("ParseMapping of %d bytes: an error of %d bytes", len(s), len(msg))
		}
		return
	}
	if i := strings.IndexFunc(s, unicode.IsSpace); i >= 0 {
		t.Errorf("ParseMapping(%q) accepted white space %q at byte %d", s, s[i:], i)
	}
	if len(s) <= shortMapping && p.Source != "-p "+s {
		t.Errorf("ParseMapping(%q).Source = %q", s, p.Source)
	}
	if len(p.Source) > len("-p ")+shortMapping+32 {
		t.Errorf("ParseMapping of %d bytes: a Source of %d bytes", len(s), len(p.Source))
	}
	addr, network := config.SplitNetwork(p.Listen)
	suffix := ""
	if network == config.UDP {
		suffix = "/udp"
	}
	host, port, err := config.SplitHostPort(addr)
	if err != nil {
		t.Errorf("ParseMapping(%q).Listen %q does not re-parse: %v", s, p.Listen, err)
	} else if back := config.JoinHostPort(host, port) + suffix; back != p.Listen {
		t.Errorf("ParseMapping(%q).Listen %q is not canonical (re-joins as %q)", s, p.Listen, back)
	}
	if len(p.Backends) == 0 {
		t.Fatalf("ParseMapping(%q) succeeded with no backends", s)
	}
	addrs := make([]string, 0, len(p.Backends))
	for _, b := range p.Backends {
		host, port, err := config.SplitHostPort(b.Address)
		switch {
		case err != nil:
			t.Errorf("ParseMapping(%q): backend %q does not re-parse: %v", s, b.Address, err)
		case host == "" || port == 0:
			t.Errorf("ParseMapping(%q): backend %q has host %q, port %d; want both set", s, b.Address, host, port)
		}
		if b.Weight != 1 || b.Backup {
			t.Errorf("ParseMapping(%q): backend %+v, want weight 1 and not a backup", s, b)
		}
		addrs = append(addrs, b.Address)
	}

	canonical := p.Listen + ":" + strings.Join(addrs, ",")
	again, err := config.ParseMapping(canonical)
	if err != nil {
		t.Fatalf("ParseMapping(%q) gave %q, which does not parse: %v", s, canonical, err)
	}
	if again.Listen != p.Listen || !equalBackends(again.Backends, p.Backends) {
		t.Errorf("ParseMapping(%q) = %+v, but its canonical form %q parses as %+v", s, p, canonical, again)
	}
}

func equalBackends(a, b []config.Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

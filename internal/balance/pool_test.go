package balance

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

// fakeResolver answers from a table; unknown names fail.
type fakeResolver map[string][]string

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	addrs, ok := f[host]
	if !ok {
		return nil, errors.New("no such host")
	}
	var out []netip.Addr
	for _, a := range addrs {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, nil
}

func backends(addrs ...string) []config.Backend {
	var out []config.Backend
	for _, a := range addrs {
		out = append(out, config.Backend{Address: a, Weight: 1})
	}
	return out
}

func addresses(bs []*Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Address)
	}
	return out
}

func TestNewPoolResolves(t *testing.T) {
	r := fakeResolver{"web": {"10.0.0.1", "10.0.0.2"}, "v6": {"2001:db8::1"}, "dup": {"10.0.0.1"}}
	tests := []struct {
		name    string
		in      []config.Backend
		want    []string
		wantErr []bool
	}{
		{"literal IPv4", backends("10.0.0.9:80"), []string{"10.0.0.9:80"}, []bool{false}},
		{"literal IPv6", backends("[::1]:80"), []string{"[::1]:80"}, []bool{false}},
		{"mapped IPv4 is shown as IPv4", backends("[::ffff:10.0.0.3]:80"), []string{"10.0.0.3:80"}, []bool{false}},
		{"a name with two addresses is two backends", backends("web:80"), []string{"10.0.0.1:80", "10.0.0.2:80"}, []bool{false, false}},
		{"IPv6 answer", backends("v6:443"), []string{"[2001:db8::1]:443"}, []bool{false}},
		{"the same address twice is one backend", backends("web:80", "dup:80"), []string{"10.0.0.1:80", "10.0.0.2:80"}, []bool{false, false}},
		{"a name that does not resolve keeps its name and the error", backends("nowhere:80"), []string{"nowhere:80"}, []bool{true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPool(context.Background(), tt.in, r, nil)
			got := p.Backends()
			if !slices.Equal(addresses(got), tt.want) {
				t.Fatalf("backends %v, want %v", addresses(got), tt.want)
			}
			for i, b := range got {
				if (b.Err != nil) != tt.wantErr[i] || b.Addr.IsValid() == tt.wantErr[i] {
					t.Fatalf("backend %s: err %v, addr %v", b.Address, b.Err, b.Addr)
				}
			}
		})
	}
}

func TestOrderRoundRobinThenBackups(t *testing.T) {
	in := backends("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	in = append(in, config.Backend{Address: "10.0.0.9:80", Weight: 1, Backup: true})
	p := NewPool(context.Background(), in, fakeResolver{}, nil)
	wantFirst := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"}
	for i, first := range wantFirst {
		o := p.Start(netip.Addr{})
		var seq []string
		for b := o.Next(); b != nil; b = o.Next() {
			seq = append(seq, b.Address)
		}
		if seq[0] != first {
			t.Fatalf("connection %d starts with %s, want %s", i, seq[0], first)
		}
		// Every primary once (failover), then the backup, then nothing.
		if len(seq) != 4 || seq[3] != "10.0.0.9:80" {
			t.Fatalf("connection %d tries %v", i, seq)
		}
		primaries := slices.Clone(seq[:3])
		slices.Sort(primaries)
		if !slices.Equal(primaries, []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}) {
			t.Fatalf("connection %d tries %v", i, seq)
		}
		if o.Remaining() != 0 {
			t.Fatalf("remaining %d after the last", o.Remaining())
		}
	}
}

func TestOrderOfAnEmptyPool(t *testing.T) {
	p := NewPool(context.Background(), nil, fakeResolver{}, nil)
	o := p.Start(netip.Addr{})
	if b := o.Next(); b != nil {
		t.Fatalf("got %v from an empty pool", b.Address)
	}
}

func TestOrderAllocatesNothing(t *testing.T) {
	p := NewPool(context.Background(), backends("10.0.0.1:80", "10.0.0.2:80"), fakeResolver{}, nil)
	allocs := testing.AllocsPerRun(100, func() {
		o := p.Start(netip.Addr{})
		for b := o.Next(); b != nil; b = o.Next() {
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per connection, want 0", allocs)
	}
}

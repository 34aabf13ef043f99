package admission_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/pj-proxy/pj/internal/admission"
	"github.com/pj-proxy/pj/internal/testutil"
)

func TestCIDRSetContains(t *testing.T) {
	tests := []struct {
		name     string
		prefixes []string
		in, out  []string
		ranges   int // Len after merging
	}{
		{
			name:     "empty",
			prefixes: nil,
			out:      []string{"0.0.0.0", "10.0.0.1", "255.255.255.255", "::", "2001:db8::1", "::ffff:10.0.0.1"},
			ranges:   0,
		},
		{
			name:     "IPv4 boundaries",
			prefixes: []string{"10.1.0.0/16"},
			in:       []string{"10.1.0.0", "10.1.0.1", "10.1.128.7", "10.1.255.254", "10.1.255.255"},
			out:      []string{"10.0.255.255", "10.2.0.0", "0.0.0.0", "255.255.255.255", "::a01:0"},
			ranges:   1,
		},
		{
			name:     "IPv6 boundaries",
			prefixes: []string{"2001:db8:1::/48"},
			in:       []string{"2001:db8:1::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff", "2001:db8:1:2::3"},
			out:      []string{"2001:db8:0:ffff:ffff:ffff:ffff:ffff", "2001:db8:2::", "::", "32.1.13.184"},
			ranges:   1,
		},
		{
			name:     "IPv6 boundary inside the low half",
			prefixes: []string{"2001:db8::8000:0:0:0/65"},
			in:       []string{"2001:db8::8000:0:0:0", "2001:db8::ffff:ffff:ffff:ffff"},
			out:      []string{"2001:db8::7fff:ffff:ffff:ffff", "2001:db8:0:1::"},
			ranges:   1,
		},
		{
			name:     "single addresses",
			prefixes: []string{"192.0.2.7/32", "2001:db8::7/128"},
			in:       []string{"192.0.2.7", "2001:db8::7", "::ffff:192.0.2.7"},
			out:      []string{"192.0.2.6", "192.0.2.8", "2001:db8::6", "2001:db8::8"},
			ranges:   2,
		},
		{
			name:     "overlapping ranges merge",
			prefixes: []string{"10.0.0.0/8", "10.1.0.0/16", "10.200.3.4/32", "2001:db8::/32", "2001:db8:5::/48"},
			in:       []string{"10.0.0.0", "10.1.2.3", "10.255.255.255", "2001:db8:5::1", "2001:db8:ffff::"},
			out:      []string{"9.255.255.255", "11.0.0.0", "2001:db9::"},
			ranges:   2,
		},
		{
			name:     "adjacent ranges merge",
			prefixes: []string{"10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24", "2001:db8::/33", "2001:db8:8000::/33"},
			in:       []string{"10.0.0.127", "10.0.0.128", "10.0.1.255", "2001:db8:7fff:ffff:ffff:ffff:ffff:ffff", "2001:db8:8000::"},
			out:      []string{"10.0.2.0", "9.255.255.255", "2001:db9::"},
			ranges:   2,
		},
		{
			name:     "ranges with a gap stay apart",
			prefixes: []string{"10.0.0.0/24", "10.0.2.0/24"},
			in:       []string{"10.0.0.255", "10.0.2.0"},
			out:      []string{"10.0.1.0", "10.0.1.255"},
			ranges:   2,
		},
		{
			name:     "host bits are ignored",
			prefixes: []string{"10.1.2.3/8"},
			in:       []string{"10.0.0.0", "10.255.255.255"},
			out:      []string{"11.0.0.0"},
			ranges:   1,
		},
		{
			name:     "mapped addresses match IPv4 prefixes",
			prefixes: []string{"10.0.0.0/8"},
			in:       []string{"10.0.0.1", "::ffff:10.0.0.1", "::ffff:10.255.255.255"},
			out:      []string{"::ffff:11.0.0.0", "::a00:1"},
			ranges:   1,
		},
		{
			name:     "mapped prefixes are IPv4 prefixes",
			prefixes: []string{"::ffff:10.0.0.0/104"},
			in:       []string{"10.0.0.1", "::ffff:10.0.0.1", "10.255.255.255"},
			out:      []string{"11.0.0.0", "9.255.255.255", "::a00:1"},
			ranges:   1,
		},
		{
			name:     "all of IPv4",
			prefixes: []string{"0.0.0.0/0"},
			in:       []string{"0.0.0.0", "127.0.0.1", "255.255.255.255", "::ffff:1.2.3.4"},
			out:      []string{"::", "::1", "2001:db8::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
			ranges:   1,
		},
		{
			name:     "all of IPv6 is not IPv4",
			prefixes: []string{"::/0"},
			in:       []string{"::", "::1", "2001:db8::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
			out:      []string{"0.0.0.0", "1.2.3.4", "::ffff:1.2.3.4"},
			ranges:   1,
		},
		{
			name:     "the mapped /96 is all of IPv4",
			prefixes: []string{"::ffff:0.0.0.0/96"},
			in:       []string{"0.0.0.0", "255.255.255.255"},
			out:      []string{"::1"},
			ranges:   1,
		},
		{
			name:     "top of both spaces",
			prefixes: []string{"255.255.255.0/24", "255.255.255.255/32", "ffff::/16", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"},
			in:       []string{"255.255.255.255", "255.255.255.0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff::"},
			out:      []string{"255.255.254.255", "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
			ranges:   2,
		},
		{
			name:     "zones are ignored",
			prefixes: []string{"fe80::/10"},
			in:       []string{"fe80::1%eth0", "fe80::1"},
			out:      []string{"fec0::1%eth0"},
			ranges:   1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := admission.NewCIDRSet(testutil.Prefixes(tt.prefixes...))
			for _, a := range tt.in {
				if !s.Contains(netip.MustParseAddr(a)) {
					t.Errorf("%v does not contain %s", tt.prefixes, a)
				}
			}
			for _, a := range tt.out {
				if s.Contains(netip.MustParseAddr(a)) {
					t.Errorf("%v contains %s", tt.prefixes, a)
				}
			}
			if got := s.Len(); got != tt.ranges {
				t.Errorf("Len() = %d, want %d", got, tt.ranges)
			}
		})
	}
}

func TestCIDRSetEdges(t *testing.T) {
	var nilSet *admission.CIDRSet
	if nilSet.Contains(netip.MustParseAddr("10.0.0.1")) || nilSet.Len() != 0 {
		t.Error("a nil CIDRSet is not empty")
	}
	s := admission.NewCIDRSet([]netip.Prefix{{}, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")})
	if s.Contains(netip.Addr{}) {
		t.Error("the zero Addr is contained")
	}
	if s.Len() != 2 {
		t.Errorf("an invalid prefix was not skipped: Len() = %d", s.Len())
	}
	// The caller's slice is not reordered: the set works on a copy.
	in := testutil.Prefixes("10.0.2.0/24", "10.0.1.0/24")
	admission.NewCIDRSet(in)
	if in[0].String() != "10.0.2.0/24" {
		t.Errorf("NewCIDRSet changed its argument: %v", in)
	}
}

// naiveContains is the specification Contains must agree with: a linear
// scan of netip.Prefix.Contains, mapped prefixes and addresses taken as
// IPv4.
func naiveContains(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range ps {
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// randomPrefix draws from a few small neighbourhoods so that the prefixes
// overlap, nest and touch often, with a few wide ones.
func randomPrefix(r *rand.Rand) netip.Prefix {
	switch r.IntN(8) {
	case 0, 1, 2: // IPv4 near 10.0.0.0/16
		b := [4]byte{10, 0, byte(r.IntN(256)), byte(r.IntN(256))}
		return netip.PrefixFrom(netip.AddrFrom4(b), 16+r.IntN(17)).Masked()
	case 3: // anywhere in IPv4
		b := [4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))}
		return netip.PrefixFrom(netip.AddrFrom4(b), r.IntN(33)).Masked()
	case 4: // mapped IPv4 near ::ffff:10.0.0.0/112
		b := [4]byte{10, 0, byte(r.IntN(256)), byte(r.IntN(256))}
		return netip.PrefixFrom(netip.AddrFrom16(netip.AddrFrom4(b).As16()), 112+r.IntN(17)).Masked()
	case 5, 6: // IPv6 near 2001:db8::/32, bits on both sides of 64
		var b [16]byte
		b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
		b[7], b[8], b[15] = byte(r.IntN(4)), byte(r.IntN(4)), byte(r.IntN(256))
		return netip.PrefixFrom(netip.AddrFrom16(b), 32+r.IntN(97)).Masked()
	default: // anywhere in IPv6
		var b [16]byte
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		return netip.PrefixFrom(netip.AddrFrom16(b), r.IntN(129)).Masked()
	}
}

// probes are addresses worth asking about: the first and last address of
// each prefix and their neighbours, and random addresses.
func probes(r *rand.Rand, ps []netip.Prefix, n int) []netip.Addr {
	var as []netip.Addr
	for _, p := range ps {
		first := p.Addr()
		last := lastOf(p)
		as = append(as, first, first.Prev(), last, last.Next())
	}
	for range n {
		as = append(as, randomPrefix(r).Addr())
		p := randomPrefix(r)
		b := p.Addr().As16()
		b[15] ^= byte(r.IntN(256))
		if p.Addr().Is4() {
			as = append(as, netip.AddrFrom16(b).Unmap())
		} else {
			as = append(as, netip.AddrFrom16(b))
		}
	}
	valid := as[:0]
	for _, a := range as {
		if a.IsValid() {
			valid = append(valid, a)
		}
	}
	return valid
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func TestCIDRSetMatchesLinearScan(t *testing.T) {
	for _, n := range []int{1, 10, 100, 3000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(n), 7))
			ps := make([]netip.Prefix, n)
			for i := range ps {
				ps[i] = randomPrefix(r)
			}
			s := admission.NewCIDRSet(ps)
			for _, a := range probes(r, ps, 5000) {
				if got, want := s.Contains(a), naiveContains(ps, a); got != want {
					t.Fatalf("Contains(%s) = %v, the linear scan says %v", a, got, want)
				}
				if m := netip.AddrFrom16(a.As16()); a.Is4() && s.Contains(m) != s.Contains(a) {
					t.Fatalf("Contains(%s) != Contains(%s)", m, a)
				}
			}
		})
	}
}

func TestACL(t *testing.T) {
	tests := []struct {
		name            string
		allow, deny     []string
		allowed, denied []string
	}{
		{
			name:    "no lists admit everyone",
			allowed: []string{"10.0.0.1", "2001:db8::1"},
		},
		{
			name:    "empty allow list: only deny applies",
			deny:    []string{"10.0.0.0/8", "2001:db8::/32"},
			allowed: []string{"11.0.0.1", "9.255.255.255", "2001:db9::", "::1"},
			denied:  []string{"10.0.0.0", "10.255.255.255", "::ffff:10.1.1.1", "2001:db8::1"},
		},
		{
			name:    "allow only",
			allow:   []string{"192.168.0.0/16", "2001:db8::/32"},
			allowed: []string{"192.168.1.1", "::ffff:192.168.1.1", "2001:db8::1"},
			denied:  []string{"192.169.0.0", "10.0.0.1", "2001:db9::", "::1"},
		},
		{
			name:    "deny wins inside allow",
			allow:   []string{"10.0.0.0/8", "2001:db8::/32"},
			deny:    []string{"10.1.0.0/16", "10.2.3.4/32", "2001:db8:bad::/48"},
			allowed: []string{"10.0.255.255", "10.2.0.0", "10.2.3.3", "10.2.3.5", "10.255.255.255", "2001:db8:bac:ffff:ffff:ffff:ffff:ffff", "2001:db8:bae::"},
			denied:  []string{"10.1.0.0", "10.1.255.255", "10.2.3.4", "::ffff:10.2.3.4", "11.0.0.0", "2001:db8:bad::1", "2001:db9::"},
		},
		{
			name:    "deny wins over an equal allow",
			allow:   []string{"10.0.0.0/8"},
			deny:    []string{"10.0.0.0/8"},
			denied:  []string{"10.0.0.1", "10.255.255.255", "11.0.0.0"},
			allowed: nil,
		},
		{
			name:    "deny wider than allow",
			allow:   []string{"10.1.0.0/16", "172.16.0.0/12"},
			deny:    []string{"10.0.0.0/8"},
			allowed: []string{"172.16.0.1"},
			denied:  []string{"10.1.0.1"},
		},
		{
			name:    "deny everyone",
			deny:    []string{"0.0.0.0/0", "::/0"},
			denied:  []string{"1.2.3.4", "::1", "::ffff:1.2.3.4"},
			allowed: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			acl := admission.NewACL(testutil.Prefixes(tt.allow...), testutil.Prefixes(tt.deny...))
			for _, a := range tt.allowed {
				if !acl.Allowed(netip.MustParseAddr(a)) {
					t.Errorf("%s refused", a)
				}
			}
			for _, a := range tt.denied {
				if acl.Allowed(netip.MustParseAddr(a)) {
					t.Errorf("%s allowed", a)
				}
			}
		})
	}
}

func TestACLEdges(t *testing.T) {
	var acl *admission.ACL
	if !acl.Allowed(netip.MustParseAddr("10.0.0.1")) {
		t.Error("a nil ACL refuses")
	}
	if admission.NewACL(nil, testutil.Prefixes("10.0.0.0/8")).Allowed(netip.Addr{}) {
		t.Error("the zero Addr is allowed by a deny list")
	}
	// An allow list that was given but holds nothing valid fails closed.
	if admission.NewACL([]netip.Prefix{{}}, nil).Allowed(netip.MustParseAddr("10.0.0.1")) {
		t.Error("an allow list of invalid prefixes admits everyone")
	}
}

func TestACLMatchesLinearScan(t *testing.T) {
	for _, n := range []int{10, 2000} {
		for _, withAllow := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d/allow=%v", n, withAllow), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(n), 11))
				var allow, deny []netip.Prefix
				for range n {
					if withAllow && r.IntN(2) == 0 {
						allow = append(allow, randomPrefix(r))
					} else {
						deny = append(deny, randomPrefix(r))
					}
				}
				acl := admission.NewACL(allow, deny)
				for _, a := range probes(r, append(allow[:len(allow):len(allow)], deny...), 5000) {
					want := !naiveContains(deny, a) && (len(allow) == 0 || naiveContains(allow, a))
					if got := acl.Allowed(a); got != want {
						t.Fatalf("Allowed(%s) = %v, the linear scan says %v", a, got, want)
					}
				}
			})
		}
	}
}

func TestLookupsDoNotAllocate(t *testing.T) {
	ps := testutil.Prefixes("10.0.0.0/8", "2001:db8::/32", "::ffff:192.168.0.0/112")
	s := admission.NewCIDRSet(ps)
	acl := admission.NewACL(ps[:1], ps[1:])
	addrs := []netip.Addr{
		netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("::ffff:192.168.1.1"),
		netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fe80::1%eth0"),
	}
	allocs := testing.AllocsPerRun(1000, func() {
		for _, a := range addrs {
			s.Contains(a)
			acl.Allowed(a)
		}
	})
	if allocs != 0 {
		t.Errorf("Contains and Allowed allocate %v times per run", allocs)
	}
}

// BenchmarkACL looks up hits and misses in lists of mixed IPv4 and IPv6
// CIDRs, drawn so that few of them merge (the ranges metric is the number
// of ranges the lookup searches): the cost should grow with the logarithm
// of the list.
func BenchmarkACL(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		r := rand.New(rand.NewPCG(uint64(n), 3))
		var allow, deny, all []netip.Prefix
		for i := range n {
			var p netip.Prefix
			if i%2 == 0 {
				var a [4]byte
				for j := range a {
					a[j] = byte(r.IntN(256))
				}
				p = netip.PrefixFrom(netip.AddrFrom4(a), 20+r.IntN(13)).Masked()
			} else {
				var a [16]byte
				a[0], a[1] = 0x20, 0x01
				for j := 2; j < 16; j++ {
					a[j] = byte(r.IntN(256))
				}
				p = netip.PrefixFrom(netip.AddrFrom16(a), 40+r.IntN(89)).Masked()
			}
			if i%4 < 2 {
				allow = append(allow, p)
			} else {
				deny = append(deny, p)
			}
			all = append(all, p)
		}
		// Half hits (in a prefix of either list), half random addresses,
		// mostly misses.
		addrs := make([]netip.Addr, 4096)
		for i := range addrs {
			switch i % 4 {
			case 0:
				addrs[i] = all[r.IntN(n)].Addr()
			case 1:
				addrs[i] = lastOf(all[r.IntN(n)])
			case 2:
				addrs[i] = netip.AddrFrom4([4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			default:
				var a [16]byte
				a[0], a[1] = 0x20, 0x01
				for j := 2; j < 16; j++ {
					a[j] = byte(r.IntN(256))
				}
				addrs[i] = netip.AddrFrom16(a)
			}
		}
		r.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
		acl := admission.NewACL(allow, deny)
		ranges := admission.NewCIDRSet(allow).Len() + admission.NewCIDRSet(deny).Len()
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			allowed, i := 0, 0
			for b.Loop() {
				if acl.Allowed(addrs[i&(len(addrs)-1)]) {
					allowed++
				}
				i++
			}
			b.ReportMetric(float64(ranges), "ranges")
			b.ReportMetric(float64(allowed)/float64(i), "allowed/op")
		})
	}
}

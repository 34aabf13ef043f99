package admission

import (
	"cmp"
	"encoding/binary"
	"math"
	"net/netip"
	"slices"
)

// CIDRSet is an immutable set of IP addresses given as prefixes.
//
// The prefixes are turned into ranges [first, last], sorted and merged
// (overlapping and adjacent ranges become one), IPv4 as uint32 and IPv6 as
// 128-bit numbers in separate tables. Contains is then a binary search in
// the table of the address's family: O(log n) comparisons and no
// allocation, whatever the length and the shape of the list.
//
// Families are matched strictly, as netip.Prefix.Contains does, with one
// exception: IPv4 lives in IPv6 as ::ffff:0:0/96, so a prefix inside that
// range (::ffff:10.0.0.0/104) is the IPv4 prefix it maps (10.0.0.0/8), and
// a mapped address (::ffff:10.0.0.1) is looked up as IPv4. A wider IPv6
// prefix that merely covers the mapped range (::/0, ::/80) does not match
// IPv4 clients: "deny ::/0" denies IPv6, not everyone.
//
// A nil *CIDRSet is empty.
type CIDRSet struct {
	// v4first[i] ≤ v4last[i] < v4first[i+1]: sorted, disjoint and not
	// adjacent. The starts are a table of their own so that the binary
	// search walks over nothing else.
	v4first, v4last []uint32
	v6first, v6last []u128
}

// NewCIDRSet builds the set of the addresses in prefixes. Invalid
// prefixes (the zero netip.Prefix) are skipped; host bits are ignored
// (10.1.2.3/8 is 10.0.0.0/8).
func NewCIDRSet(prefixes []netip.Prefix) *CIDRSet {
	v4, v6 := spansOf(prefixes)
	return newSet(v4, v6)
}

// Contains reports whether addr is in the set.
func (s *CIDRSet) Contains(addr netip.Addr) bool {
	if s == nil {
		return false
	}
	addr = addr.Unmap()
	switch {
	case addr.Is4():
		b := addr.As4()
		return contains4(s.v4first, s.v4last, binary.BigEndian.Uint32(b[:]))
	case addr.Is6():
		return contains6(s.v6first, s.v6last, u128Of(addr))
	}
	return false // the zero Addr
}

// contains4 finds the last range that starts at or below x and checks
// that it reaches x. The loop is written out (rather than sort.Search) so
// that nothing is called per step.
func contains4(first, last []uint32, x uint32) bool {
	lo, hi := 0, len(first)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if first[m] <= x {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo > 0 && x <= last[lo-1]
}

// contains6 is contains4 for IPv6.
func contains6(first, last []u128, x u128) bool {
	lo, hi := 0, len(first)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if !x.less(first[m]) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo > 0 && !last[lo-1].less(x)
}

// ACL is a proxy's allow and deny lists. Deny wins over allow; an empty
// allow list admits every address the deny list does not name. A nil *ACL
// admits everyone.
//
// The two lists are folded into one set at build time (the allowed ranges
// minus the denied ones, or just the denied ones when there is no allow
// list), so Allowed costs one binary search, like CIDRSet.Contains.
type ACL struct {
	set *CIDRSet
	// denyOnly says set holds the denied addresses and everything else
	// is allowed; otherwise set holds exactly the allowed addresses.
	denyOnly bool
}

// NewACL builds the lists. An allow list whose prefixes are all invalid
// admits no one rather than everyone: a list that was given is honoured,
// and a broken one fails closed.
func NewACL(allow, deny []netip.Prefix) *ACL {
	deny4, deny6 := spansOf(deny)
	if len(allow) == 0 {
		return &ACL{set: newSet(deny4, deny6), denyOnly: true}
	}
	allow4, allow6 := spansOf(allow)
	return &ACL{set: newSet(subtract(allow4, deny4), subtract(allow6, deny6))}
}

// Allowed reports whether a client at addr may connect. An invalid
// (zero) addr is refused by any list: a client pj cannot name cannot be
// checked.
func (a *ACL) Allowed(addr netip.Addr) bool {
	if a == nil {
		return true
	}
	if !addr.IsValid() {
		return false
	}
	return a.set.Contains(addr) != a.denyOnly
}

// u128 is an IPv6 address as a number, for ordering.
type u128 struct{ hi, lo uint64 }

func u128Of(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func (a u128) isMax() bool { return a.hi == math.MaxUint64 && a.lo == math.MaxUint64 }

// next is a+1; the caller makes sure a is not the maximum.
func (a u128) next() u128 {
	if a.lo == math.MaxUint64 {
		return u128{a.hi + 1, 0}
	}
	return u128{a.hi, a.lo + 1}
}

// prev is a-1; the caller makes sure a is not zero.
func (a u128) prev() u128 {
	if a.lo == 0 {
		return u128{a.hi - 1, math.MaxUint64}
	}
	return u128{a.hi, a.lo - 1}
}

// span is the range of addresses [first, last]. Building works on 128-bit
// numbers for both families (an IPv4 address is its 32-bit value); the
// lookup tables of IPv4 are narrowed to uint32 at the end.
type span struct{ first, last u128 }

// spansOf turns prefixes into merged ranges, per family.
func spansOf(prefixes []netip.Prefix) (v4, v6 []span) {
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		p = p.Masked()
		if p.Addr().Is4() {
			b := p.Addr().As4()
			first := binary.BigEndian.Uint32(b[:])
			// A shift by 32 or more gives 0 in Go, so /0 gives all ones.
			last := first | (uint32(1)<<(32-p.Bits()) - 1)
			v4 = append(v4, span{u128{0, uint64(first)}, u128{0, uint64(last)}})
			continue
		}
		first, last := u128Of(p.Addr()), u128Of(p.Addr())
		if host := 128 - p.Bits(); host > 64 {
			last.hi |= uint64(1)<<(host-64) - 1
			last.lo = math.MaxUint64
		} else {
			last.lo |= uint64(1)<<host - 1
		}
		v6 = append(v6, span{first, last})
	}
	return merge(v4), merge(v6)
}

// merge sorts spans and joins those that overlap or touch, in place.
func merge(spans []span) []span {
	if len(spans) == 0 {
		return nil
	}
	slices.SortFunc(spans, func(a, b span) int { return a.first.cmp(b.first) })
	out := spans[:1]
	for _, s := range spans[1:] {
		cur := &out[len(out)-1]
		// s starts at or below cur.last+1: they overlap or touch. (If
		// cur reaches the top, it swallows everything after it.)
		if cur.last.isMax() || !cur.last.next().less(s.first) {
			if cur.last.less(s.last) {
				cur.last = s.last
			}
			continue
		}
		out = append(out, s)
	}
	return slices.Clip(out)
}

// subtract returns the addresses of a that are not in b; both are merged
// (sorted, disjoint, not adjacent), and so is the result.
func subtract(a, b []span) []span {
	var out []span
	j := 0
	for _, x := range a {
		// Ranges of b that end before x cannot touch x nor anything after.
		for j < len(b) && b[j].last.less(x.first) {
			j++
		}
		lo, covered := x.first, false
		for k := j; k < len(b) && !x.last.less(b[k].first); k++ {
			if lo.less(b[k].first) {
				out = append(out, span{lo, b[k].first.prev()})
			}
			if !b[k].last.less(x.last) {
				covered = true // b[k] runs to the end of x
				break
			}
			lo = b[k].last.next() // b[k].last < x.last, so no overflow
		}
		if !covered {
			out = append(out, span{lo, x.last})
		}
	}
	return out
}

// newSet lays merged ranges out as the lookup tables.
func newSet(v4, v6 []span) *CIDRSet {
	s := &CIDRSet{
		v4first: make([]uint32, len(v4)),
		v4last:  make([]uint32, len(v4)),
		v6first: make([]u128, len(v6)),
		v6last:  make([]u128, len(v6)),
	}
	for i, r := range v4 {
		s.v4first[i], s.v4last[i] = uint32(r.first.lo), uint32(r.last.lo)
	}
	for i, r := range v6 {
		s.v6first[i], s.v6last[i] = r.first, r.last
	}
	return s
}

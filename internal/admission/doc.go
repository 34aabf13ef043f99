// Package admission holds the data structures pj consults at accept,
// before any backend is contacted: who may connect at all (CIDRSet, ACL)
// and how often and how many at once a client may connect (Clients).
//
// Everything here sits on the path of every new connection, from several
// event loops at once, so each answer is a lookup that costs well under a
// microsecond and allocates nothing in the steady state:
//
//   - A CIDRSet is built once from a list of prefixes into sorted,
//     non-overlapping ranges of addresses; Contains is a binary search, so
//     its cost grows with the logarithm of the list, and a list of
//     thousands (or a hundred thousand) of CIDRs is fine.
//   - An ACL folds the allow and deny lists into one CIDRSet at build time
//     (allow minus deny), so Allowed is a single search too.
//   - Clients keeps a token bucket (golang.org/x/time/rate) and a count of
//     open connections per client IP, in a table sharded by a keyed hash of
//     the address. The table is bounded: docs/DESIGN.md says what is
//     evicted and what happens when it is full.
//
// A client is its IP address: an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
// is the IPv4 client a.b.c.d, and zones are ignored.
//
// The nil value of each type is the "off" setting (a nil *ACL admits
// everyone, a nil *Clients limits no one, a nil *CIDRSet contains nothing),
// so a proxy without the feature pays one nil check.
package admission

package admission

import (
	"hash/maphash"
	"math"
	"math/bits"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/pj-proxy/pj/internal/ilist"
)

// Verdict is the answer of Clients.Admit.
type Verdict uint8

// Verdicts; the refusals are named after their log statuses.
const (
	OK          Verdict = iota // admitted: Release it when it ends
	RateLimited                // over the client's rate of new connections ("rate_limited")
	OverLimit                  // at the client's cap of concurrent connections ("limit")
)

// DefaultCapacity is the number of clients a Clients table tracks at most,
// unless told otherwise. An entry (bucket, count, links, map slot) takes
// about 180 bytes, so a full table costs about 11 MiB per limited proxy,
// and settles at about 15 MiB under a sustained flood of new sources (the
// maps grow once as deletions leave tombstones, then stay). 64 Ki distinct
// clients within one refill time of a bucket, or all holding connections
// at once, is already a flood.
const DefaultCapacity = 1 << 16

// Clients is the per-client state of one proxy: a token bucket of new
// connections (rate_limit) and a count of open connections
// (max_connections_per_client) per client IP. A nil *Clients limits no
// one. Admit and Release are safe for concurrent use, take well under a
// microsecond and allocate nothing for a known client.
//
// The table holds at most its capacity of clients: idle clients are
// forgotten first; at capacity with every client holding connections, a
// newcomer is admitted untracked rather than refused. docs/DESIGN.md
// ("Admission") explains the choices.
type Clients struct {
	limit rate.Limit // new connections per second; 0: no rate limit
	burst int
	max   int32 // concurrent connections; 0: no cap

	seed   maphash.Seed
	mask   uint64 // len(shards)-1: the number of shards is a power of two
	shards []shard
}

// shard is one part of the table, under its own mutex.
type shard struct {
	mu sync.Mutex
	m  map[key]*entry
	// idle lists the entries without open connections, the one idle the
	// longest first: eviction looks at the head only.
	idle     ilist.List[entry, *entry]
	capacity int
	// counters for Stats, under mu (sharded like the rest: no shared
	// cache line between event loops).
	evictions, resets, untracked uint64
	// Pad to two cache lines so that shards side by side in the slice do
	// not share one (64 bytes of fields above; adjacent-line prefetch
	// pairs lines on x86).
	_ [64]byte
}

// key is a client's address as 16 bytes: As16 gives an IPv4 address and
// its mapped form (::ffff:a.b.c.d) the same bytes and drops the zone, so
// the key is canonical. Unlike netip.Addr it holds no pointer, so the map
// costs the garbage collector nothing to scan.
type key [16]byte

// entry is one client's state.
type entry struct {
	lim   rate.Limiter // its bucket; unused without a rate limit
	key   key
	count int32 // open connections; always 0 without a cap
	// idle is the entry's place in its shard's idle list, where it is
	// while count is 0.
	idle ilist.Links[entry]
}

func (e *entry) Links() *ilist.Links[entry] { return &e.idle }

// NewClients returns the per-client state of one proxy: a rate of new
// connections per second and per client with its burst (perSecond 0: no
// rate limit), and a cap of concurrent connections per client (maxPerClient 0:
// no cap), keeping at most capacity clients (0 or less: DefaultCapacity).
// It returns nil when there is neither a rate nor a cap, so that the hot
// path pays one nil check. With a rate, a burst below 1 is taken as 1
// (config validation asks for at least 1; a bucket of 0 would refuse
// every connection).
func NewClients(perSecond float64, burst int, maxPerClient int, capacity int) *Clients {
	if perSecond <= 0 && maxPerClient <= 0 {
		return nil
	}
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	c := &Clients{seed: maphash.MakeSeed()}
	if perSecond > 0 {
		c.limit, c.burst = rate.Limit(perSecond), max(burst, 1)
	}
	if maxPerClient > 0 {
		c.max = int32(min(maxPerClient, math.MaxInt32))
	}
	// Up to 64 shards, but no fewer than 128 clients in each: a small
	// table is not split into shards so small that a few busy clients
	// fill one while the others are empty.
	n := 1
	if capacity >= 256 {
		n = 1 << min(6, bits.Len(uint(capacity/128))-1)
	}
	c.mask = uint64(n - 1)
	c.shards = make([]shard, n)
	for i := range c.shards {
		s := &c.shards[i]
		// Shares that add up to capacity exactly.
		s.capacity = capacity / n
		if i < capacity%n {
			s.capacity++
		}
		s.m = make(map[key]*entry)
	}
	return c
}

// Admit decides on a new connection of the client at addr at time now:
// it takes a token from the client's bucket (RateLimited if there is
// none) and, if the client is below its cap, counts the connection (else
// OverLimit). An attempt over the cap has spent its token: the rate is of
// attempts, so a client hammering at its cap gets rate limited too. A
// refused connection changes no count. OK must be followed by one Release
// when the connection ends.
//
// now drives the buckets; callers on several goroutines pass the clock
// each read last. A time slightly behind the one another caller passed
// for the same client costs at most the tokens of the difference.
func (c *Clients) Admit(addr netip.Addr, now time.Time) Verdict {
	if c == nil {
		return OK
	}
	k := key(addr.As16())
	s := c.shard(&k)
	s.mu.Lock()
	e := s.m[k]
	if e == nil {
		if e = c.add(s, k, now); e == nil {
			s.untracked++
			s.mu.Unlock()
			return OK
		}
	}
	v := c.admit(s, e, now)
	s.mu.Unlock()
	return v
}

// admit applies the bucket and the cap to e, under s.mu.
func (c *Clients) admit(s *shard, e *entry, now time.Time) Verdict {
	if c.limit != 0 && !e.lim.AllowN(now, 1) {
		if s.idle.Contains(e) {
			s.idle.MoveToBack(e) // active: the last to evict
		}
		return RateLimited
	}
	if c.max == 0 {
		s.idle.MoveToBack(e)
		return OK
	}
	if e.count >= c.max {
		return OverLimit
	}
	if e.count == 0 {
		s.idle.Remove(e)
	}
	e.count++
	return OK
}

// add makes an entry for a new client, under s.mu, or returns nil if the
// shard is full of clients with open connections.
func (c *Clients) add(s *shard, k key, now time.Time) *entry {
	full := len(s.m) >= s.capacity
	var e *entry
	if old := s.idle.Front(); old != nil {
		// The entry idle the longest goes if it holds nothing, or if
		// the shard is full (then its client is forgiven: a reset).
		refilled := c.refilled(old, now)
		if refilled || full {
			if !refilled {
				s.resets++
			}
			s.evictions++
			s.idle.Remove(old)
			delete(s.m, old.key)
			e = old
		}
	}
	if e == nil {
		if full {
			return nil
		}
		e = new(entry)
	}
	e.key, e.count = k, 0
	if c.limit != 0 {
		c.fill(&e.lim)
	}
	s.m[k] = e
	s.idle.PushBack(e)
	return e
}

// refilled reports whether e's bucket is full: then e holds nothing a
// fresh entry would not.
func (c *Clients) refilled(e *entry, now time.Time) bool {
	return c.limit == 0 || e.lim.TokensAt(now) >= float64(c.burst)
}

// fill makes lim a full bucket of the limit and burst, in place: a zero
// Limiter for a new entry, or the bucket of an evicted one. rate.Limiter
// holds a mutex, so NewLimiter's value cannot be copied in, and embedding
// the bucket saves an allocation and a pointer per client. Setting the
// limit "at" the zero time makes the bucket's last update the zero time:
// the next AllowN or TokensAt adds the tokens of the ~292 years (the
// largest time.Duration, which t.Sub saturates to) since, capped at burst,
// so the bucket is full — for any rate above burst per 292 years.
func (c *Clients) fill(lim *rate.Limiter) {
	var epoch time.Time
	lim.SetBurstAt(epoch, c.burst)
	lim.SetLimitAt(epoch, c.limit)
}

// Release records that a connection admitted for addr has ended. Without
// a cap nothing is counted, and Release returns at once.
func (c *Clients) Release(addr netip.Addr) {
	if c == nil || c.max == 0 {
		return // nothing is counted without a cap
	}
	k := key(addr.As16())
	s := c.shard(&k)
	s.mu.Lock()
	if e := s.m[k]; e != nil && e.count > 0 {
		if e.count--; e.count == 0 {
			s.idle.PushBack(e)
		}
	}
	s.mu.Unlock()
}

// shard picks k's shard by a hash keyed with a random seed, so that no
// one can choose addresses that all land in one shard.
func (c *Clients) shard(k *key) *shard {
	return &c.shards[maphash.Bytes(c.seed, k[:])&c.mask]
}

// ClientStats are a Clients table's figures, for metrics.
type ClientStats struct {
	// Entries is the number of clients tracked now.
	Entries int
	// Capacity is the most clients the table tracks.
	Capacity int
	// Evictions counts idle clients dropped to make room for new ones.
	Evictions uint64
	// Resets counts the evictions (among Evictions) of a client whose
	// bucket had not refilled yet, at capacity: that client's rate was
	// forgiven.
	Resets uint64
	// Untracked counts connections admitted without per-client limits
	// because the table was full of clients with open connections.
	Untracked uint64
}

// Stats returns the table's figures; the zero ClientStats for nil.
func (c *Clients) Stats() ClientStats {
	var st ClientStats
	if c == nil {
		return st
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		st.Entries += len(s.m)
		st.Capacity += s.capacity
		st.Evictions += s.evictions
		st.Resets += s.resets
		st.Untracked += s.untracked
		s.mu.Unlock()
	}
	return st
}

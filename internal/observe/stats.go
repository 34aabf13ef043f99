package observe

import (
	"sync/atomic"
	"time"
)

// The data path counts with plain atomics, never with a metrics library
// call per event: a Prometheus collector reads these at scrape time. A
// proxy's counters live in its Stats, a backend's in balance.State; both
// are carried over a reload when the proxy (by name) or the backend (by
// address) stays, so counters never go backwards.

// numStatuses is len(Statuses); a test keeps them in step.
const numStatuses = 13

// Statuses lists every Status, in the order of ProxyStats.Conns.
var Statuses = []Status{
	StatusOK, StatusConnectFailed, StatusNoBackend, StatusTimeout, StatusReset,
	StatusDenied, StatusRateLimited, StatusLimit, StatusKilled, StatusShutdown, StatusNoRoute, StatusTLSFailed, StatusError,
}

// StatusIndex returns the index of s in Statuses.
func StatusIndex(s Status) int {
	for i, v := range Statuses {
		if v == s {
			return i
		}
	}
	return len(Statuses) - 1 // StatusError: an unknown status is a bug
}

// ProxyStats are the live counters of one proxy.
type ProxyStats struct {
	Active    atomic.Int64
	Conns     [numStatuses]atomic.Uint64 // by StatusIndex
	BytesUp   atomic.Uint64              // client → backend, as delivered
	BytesDown atomic.Uint64              // backend → client
	Duration  Histogram                  // of finished connections, seconds
	// DatagramsUp and DatagramsDown count the datagrams of a UDP proxy,
	// client → backend and back, as relayed.
	DatagramsUp, DatagramsDown atomic.Uint64
	// PoolHits and PoolMisses count the connections that found a warm
	// backend connection, and those that did not, in a proxy with a pool.
	PoolHits, PoolMisses atomic.Uint64
}

// NewProxyStats returns zeroed counters with the duration buckets.
func NewProxyStats() *ProxyStats {
	return &ProxyStats{Duration: NewHistogram(DurationBuckets)}
}

// Total is the number of finished connections of any status.
func (s *ProxyStats) Total() uint64 {
	var n uint64
	for i := range s.Conns {
		n += s.Conns[i].Load()
	}
	return n
}

// Bucket upper bounds, in seconds.
var (
	// ConnectBuckets suit the time to reach a backend: from loopback
	// (tens of µs) to a far or struggling one (seconds).
	ConnectBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	// DurationBuckets suit connection lifetimes: from a health probe to
	// an SSH session of a day.
	DurationBuckets = []float64{0.001, 0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 21600, 86400}
)

// Histogram counts observations into fixed buckets with atomics.
type Histogram struct {
	bounds []float64
	counts []atomic.Uint64 // counts[i]: observations <= bounds[i]; the last: +Inf
	sumNs  atomic.Uint64
}

// NewHistogram returns a histogram with the given upper bounds.
func NewHistogram(bounds []float64) Histogram {
	return Histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// Observe records one duration.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(h.bounds) && s > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(max(d, 0)))
}

// Snapshot returns the cumulative bucket counts (as Prometheus wants them,
// keyed by upper bound), the total count and the sum in seconds.
func (h *Histogram) Snapshot() (buckets map[float64]uint64, count uint64, sum float64) {
	buckets = make(map[float64]uint64, len(h.bounds))
	for i, b := range h.bounds {
		count += h.counts[i].Load()
		buckets[b] = count
	}
	count += h.counts[len(h.bounds)].Load()
	return buckets, count, float64(h.sumNs.Load()) / 1e9
}

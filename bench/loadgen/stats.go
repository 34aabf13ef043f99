package main

import (
	"slices"
	"time"
)

// percentile returns the nearest-rank percentile of sorted: the smallest
// sample that at least perMille/1000 of the samples are less than or equal
// to. Per mille in integers keeps p99.9 exact: with float64 fractions,
// 0.99*100 need not be 99. An empty slice gives 0.
func percentile(sorted []time.Duration, perMille int) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := (perMille*n + 999) / 1000 // ceil(perMille*n/1000)
	rank = max(1, min(rank, n))
	return sorted[rank-1]
}

// latencies summarises round-trip samples in microseconds.
type latencies struct {
	p50, p99, p999 float64
}

// summarise sorts samples in place and reads its percentiles.
func summarise(samples []time.Duration) latencies {
	slices.Sort(samples)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return latencies{
		p50:  us(percentile(samples, 500)),
		p99:  us(percentile(samples, 990)),
		p999: us(percentile(samples, 999)),
	}
}

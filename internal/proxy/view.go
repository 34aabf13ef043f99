package proxy

import "errors"

// View is a running proxy as the admin API and the metrics see it.
type View struct {
	Proxy  *Proxy
	Listen string // the bound address
	// Dropped counts, for a UDP proxy, the datagrams its listener did not
	// relay, by reason; nil for TCP.
	Dropped map[string]uint64
}

// ErrNotFound is returned for a proxy or a backend that does not exist.
var ErrNotFound = errors.New("not found")

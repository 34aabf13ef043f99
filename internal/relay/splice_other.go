//go:build !linux

package relay

import (
	"net"
	"sync/atomic"
)

// pairSplices is false where splice(2) does not exist: every pair is copied.
func pairSplices(a, b net.Conn) bool { return false }

func spliceStream(dst, src *net.TCPConn, count *atomic.Int64, touch func()) error {
	return copyStream(dst, src, count, touch)
}

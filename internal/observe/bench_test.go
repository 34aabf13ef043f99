package observe

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkLogConn is the access line of one connection, the log line pj
// writes most, through the text handler as pj runs it.
func BenchmarkLogConn(b *testing.B) {
	c := &Conn{ID: 7, Proxy: "web", ClientAddr: netip.MustParseAddrPort("203.0.113.7:51234"),
		Listener: "0.0.0.0:8787", Backend: "127.0.0.1:22", Accepted: time.Now(), Duration: 12300 * time.Millisecond,
		Up: 1234, Down: 56789, Status: StatusReset, Connect: time.Millisecond, ClosedBy: "client", Err: errors.New("reset by peer")}
	log := slog.New(NewTextHandler(io.Discard, slog.LevelInfo))
	b.ReportAllocs()
	for b.Loop() {
		Log(context.Background(), log, c)
	}
}

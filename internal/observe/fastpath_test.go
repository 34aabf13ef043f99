package observe

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"
)

func TestWriteConnIsHandlesLine(t *testing.T) {
	// The text access line has a fast path (writeConn); it must write the
	// very bytes the slog path (Handle of connRecord) writes.
	at := time.Date(2026, 11, 26, 0, 42, 20, 123e6, time.UTC)
	conns := []*Conn{
		{Accepted: at, Client: "203.0.113.7:51234", Listener: "0.0.0.0:8787", Backend: "127.0.0.1:22", Proxy: "0.0.0.0:8787",
			Status: StatusOK, Duration: 12300 * time.Millisecond, Up: 1234, Down: 56789, Connect: 1200 * time.Microsecond, ClosedBy: "client", Relay: "splice"},
		{Accepted: at, ClientAddr: netip.MustParseAddrPort("[2001:db8::7]:443"), Listener: "[::]:8443", Proxy: "web tls",
			Status: StatusConnectFailed, Duration: 5 * time.Second, ClosedBy: "pj", Err: errors.New(`connect to "x": refused`)},
		{Accepted: at, Client: "10.0.0.1:1", Listener: "l", Backend: "b", Proxy: "p", Status: StatusReset, Relay: "copy"},
		{Accepted: at, Client: "192.0.2.9:5353", Listener: "0.0.0.0:53/udp", Backend: "10.0.0.53:53", Proxy: "dns",
			Status: StatusOK, Duration: 800 * time.Microsecond, Up: 40, Down: 120, ClosedBy: "backend",
			Datagrams: true, DatagramsUp: 1, DatagramsDown: 1},
		{Accepted: at, Client: "10.0.0.1:2", Listener: "l", Backend: "b", Proxy: "edge", Route: "app", SNI: "app.example.com",
			Status: StatusOK, Connect: time.Millisecond, ClosedBy: "client", Relay: "copy"},
		{Accepted: at, Client: "10.0.0.1:3", Listener: "l", Proxy: "edge", Status: StatusNoRoute, SNI: "a b", ClosedBy: "pj"},
		{Accepted: at, Client: "10.0.0.1:2", Listener: "l", Backend: "b", Proxy: "p", Status: StatusOK, TLS: "1.3", SNI: "app.example.com",
			Connect: time.Millisecond, ClosedBy: "client", Relay: "copy"},
		{Accepted: at, Client: "10.0.0.1:3", Listener: "l", Proxy: "p", Status: StatusTLSFailed, SNI: "bad name",
			ClosedBy: "pj", Err: errors.New("tls: client offered only unsupported versions")},
	}
	for _, debug := range []bool{false, true} {
		for i, c := range conns {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			var fast, slow bytes.Buffer
			h1 := NewTextHandler(&fast, level).WithAttrs([]slog.Attr{slog.String("node", "edge-1")}).(*TextHandler)
			h2 := NewTextHandler(&slow, level).WithAttrs([]slog.Attr{slog.String("node", "edge-1")})
			if err := h1.writeConn(c, debug); err != nil {
				t.Fatal(err)
			}
			if err := h2.Handle(context.Background(), connRecord(c, debug)); err != nil {
				t.Fatal(err)
			}
			if fast.String() != slow.String() {
				t.Errorf("conn %d (debug %v):\nfast %q\nslow %q", i, debug, fast.String(), slow.String())
			}
		}
	}
}

package balance

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

func TestUDPProbe(t *testing.T) {
	echo := testutil.ServeUDP(t, func(b []byte) []byte { return append([]byte{0xab, 0xcd, 0x81}, b...) })
	silent := testutil.ServeUDP(t, func([]byte) []byte { return nil })
	closed := func() netip.AddrPort {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).AddrPort()
	}()
	for _, tt := range []struct {
		name    string
		addr    netip.AddrPort
		hc      config.HealthCheck
		wantErr string
	}{
		{"reply as expected", echo, config.HealthCheck{SendHex: "0100", ExpectHex: "abcd81"}, ""},
		{"any reply", echo, config.HealthCheck{Send: "x"}, ""},
		{"another reply", echo, config.HealthCheck{Send: "x", Expect: "PONG"}, `expect: the reply hex abcd8178 does not start with "PONG"`},
		{"no reply", silent, config.HealthCheck{Send: "x"}, "expect: timeout after 200ms"},
		{"port unreachable", closed, config.HealthCheck{Send: "x"}, "expect: connection refused"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.hc.Datagrams, tt.hc.Timeout = true, 200*time.Millisecond
			b := &Backend{Address: tt.addr.String(), Addr: tt.addr, State: newState()}
			err := probe(context.Background(), b, tt.hc, 0)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("probe: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("probe: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestTCPProbeHex: send_hex and expect_hex work for TCP checks too.
func TestTCPProbeHex(t *testing.T) {
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err == nil && string(buf) == "\x00\x01" {
			_, _ = c.Write([]byte("\x02\x03ok"))
		}
	})
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	b := &Backend{Address: ap.String(), Addr: ap, State: newState()}
	hc := config.HealthCheck{Timeout: 5 * time.Second, SendHex: "0001", ExpectHex: "0203"}
	if err := probe(context.Background(), b, hc, 0); err != nil {
		t.Fatal(err)
	}
}

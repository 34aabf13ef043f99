package server

import (
	"log/slog"
	"net/netip"
	"testing"
)

func TestInheritedSocketMatchesItsListenAddress(t *testing.T) {
	tests := []struct {
		listen string
		socket string
		match  bool
	}{
		{"127.0.0.1:8080", "127.0.0.1:8080", true},
		{"127.0.0.1:8080", "127.0.0.1:8081", false},
		{"127.0.0.1:8080", "127.0.0.2:8080", false},
		{"127.0.0.1:8080", "0.0.0.0:8080", false}, // a socket of every interface is not one address's
		{"[::1]:8080", "[::1]:8080", true},
		{"[::ffff:127.0.0.1]:8080", "127.0.0.1:8080", true},
		// Every interface, in any spelling, takes a socket of every
		// interface: systemd's ListenStream=8080 is [::]:8080.
		{":8080", "[::]:8080", true},
		{":8080", "0.0.0.0:8080", true},
		{"0.0.0.0:8080", "[::]:8080", true},
		{"[::]:8080", "0.0.0.0:8080", true},
		{"0.0.0.0:8080", "127.0.0.1:8080", false},
		{"localhost:8080", "127.0.0.1:8080", true},
		{"127.0.0.1:0", "127.0.0.1:0", false}, // an ephemeral port is never passed in
		{"not an address", "127.0.0.1:8080", false},
	}
	for _, tt := range tests {
		t.Run(tt.listen+" "+tt.socket, func(t *testing.T) {
			in := &inherited{addr: netip.MustParseAddrPort(tt.socket)}
			s := &Server{log: slog.New(slog.DiscardHandler), inherited: []*inherited{in}}
			got := s.takeInherited(tt.listen, "")
			if (got != nil) != tt.match {
				t.Fatalf("takeInherited(%q) with a socket at %s = %v, want a match: %v", tt.listen, tt.socket, got, tt.match)
			}
			if tt.match && (!in.inUse || s.takeInherited(tt.listen, "") != nil) {
				t.Fatal("a socket taken is in use and not taken twice")
			}
			s.releaseInherited(got)
			if tt.match && s.takeInherited(tt.listen, "") != in {
				t.Fatal("a released socket can be taken again")
			}
		})
	}
}

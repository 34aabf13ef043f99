package config_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

func TestSplitHostPortRoundTrip(t *testing.T) {
	tests := []struct {
		in   string
		host string
		port uint16
		// canonical is what JoinHostPort gives back; empty means in itself.
		canonical string
	}{
		{in: "127.0.0.1:80", host: "127.0.0.1", port: 80},
		{in: "0.0.0.0:0", host: "0.0.0.0", port: 0},
		{in: ":8080", host: "", port: 8080},
		{in: ":0", host: "", port: 0},
		{in: "localhost:65535", host: "localhost", port: 65535},
		{in: "db.example.com.:5432", host: "db.example.com.", port: 5432},
		{in: "_http._tcp.example.com:1", host: "_http._tcp.example.com", port: 1},
		{in: "[::1]:443", host: "::1", port: 443},
		{in: "[::]:0", host: "::", port: 0},
		{in: "[2001:db8::1]:8080", host: "2001:db8::1", port: 8080},
		{in: "[fe80::1%eth0]:80", host: "fe80::1%eth0", port: 80},
		{in: "[::ffff:192.0.2.1]:80", host: "::ffff:192.0.2.1", port: 80},
		{in: "host:080", host: "host", port: 80, canonical: "host:80"},
		{in: "host:00000", host: "host", port: 0, canonical: "host:0"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, port, err := config.SplitHostPort(tt.in)
			if err != nil {
				t.Fatalf("SplitHostPort(%q) = %v", tt.in, err)
			}
			if host != tt.host || port != tt.port {
				t.Fatalf("SplitHostPort(%q) = %q, %d; want %q, %d", tt.in, host, port, tt.host, tt.port)
			}
			want := tt.canonical
			if want == "" {
				want = tt.in
			}
			joined := config.JoinHostPort(host, port)
			if joined != want {
				t.Errorf("JoinHostPort(%q, %d) = %q, want %q", host, port, joined, want)
			}
			// The canonical form is a fixed point.
			h2, p2, err := config.SplitHostPort(joined)
			if err != nil || h2 != host || p2 != port {
				t.Errorf("SplitHostPort(%q) = %q, %d, %v; want %q, %d, nil", joined, h2, p2, err, host, port)
			}
		})
	}
}

func TestJoinHostPort(t *testing.T) {
	tests := []struct {
		host string
		port uint16
		want string
	}{
		{"10.0.0.1", 80, "10.0.0.1:80"},
		{"", 8080, ":8080"},
		{"example.com", 0, "example.com:0"},
		{"::1", 80, "[::1]:80"},
		{"::", 65535, "[::]:65535"},
		{"fe80::1%eth0", 22, "[fe80::1%eth0]:22"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := config.JoinHostPort(tt.host, tt.port); got != tt.want {
				t.Errorf("JoinHostPort(%q, %d) = %q, want %q", tt.host, tt.port, got, tt.want)
			}
		})
	}
}

func TestSplitHostPortInvalid(t *testing.T) {
	tests := []struct {
		in  string
		why string
	}{
		{"", "missing :PORT"},
		{"127.0.0.1", "missing :PORT"},
		{"[::1]", "missing :PORT"},
		{"127.0.0.1:", "missing port number"},
		{"::1:80", "too many ':'"},
		{"host:80:90", "too many ':'"},
		{"[::1]80", `unexpected "80" after the host`},
		{"[::1:80", "missing ']'"},
		{"[127.0.0.1]:80", "is not an IPv6 address"},
		{"300.0.0.1:80", "is not a valid IPv4 address"},
		{"host:http", "not a decimal number"},
		{"host:65536", "out of range"},
		{"host:-1", "not a decimal number"},
		{"a b:80", `unexpected " "`},
		{"-a:80", "starts or ends with '-'"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, port, err := config.SplitHostPort(tt.in)
			if err == nil {
				t.Fatalf("SplitHostPort(%q) = %q, %d; want an error", tt.in, host, port)
			}
			if !errors.Is(err, config.ErrAddress) {
				t.Errorf("error %v does not wrap ErrAddress", err)
			}
			if !strings.Contains(err.Error(), strconv.Quote(tt.in)) {
				t.Errorf("error %q does not name the input %q", err, tt.in)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not give the reason %q", err, tt.why)
			}
			if host != "" || port != 0 {
				t.Errorf("SplitHostPort(%q) returned %q, %d with its error", tt.in, host, port)
			}
		})
	}
}

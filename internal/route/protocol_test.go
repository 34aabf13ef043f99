package route

import "testing"

func TestProtocolFirstBytes(t *testing.T) {
	cases := []struct {
		name string
		b    string
		want [numProtocols]tri // per protocol; ProtocolUnknown unused
	}{
		{"nothing yet", "", [numProtocols]tri{0, unknown, unknown, unknown, unknown}},
		{"tls record", "\x16\x03\x01\x02\x00\x01", [numProtocols]tri{0, holds, fails, fails, fails}},
		{"tls first byte", "\x16", [numProtocols]tri{0, unknown, fails, fails, fails}},
		{"tls 1.3 record version", "\x16\x03\x03", [numProtocols]tri{0, holds, fails, fails, fails}},
		{"not tls: sslv2", "\x80\x2e\x01", [numProtocols]tri{0, fails, fails, fails, fails}},
		{"ssh banner", "SSH-2.0-OpenSSH_9.2p1\r\n", [numProtocols]tri{0, fails, holds, fails, fails}},
		{"ssh prefix", "SSH", [numProtocols]tri{0, fails, unknown, fails, fails}},
		{"ssh lower case", "ssh-2.0", [numProtocols]tri{0, fails, fails, fails, fails}},
		{"http get", "GET / HTTP/1.1\r\n", [numProtocols]tri{0, fails, fails, holds, fails}},
		{"http post", "POST /x HTTP/1.1\r\n", [numProtocols]tri{0, fails, fails, holds, fails}},
		{"http options", "OPTIONS * HTTP/1.1\r\n", [numProtocols]tri{0, fails, fails, holds, fails}},
		{"http/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [numProtocols]tri{0, fails, fails, holds, fails}},
		{"http method prefix", "DEL", [numProtocols]tri{0, fails, fails, unknown, fails}},
		{"p: put, post, patch or pri", "P", [numProtocols]tri{0, fails, fails, unknown, fails}},
		{"method without a space", "GETX", [numProtocols]tri{0, fails, fails, fails, fails}},
		{"smtp command", "EHLO x\r\n", [numProtocols]tri{0, fails, fails, fails, fails}},
		{"postgres ssl request", "\x00\x00\x00\x08\x04\xd2\x16\x2f", [numProtocols]tri{0, fails, fails, fails, holds}},
		{"postgres gssenc request", "\x00\x00\x00\x08\x04\xd2\x16\x30", [numProtocols]tri{0, fails, fails, fails, holds}},
		{"postgres cancel request", "\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x01\x00\x00\x00\x02", [numProtocols]tri{0, fails, fails, fails, holds}},
		{"postgres startup 3.0", string(startup()), [numProtocols]tri{0, fails, fails, fails, holds}},
		{"postgres startup 3.2", "\x00\x00\x00\x09\x00\x03\x00\x02\x00", [numProtocols]tri{0, fails, fails, fails, holds}},
		{"postgres, 7 bytes", "\x00\x00\x00\x08\x04\xd2\x16", [numProtocols]tri{0, fails, fails, fails, unknown}},
		{"postgres protocol 2", "\x00\x00\x01\x28\x00\x02\x00\x00", [numProtocols]tri{0, fails, fails, fails, fails}},
		{"postgres startup too long", "\x00\x00\x27\x11\x00\x03\x00\x00", [numProtocols]tri{0, fails, fails, fails, fails}},
		{"zero bytes", "\x00\x00\x00\x00\x00\x00\x00\x00", [numProtocols]tri{0, fails, fails, fails, fails}},
		{"large length", "\x00\x01\x00\x00", [numProtocols]tri{0, fails, fails, fails, fails}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for p := ProtocolTLS; p < numProtocols; p++ {
				if got := is(p, []byte(tc.b)); got != tc.want[p] {
					t.Errorf("%s: %d, want %d", p, got, tc.want[p])
				}
			}
			want := ProtocolUnknown
			for p := ProtocolTLS; p < numProtocols; p++ {
				if tc.want[p] == holds {
					want = p
				}
			}
			if got := detect([]byte(tc.b)); got != want {
				t.Errorf("detect = %q, want %q", got, want)
			}
		})
	}
}

func TestParseProtocol(t *testing.T) {
	if got := ProtocolNames(); len(got) != int(numProtocols)-1 || got[0] != "tls" || got[3] != "postgres" {
		t.Errorf("ProtocolNames = %q", got)
	}
	for p := ProtocolTLS; p < numProtocols; p++ {
		got, err := ParseProtocol(p.String())
		if err != nil || got != p {
			t.Errorf("ParseProtocol(%q) = %v, %v", p.String(), got, err)
		}
	}
	for _, s := range []string{"", "TLS", "https", "mysql"} {
		if _, err := ParseProtocol(s); err == nil {
			t.Errorf("ParseProtocol(%q) took it", s)
		}
	}
}

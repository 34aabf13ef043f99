package route

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Protocol is what a client speaks, as told by its first bytes.
type Protocol uint8

// The protocols pj recognises. ProtocolUnknown is the zero value: in a
// Match it means "any protocol", in a Decision "none of these".
const (
	ProtocolUnknown  Protocol = iota
	ProtocolTLS               // a TLS handshake record: 0x16 0x03
	ProtocolSSH               // the identification string: "SSH-"
	ProtocolHTTP              // an HTTP/1 request line or the HTTP/2 preface
	ProtocolPostgres          // a PostgreSQL client's first message
	numProtocols
)

var protocolNames = [numProtocols]string{"", "tls", "ssh", "http", "postgres"}

// String is the protocol's name in configuration files and logs ("" for
// ProtocolUnknown).
func (p Protocol) String() string {
	if p < numProtocols {
		return protocolNames[p]
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// ProtocolNames lists the names a Match's protocol may be given by.
func ProtocolNames() []string { return slices.Clone(protocolNames[ProtocolTLS:]) }

// ParseProtocol is the inverse of String for the four protocols.
func ParseProtocol(s string) (Protocol, error) {
	for p := ProtocolTLS; p < numProtocols; p++ {
		if s == protocolNames[p] {
			return p, nil
		}
	}
	return ProtocolUnknown, fmt.Errorf("unknown protocol %q: want tls, ssh, http or postgres", s)
}

// tri is the answer of a test on a prefix of the stream: it holds, it
// fails, or more bytes are needed to tell.
type tri uint8

const (
	unknown tri = iota
	holds
	fails
)

// PostgreSQL's first messages (protocol.h in the PostgreSQL sources): a
// length, then a code that is either a protocol version (major 3) or one
// of the request codes, which borrow the impossible major version 1234.
const (
	pgSSLRequest    = 1234<<16 | 5679
	pgGSSENCRequest = 1234<<16 | 5680
	pgCancelRequest = 1234<<16 | 5678
	// The server refuses a startup packet longer than this
	// (MAX_STARTUP_PACKET_LENGTH).
	pgMaxStartup = 10000
)

// httpMethods are the request methods whose line, followed by a space,
// marks an HTTP/1 client; "PRI" starts HTTP/2's connection preface.
var httpMethods = [...]string{
	"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ", "OPTIONS ",
	"TRACE ", "PATCH ", "PRI ",
}

// is tells whether b, the first bytes of a stream, begin protocol p.
func is(p Protocol, b []byte) tri {
	switch p {
	case ProtocolTLS:
		return prefixed(b, "\x16\x03")
	case ProtocolSSH:
		// RFC 4253 4.2: the client's first line is its identification
		// string (only a server may send other lines before it).
		return prefixed(b, "SSH-")
	case ProtocolHTTP:
		verdict := fails
		for _, m := range httpMethods {
			switch prefixed(b, m) {
			case holds:
				return holds
			case unknown:
				verdict = unknown
			}
		}
		return verdict
	case ProtocolPostgres:
		return isPostgres(b)
	}
	return fails
}

// prefixed tells whether b starts with s, or may once more bytes come.
func prefixed(b []byte, s string) tri {
	n := min(len(b), len(s))
	switch {
	case string(b[:n]) != s[:n]:
		return fails
	case n < len(s):
		return unknown
	}
	return holds
}

// isPostgres reads the first eight bytes as a PostgreSQL client's first
// message: an SSLRequest, a GSSENCRequest, a CancelRequest or a
// StartupMessage of protocol 3.x.
func isPostgres(b []byte) tri {
	// Every length pj accepts is below 65536, so the first two bytes are
	// zero: a client whose first byte is not zero is no Postgres client.
	for i := 0; i < min(len(b), 2); i++ {
		if b[i] != 0 {
			return fails
		}
	}
	if len(b) < 8 {
		return unknown
	}
	n := binary.BigEndian.Uint32(b[0:4])
	code := binary.BigEndian.Uint32(b[4:8])
	switch {
	case n == 8 && (code == pgSSLRequest || code == pgGSSENCRequest):
		return holds
	case n == 16 && code == pgCancelRequest:
		return holds
	case n >= 8 && n <= pgMaxStartup && code>>16 == 3:
		return holds
	}
	return fails
}

// pgRequest returns the request code if b starts with an eight-byte
// SSLRequest or GSSENCRequest, else 0.
func pgRequest(b []byte) uint32 {
	if len(b) < 8 || binary.BigEndian.Uint32(b[0:4]) != 8 {
		return 0
	}
	switch code := binary.BigEndian.Uint32(b[4:8]); code {
	case pgSSLRequest, pgGSSENCRequest:
		return code
	}
	return 0
}

// detect names the protocol b begins, or ProtocolUnknown when none holds
// yet. The signatures are disjoint, so at most one holds.
func detect(b []byte) Protocol {
	for p := ProtocolTLS; p < numProtocols; p++ {
		if is(p, b) == holds {
			return p
		}
	}
	return ProtocolUnknown
}

package route

import (
	"crypto/tls"
	"errors"
	"net"
	"time"
)

// MaxPeek is the most a connection's first bytes pj reads to decide: a
// ClientHello whose records do not fit (with what comes before them, such
// as a PostgreSQL SSLRequest) is unreadable. Hellos with post-quantum key
// shares take about 1.8 KiB; 16 KiB leaves room for large extensions
// (many ALPN names, session tickets, ECH) and is a TLS record's maximum.
const MaxPeek = 16 << 10

// TLS record and handshake constants (RFC 8446 5.1 and 4).
const (
	recordHandshake  = 22
	recordHeaderLen  = 5
	maxRecordLen     = 1 << 14 // a plaintext record carries at most 2^14 bytes
	handshakeHeadLen = 4
	typeClientHello  = 1
)

// helloState is where reading a ClientHello stands.
type helloState uint8

const (
	helloPartial helloState = iota // its records are not all here yet
	helloDone                      // read: sni and alpn hold what it offered
	helloBad                       // not a ClientHello pj can read
)

// hello reads one ClientHello from a stream that grows between calls.
//
// Deciding when the hello is whole is a walk over record headers that
// resumes where the last call stopped: a hello split over many segments
// costs a few comparisons per segment, not a parse. Once its records are
// all here, the standard library parses it (see parseHello), once.
type hello struct {
	state helloState
	next  int                    // offset of the first record not yet walked
	got   int                    // handshake bytes in the records walked
	head  [handshakeHeadLen]byte // the handshake header, which may span records
	want  int                    // 4 + the hello's length, once head is whole

	sni  string
	alpn []string
}

// read advances over b, the stream from the hello's first byte; limit is
// how many bytes of it pj will ever hold.
func (h *hello) read(b []byte, limit int) helloState {
	if h.next > len(b) {
		h.state = helloBad // not the stream of the last call
	}
	for h.state == helloPartial {
		if h.want > 0 && h.got >= h.want {
			h.finish(b[:h.next])
			break
		}
		if len(b)-h.next < recordHeaderLen {
			if h.next+recordHeaderLen > limit {
				h.state = helloBad
			}
			break
		}
		rec := b[h.next:]
		n := int(rec[3])<<8 | int(rec[4])
		// Only handshake records may carry the hello, none empty (RFC
		// 8446 5.1), none longer than a plaintext record may be.
		if rec[0] != recordHandshake || rec[1] != 3 || n == 0 || n > maxRecordLen ||
			h.next+recordHeaderLen+n > limit {
			h.state = helloBad
			break
		}
		if len(rec) < recordHeaderLen+n {
			break
		}
		data := rec[recordHeaderLen : recordHeaderLen+n]
		for h.got < handshakeHeadLen && len(data) > 0 {
			h.head[h.got] = data[0]
			data = data[1:]
			h.got++
		}
		h.got += len(data)
		h.next += recordHeaderLen + n
		if h.want == 0 && h.got >= handshakeHeadLen {
			if h.head[0] != typeClientHello {
				h.state = helloBad
				break
			}
			h.want = handshakeHeadLen + (int(h.head[1])<<16 | int(h.head[2])<<8 | int(h.head[3]))
			// Each record adds its header, so a hello this long cannot fit.
			if h.want > limit {
				h.state = helloBad
			}
		}
	}
	return h.state
}

// finish parses the whole hello in b.
func (h *hello) finish(b []byte) {
	r := replay{b: b}
	// The handshake always fails: captureHello stops it once the hello is
	// read, and anything the server would send goes nowhere (see Write).
	_ = tls.Server(&r, helloConfig).Handshake()
	if !r.seen {
		h.state = helloBad
		return
	}
	h.state, h.sni, h.alpn = helloDone, r.sni, r.alpn
}

// helloConfig is shared by every parse: it holds no state, and
// GetConfigForClient finds the connection's replay through the hello.
var helloConfig = &tls.Config{GetConfigForClient: captureHello}

// errHelloRead stops the handshake once the hello is read.
var errHelloRead = errors.New("route: hello read")

// captureHello takes what routing needs from a parsed ClientHello and
// stops the handshake. crypto/tls calls it after the hello parsed and
// before it negotiates anything, so a hello that no server of this
// process would accept (old versions, unknown ciphers) is still read.
func captureHello(info *tls.ClientHelloInfo) (*tls.Config, error) {
	if r, ok := info.Conn.(*replay); ok {
		r.seen, r.sni, r.alpn = true, info.ServerName, info.SupportedProtos
	}
	return nil, errHelloRead
}

// replay is a net.Conn that reads the bytes of one ClientHello and goes
// nowhere: Write fails, so a parse can never answer the client.
type replay struct {
	b    []byte
	seen bool
	sni  string
	alpn []string
}

var errReplay = errors.New("route: a replayed hello cannot be written to")

func (r *replay) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		// The walk over the records said the hello was whole; a parser
		// that wants more disagrees with it, and the hello is unreadable.
		return 0, net.ErrClosed
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func (r *replay) Write([]byte) (int, error)        { return 0, errReplay }
func (r *replay) Close() error                     { return nil }
func (r *replay) LocalAddr() net.Addr              { return replayAddr{} }
func (r *replay) RemoteAddr() net.Addr             { return replayAddr{} }
func (r *replay) SetDeadline(time.Time) error      { return nil }
func (r *replay) SetReadDeadline(time.Time) error  { return nil }
func (r *replay) SetWriteDeadline(time.Time) error { return nil }

type replayAddr struct{}

func (replayAddr) Network() string { return "replay" }
func (replayAddr) String() string  { return "replay" }

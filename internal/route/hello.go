package route

import "slices"

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
// all here, parseHello reads it, once.
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
		// 8446 5.1), none longer than a plaintext record may be. Before a
		// version is agreed the record's version is not checked beyond
		// being below 0x1000 (RFC 8446 5.1 asks receivers to ignore it;
		// crypto/tls refuses only that), so this refuses no more.
		if rec[0] != recordHandshake || rec[1] >= 0x10 || n == 0 || n > maxRecordLen ||
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

// finish reads the server name and the offered protocols of the hello,
// whose records b holds whole.
func (h *hello) finish(b []byte) {
	sni, alpn, ok := parseHello(helloBytes(b, h.want))
	if !ok {
		h.state = helloBad
		return
	}
	h.state, h.sni, h.alpn = helloDone, sni, alpn
}

// helloBytes returns the first want handshake bytes that the records of
// b carry: in place when the first record holds them all, as it does for
// every common client; else joined in a new slice.
func helloBytes(b []byte, want int) []byte {
	n := int(b[3])<<8 | int(b[4])
	if n >= want {
		return b[recordHeaderLen : recordHeaderLen+want]
	}
	out := make([]byte, 0, want)
	for len(out) < want {
		n := int(b[3])<<8 | int(b[4])
		out = append(out, b[recordHeaderLen:recordHeaderLen+min(n, want-len(out))]...)
		b = b[recordHeaderLen+n:]
	}
	return out
}

// TLS extension types (RFC 6066 3, RFC 7301 3.1).
const (
	extServerName = 0
	extALPN       = 16
)

// parseHello reads the server name and the ALPN protocols of msg, a
// ClientHello handshake message (RFC 8446 4.1.2; RFC 5246 7.4.1.2 for
// TLS 1.2 and before). It checks the message's structure whole, that no
// extension comes twice (RFC 8446 4.2), and the two extensions it reads
// as crypto/tls does (one host name, not ending in a dot; non-empty
// protocol names); what crypto/tls checks in the extensions routing does
// not read is the backend's to check, which does the handshake. A test
// holds it to crypto/tls's parser: whatever crypto/tls reads, this reads
// the same.
func parseHello(msg []byte) (sni string, alpn []string, ok bool) {
	s := reader(msg)
	var typ uint8
	var length uint32
	if !s.u8(&typ) || typ != typeClientHello || !s.u24(&length) || int(length) != len(s) ||
		!s.skip(2+32) || // legacy_version, random
		!s.skip8() { // legacy_session_id
		return "", nil, false
	}
	var suites reader
	if !s.prefixed16(&suites) || len(suites)%2 != 0 || !s.skip8() { // cipher_suites, legacy_compression_methods
		return "", nil, false
	}
	if len(s) == 0 {
		return "", nil, true // no extensions
	}
	var exts reader
	if !s.prefixed16(&exts) || len(s) != 0 {
		return "", nil, false
	}
	// Extension types below 64 (all that common clients send but GREASE,
	// renegotiation_info and ECH) are bits of low; the others are listed in
	// high, to be checked once, sorted: thousands of them in a hostile
	// hello cost n log n, not n².
	var low uint64
	var buf [16]uint16
	high := buf[:0]
	for len(exts) > 0 {
		var typ uint16
		var data reader
		if !exts.u16(&typ) || !exts.prefixed16(&data) {
			return "", nil, false
		}
		switch {
		case typ >= 64:
			high = append(high, typ)
		case low&(1<<typ) != 0:
			return "", nil, false
		default:
			low |= 1 << typ
		}
		switch typ {
		case extServerName:
			var names reader
			if !data.onlyList16(&names) || !serverName(names, &sni) {
				return "", nil, false
			}
		case extALPN:
			var protos reader
			if !data.onlyList16(&protos) || !protocols(protos, &alpn) {
				return "", nil, false
			}
		}
	}
	if repeats(high) {
		return "", nil, false
	}
	return sni, alpn, true
}

// repeats reports whether a value comes twice in types, which it sorts
// (and compacts).
func repeats(types []uint16) bool {
	slices.Sort(types)
	return len(slices.Compact(types)) != len(types)
}

// serverName reads a server_name list (RFC 6066 3) into sni: its one
// host name, which may not end in a dot; names of other types are
// skipped.
func serverName(list reader, sni *string) bool {
	for len(list) > 0 {
		var nameType uint8
		var name reader
		if !list.u8(&nameType) || !list.prefixed16(&name) || len(name) == 0 {
			return false
		}
		if nameType != 0 { // not a host_name
			continue
		}
		if *sni != "" || name[len(name)-1] == '.' {
			return false
		}
		*sni = string(name)
	}
	return true
}

// protocols reads a protocol_name_list (RFC 7301 3.1) into alpn: names
// of 1 to 255 bytes.
func protocols(list reader, alpn *[]string) bool {
	for len(list) > 0 {
		var proto reader
		if !list.prefixed8(&proto) || len(proto) == 0 {
			return false
		}
		*alpn = append(*alpn, string(proto))
	}
	return true
}

// reader reads big-endian fields from the front of a byte slice; each
// method reports false, reading nothing, when the slice is too short.
type reader []byte

func (r *reader) u8(v *uint8) bool {
	if len(*r) < 1 {
		return false
	}
	*v, *r = (*r)[0], (*r)[1:]
	return true
}

func (r *reader) u16(v *uint16) bool {
	if len(*r) < 2 {
		return false
	}
	*v, *r = uint16((*r)[0])<<8|uint16((*r)[1]), (*r)[2:]
	return true
}

func (r *reader) u24(v *uint32) bool {
	if len(*r) < 3 {
		return false
	}
	*v, *r = uint32((*r)[0])<<16|uint32((*r)[1])<<8|uint32((*r)[2]), (*r)[3:]
	return true
}

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

// prefixed8 and prefixed16 read a field of as many bytes as its 8- or
// 16-bit length prefix says.
func (r *reader) prefixed8(v *reader) bool {
	var n uint8
	return r.u8(&n) && r.bytes(int(n), v)
}

func (r *reader) prefixed16(v *reader) bool {
	var n uint16
	return r.u16(&n) && r.bytes(int(n), v)
}

// onlyList16 reads into v the whole of an extension's body, one non-empty
// list with a 16-bit length.
func (r *reader) onlyList16(v *reader) bool {
	return r.prefixed16(v) && len(*v) > 0 && len(*r) == 0
}

func (r *reader) skip8() bool {
	var v reader
	return r.prefixed8(&v)
}

func (r *reader) bytes(n int, v *reader) bool {
	if len(*r) < n {
		return false
	}
	*v, *r = (*r)[:n], (*r)[n:]
	return true
}

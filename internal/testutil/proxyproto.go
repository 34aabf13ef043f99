package testutil

import (
	"encoding/binary"
	"hash/crc32"
	"net"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// ProxyV2 builds a PROXY protocol v2 header from 203.0.113.7:51234 to
// 127.0.0.1:8080 with the given TLVs (raw bytes, as a sender may get them
// wrong), and appends a CRC32c TLV (type 0x03) over the whole header when
// crc is true.
func ProxyV2(t testing.TB, tlvs []byte, crc bool) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(2,
		&net.TCPAddr{IP: net.IPv4(203, 0, 113, 7).To4(), Port: 51234},
		&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1).To4(), Port: 8080})
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	crcAt := -1
	if crc {
		crcAt = len(b) + len(tlvs) + 3
		tlvs = append(tlvs, 0x03, 0x00, 0x04, 0, 0, 0, 0)
	}
	b = append(b, tlvs...)
	binary.BigEndian.PutUint16(b[14:16], uint16(len(b)-16))
	if crcAt >= 0 {
		binary.BigEndian.PutUint32(b[crcAt:], crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
	}
	return b
}

// Package route decides which of a proxy's routes takes a connection,
// from the client's address and the first bytes it sends: the server name
// and protocols of a TLS ClientHello, the protocol its first bytes speak
// (TLS, SSH, HTTP, PostgreSQL), the range its address is in.
//
// It does no I/O. A Table is built once per proxy from its routes'
// matches; each connection gets a Decider, and the engine's event loop
// calls Decide with every byte read so far until it decides:
//
//	d.Reset(table, clientAddr)
//	dec, more := d.Decide(nil, false, false) // routes that need no bytes decide here
//	for more {
//		write dec.Reply to the client, if any
//		read (at most MaxPeek bytes in all) until readable, EOF or the match timeout
//		dec, more = d.Decide(buf, eof, timedOut)
//	}
//
// then sends the backend what Decision says, in order, and relays.
//
// A walk over the record headers, resumed at each call, tells when a
// ClientHello's records are all here, so a hello split over many
// segments or records is parsed once; the parse reads the server name
// and the offered protocols without allocating more than they take, and
// tests hold it to crypto/tls's own parser on real and fuzzed hellos.
package route

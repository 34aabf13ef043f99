package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// The sni mode measures connections routed by the server name of a TLS
// ClientHello: each cycle connects, sends a real ClientHello (the first
// flight of Go's TLS client, post-quantum key share included, as browsers
// send it), reads the backend's canned answer, and closes. A proxy must
// read the whole hello, pick the route of sniName, and relay the hello and
// the answer; nothing is decrypted anywhere.

// sniName is the server name of the hello; a target routes it to the
// backend, and any other name elsewhere.
const sniName = "bench.example.com"

// hdrTLS is the first byte of a TLS handshake record: the backend answers
// a ClientHello with tlsAnswer.
const hdrTLS = 0x16

// tlsAnswerLen is the size of the backend's canned answer, about a
// ServerHello and a short certificate chain.
const tlsAnswerLen = 1200

// tlsAnswer is a handshake record of tlsAnswerLen bytes whose body is
// the pattern's start.
func tlsAnswer(p *pattern) []byte {
	body := p.at(0, tlsAnswerLen-5)
	out := []byte{hdrTLS, 3, 3, 0, 0}
	binary.BigEndian.PutUint16(out[3:], uint16(len(body)))
	return append(out, body...)
}

// clientHello is the first flight of a crypto/tls client asking for
// sniName, captured by a connection that records writes and has nothing
// to read: the handshake stops right after the hello.
func clientHello() ([]byte, error) {
	rec := &helloRecorder{}
	_ = tls.Client(rec, &tls.Config{ServerName: sniName, NextProtos: []string{"h2", "http/1.1"}}).Handshake()
	if len(rec.out) < 5 || rec.out[0] != hdrTLS {
		return nil, errors.New("crypto/tls wrote no ClientHello")
	}
	return rec.out, nil
}

type helloRecorder struct {
	net.Conn // nil: the TLS client calls only Read, Write and deadlines
	out      []byte
}

func (r *helloRecorder) Write(b []byte) (int, error)      { r.out = append(r.out, b...); return len(b), nil }
func (r *helloRecorder) Read([]byte) (int, error)         { return 0, io.EOF }
func (r *helloRecorder) SetDeadline(time.Time) error      { return nil }
func (r *helloRecorder) SetWriteDeadline(time.Time) error { return nil }

// runSNI is conn with a ClientHello for the byte and the canned answer
// for the echo.
func runSNI(ctx context.Context, cfg *runConfig, r *result) error {
	hello, err := clientHello()
	if err != nil {
		return err
	}
	answer := tlsAnswer(cfg.pat)
	r.set("hello_bytes", len(hello))
	_, err = runCycles(ctx, cfg, r, connFigures, func() cycler {
		return cycler{dial: cfg.dial, exchange: helloExchange(hello, answer)}
	})
	return err
}

// helloExchange is the exchange of sni: the ClientHello, and the canned
// answer.
func helloExchange(hello, answer []byte) func(net.Conn) error {
	return func(c net.Conn) error {
		if _, err := c.Write(hello); err != nil {
			return fmt.Errorf("write the ClientHello: %w", err)
		}
		got := make([]byte, len(answer))
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("read the answer: %w", err)
		}
		if !bytes.Equal(got, answer) {
			return errors.New("the answer came back altered")
		}
		return nil
	}
}

// answerHello reads the rest of the ClientHello record that first starts
// (the bytes already read), answers it with the canned answer, then reads
// until the client closes.
func (b *backend) answerHello(c net.Conn, first []byte) error {
	head := make([]byte, 5)
	n := copy(head, first)
	if n < 5 {
		if _, err := io.ReadFull(c, head[n:]); err != nil {
			return err
		}
	}
	want := 5 + int(binary.BigEndian.Uint16(head[3:5]))
	if have := len(first); have < want {
		if _, err := io.CopyN(io.Discard, c, int64(want-max(have, 5))); err != nil {
			return err
		}
	}
	if _, err := c.Write(tlsAnswer(b.pat)); err != nil {
		return err
	}
	_, err := io.Copy(io.Discard, c)
	return err
}

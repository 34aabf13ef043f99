package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// The TLS modes measure what terminating TLS costs a target. The generator
// is the TLS client; the target terminates with an ECDSA P-256 certificate
// (made by "loadgen cert") and relays plaintext to the backend. The client
// offers only X25519 and TLS 1.3, so every target does the same work.
//
//	tlsfull    workers loop connect → full handshake → 1-byte echo → close
//	           (a cycling mode, as conn)
//	tlsresume  the same, resuming a session each time after a worker's first
//	tlsbulk    up through TLS connections

// tlsDialer returns the dial of the TLS modes: connect, and complete a
// handshake within dialTimeout as the client described above. Each
// dialer has a client configuration of its own; cache, if not nil, lets
// its handshakes resume.
func (cfg *runConfig) tlsDialer(cache tls.ClientSessionCache) func(context.Context) (net.Conn, error) {
	tc := &tls.Config{
		ServerName:         cfg.tlsName,
		RootCAs:            cfg.tlsRoots,
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		ClientSessionCache: cache,
	}
	return func(ctx context.Context) (net.Conn, error) {
		raw, err := cfg.dial(ctx)
		if err != nil {
			return nil, err
		}
		c := tls.Client(raw, tc)
		hctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		if err := c.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		return c, nil
	}
}

// runTLSHandshakes is tlsfull (resume false) and tlsresume: the cycles of
// conn, each with a handshake. Reading the echo also reads the session
// ticket that follows the server's handshake in TLS 1.3.
func runTLSHandshakes(ctx context.Context, cfg *runConfig, r *result, resume bool) error {
	var resumed atomic.Int64
	done, err := runCycles(ctx, cfg, r, handshakeFigures, func() cycler {
		var cache tls.ClientSessionCache
		if resume {
			cache = tls.NewLRUClientSessionCache(1)
		}
		echo := echoByte('c')
		return cycler{
			dial: cfg.tlsDialer(cache),
			exchange: func(c net.Conn) error {
				if err := echo(c); err != nil {
					return err
				}
				if t, ok := c.(*tls.Conn); ok && t.ConnectionState().DidResume {
					resumed.Add(1)
				}
				return nil
			},
		}
	})
	if err != nil {
		return err
	}
	r.set("resumed", resumed.Load())
	// A worker's first handshake cannot resume.
	if n := int(resumed.Load()); resume && n < done-cfg.connWorkers {
		return fmt.Errorf("only %d of %d handshakes resumed: the target does not resume TLS 1.3 sessions", n, done)
	}
	return nil
}

// cmdCert writes what the TLS targets serve and the generator trusts: a CA
// (ca.pem), an ECDSA P-256 certificate for -name signed by it with its key
// (cert.pem, key.pem), and both in one file (bundle.pem, as HAProxy's crt
// wants them).
func cmdCert(args []string, stderr io.Writer) error {
	fs := newFlags("cert", stderr)
	dir := fs.String("dir", "", "directory to write ca.pem, cert.pem, key.pem and bundle.pem in")
	name := fs.String("name", "bench.pj.test", "the certificate's DNS name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("cert: -dir is required")
	}
	ca, caKey, caDER, err := issue(&x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pj bench CA"},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil)
	if err != nil {
		return fmt.Errorf("cert: the CA: %w", err)
	}
	_, key, der, err := issue(&x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: *name}, DNSNames: []string{*name},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	if err != nil {
		return fmt.Errorf("cert: %s: %w", *name, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	for file, data := range map[string][]byte{
		"ca.pem": caPEM, "cert.pem": certPEM, "key.pem": keyPEM, "bundle.pem": append(append([]byte{}, certPEM...), keyPEM...),
	} {
		if err := os.WriteFile(filepath.Join(*dir, file), data, 0o600); err != nil {
			return fmt.Errorf("cert: %w", err)
		}
	}
	return nil
}

// issue makes an ECDSA P-256 key and a certificate for it from tmpl,
// valid from an hour ago for 30 days and signed by parent's key (by its
// own when parent is nil). It returns the certificate, parsed and in DER,
// and the key.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	now := time.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(30*24*time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return cert, key, der, nil
}

// loadRoots reads the CA file of the TLS modes.
func loadRoots(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("-tls-ca: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("-tls-ca %s: no PEM certificate in it", file)
	}
	return p, nil
}

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
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The TLS modes measure what terminating TLS costs a target. The generator
// is the TLS client; the target terminates with an ECDSA P-256 certificate
// (made by "loadgen cert") and relays plaintext to the backend. The client
// offers only X25519 and TLS 1.3, so every target does the same work.
//
//	tlsfull    workers loop connect → full handshake → 1-byte echo → close
//	tlsresume  the same, resuming a session each time after a worker's first
//	tlsbulk    cfg.streams connections upload the pattern, as up does

// tlsClientConfig is the client side of the TLS modes; cache, if not nil,
// lets handshakes resume.
func (cfg *runConfig) tlsClientConfig(cache tls.ClientSessionCache) *tls.Config {
	return &tls.Config{
		ServerName:         cfg.tlsName,
		RootCAs:            cfg.tlsRoots,
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		ClientSessionCache: cache,
	}
}

// dialTLS connects and completes a handshake within dialTimeout.
func (cfg *runConfig) dialTLS(ctx context.Context, tc *tls.Config) (*tls.Conn, error) {
	raw, err := cfg.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
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

// runTLSHandshakes is tlsfull (resume false) and tlsresume.
func runTLSHandshakes(ctx context.Context, cfg *runConfig, r *result, resume bool) error {
	before, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	start := time.Now()
	deadline := start.Add(cfg.duration)
	outs := make([]tally, cfg.connWorkers)
	resumedBy := make([]int, cfg.connWorkers)
	var wg sync.WaitGroup
	for w := range outs {
		wg.Go(func() {
			o := newTally()
			var cache tls.ClientSessionCache
			if resume {
				cache = tls.NewLRUClientSessionCache(1)
			}
			tc := cfg.tlsClientConfig(cache)
			for i := 0; i < maxCycles && time.Now().Before(deadline); i++ {
				t0 := time.Now()
				did, err := tlsCycle(ctx, cfg, tc)
				if err != nil {
					o.fail(err)
					continue
				}
				if did {
					resumedBy[w]++
				}
				o.samples = append(o.samples, time.Since(t0))
			}
			o.end = time.Now()
			outs[w] = o
		})
	}
	wg.Wait()
	after, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	t := sum(outs, start)
	all, nerr, firstErr := t.samples, t.errors, t.firstErr
	resumed := 0
	for _, n := range resumedBy {
		resumed += n
	}
	if len(all) == 0 {
		return fmt.Errorf("no handshake completed (%d failed, the first: %w)", nerr, firstErr)
	}
	if resume && resumed < len(all)-cfg.connWorkers {
		return fmt.Errorf("only %d of %d handshakes resumed: the target does not resume TLS 1.3 sessions", resumed, len(all))
	}
	elapsed := t.end.Sub(start).Seconds()
	l := summarise(all)
	cpu := after - before
	r.set("hps", float64(len(all))/elapsed)
	r.set("p50_us", l.p50)
	r.set("p99_us", l.p99)
	r.set("errors", nerr)
	r.setCPU("cpu_s_per_1k_hs", cpu*1000/float64(len(all)), cfg.measured())
	r.set("handshakes", len(all))
	r.set("resumed", resumed)
	r.set("workers", cfg.connWorkers)
	r.set("elapsed_s", elapsed)
	r.setCPU("cpu_s", cpu, cfg.measured())
	if firstErr != nil {
		r.set("first_error", firstErr.Error())
	}
	return nil
}

// tlsCycle is one connect → handshake → 1-byte echo → close; it reports
// whether the handshake resumed a session.
func tlsCycle(ctx context.Context, cfg *runConfig, tc *tls.Config) (bool, error) {
	c, err := cfg.dialTLS(ctx, tc)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(cycleTimeout)); err != nil {
		return false, err
	}
	if _, err := c.Write([]byte{'c'}); err != nil {
		return false, fmt.Errorf("write: %w", err)
	}
	// Reading the echo also reads the session ticket that follows the
	// server's handshake in TLS 1.3.
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return false, fmt.Errorf("read the echo: %w", err)
	}
	if b[0] != 'c' {
		return false, errors.New("the echo came back altered")
	}
	return c.ConnectionState().DidResume, nil
}

// runTLSBulk is tlsbulk: up through TLS connections.
func runTLSBulk(ctx context.Context, cfg *runConfig, r *result) error {
	conns := make([]*tls.Conn, cfg.streams)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	tc := cfg.tlsClientConfig(nil)
	for i := range conns {
		c, err := cfg.dialTLS(ctx, tc)
		if err != nil {
			return fmt.Errorf("open stream %d: %w", i, err)
		}
		conns[i] = c
		verify := byte(0)
		if i == 0 {
			verify = 1
		}
		if err := c.SetWriteDeadline(time.Now().Add(dialTimeout)); err != nil {
			return err
		}
		if _, err := c.Write([]byte{hdrSink, verify}); err != nil {
			return fmt.Errorf("open stream %d: write header: %w", i, err)
		}
	}
	before, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	start := time.Now()
	deadline := start.Add(cfg.duration)
	bytes := make([]int64, len(conns))
	ends := make([]time.Time, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			bytes[i], errs[i] = uploadTLS(c, cfg.pat, deadline)
			ends[i] = time.Now()
			if errs[i] != nil {
				errs[i] = fmt.Errorf("stream %d: %w", i, errs[i])
			}
		})
	}
	wg.Wait()
	after, err := cfg.cpuSeconds()
	if err != nil {
		return err
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var total int64
	end := start
	for i := range conns {
		total += bytes[i]
		if ends[i].After(end) {
			end = ends[i]
		}
	}
	if total == 0 {
		return errors.New("no byte went through in the measured time")
	}
	elapsed := end.Sub(start).Seconds()
	cpu := after - before
	r.set("gbps", float64(total)*8/elapsed/1e9)
	r.setCPU("cpu_s_per_gib", cpu/(float64(total)/(1<<30)), cfg.measured())
	r.set("bytes", total)
	r.set("streams", len(conns))
	r.set("elapsed_s", elapsed)
	r.setCPU("cpu_s", cpu, cfg.measured())
	return nil
}

// uploadTLS is upload for TLS: a write cut by a deadline would leave half
// a record on the wire and break the connection, so the clock is checked
// between whole writes instead (the deadline only bounds a stuck target).
func uploadTLS(c *tls.Conn, pat *pattern, deadline time.Time) (int64, error) {
	if err := c.SetWriteDeadline(deadline.Add(replyWait)); err != nil {
		return 0, err
	}
	var off int64
	for time.Now().Before(deadline) {
		n, err := c.Write(pat.at(off, chunkSize))
		off += int64(n)
		if err != nil {
			return off, fmt.Errorf("write after %d bytes: %w", off, err)
		}
	}
	return confirmUpload(c, off)
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
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pj bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: *name}, DNSNames: []string{*name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
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

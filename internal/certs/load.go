package certs

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxFileSize bounds what pj reads from a certificate, key or CA file: a
// chain of a few certificates is a few KiB, a CA bundle a few hundred.
const maxFileSize = 4 << 20

// Pair is a certificate file (PEM: the certificate first, then its
// intermediates) and its private key file.
type Pair struct {
	Cert string
	Key  string
}

// Problems found while loading files. Each error that Load functions return
// wraps one of them, so that callers (and pj check) can tell them apart.
var (
	ErrUnreadable = errors.New("cannot read the file")
	ErrNoCert     = errors.New("no certificate in it")
	ErrNoKey      = errors.New("no private key in it")
	ErrMismatch   = errors.New("the key does not match the certificate")
	ErrBadCert    = errors.New("the certificate cannot be parsed")
	ErrBadKey     = errors.New("the key cannot be parsed")
)

// FileError is a problem with one file: which file, what it is for, what is
// wrong, and what to do about it.
type FileError struct {
	Role string // "certificate", "key", "client_ca", "ca"
	File string
	Err  error  // wraps one of the Err* sentinels
	Hint string // what to do; may be empty
}

func (e *FileError) Error() string {
	s := e.Role + " " + e.File + ": " + e.Err.Error()
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

func (e *FileError) Unwrap() error { return e.Err }

// readFile reads a file of at most maxFileSize bytes.
func readFile(role, name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, &FileError{Role: role, File: name, Err: fmt.Errorf("%w: %w", ErrUnreadable, unwrapPath(err)), Hint: readHint(err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, &FileError{Role: role, File: name, Err: fmt.Errorf("%w: %w", ErrUnreadable, unwrapPath(err)), Hint: readHint(err)}
	}
	if len(data) > maxFileSize {
		return nil, &FileError{Role: role, File: name, Err: fmt.Errorf("%w: larger than %d MiB", ErrUnreadable, maxFileSize>>20),
			Hint: "a certificate, key or CA file is a few KiB of PEM"}
	}
	return data, nil
}

// unwrapPath drops the *PathError's repetition of the file name.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func readHint(err error) string {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "check the path (relative paths are from pj's working directory)"
	case errors.Is(err, os.ErrPermission):
		return "make it readable by the user pj runs as"
	}
	return ""
}

// LoadPair reads a certificate and its key. The certificate's Leaf is set.
func LoadPair(p Pair) (*tls.Certificate, error) {
	certPEM, err := readFile("certificate", p.Cert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile("key", p.Key)
	if err != nil {
		return nil, err
	}
	ders, err := certBlocks(certPEM)
	if err != nil {
		return nil, &FileError{Role: "certificate", File: p.Cert, Err: err, Hint: certHint(certPEM)}
	}
	leaf, err := x509.ParseCertificate(ders[0])
	if err != nil {
		return nil, &FileError{Role: "certificate", File: p.Cert, Err: fmt.Errorf("%w: %w", ErrBadCert, err)}
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, &FileError{Role: "key", File: p.Key, Err: err, Hint: keyHint(keyPEM)}
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, &FileError{Role: "key", File: p.Key, Err: fmt.Errorf("%w %s", ErrMismatch, p.Cert),
			Hint: "give the key the certificate was issued for (compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`)"}
	}
	// X509KeyPair checks again and knows every key format tls can use.
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &FileError{Role: "certificate", File: p.Cert, Err: fmt.Errorf("%w: %w", ErrBadCert, err)}
	}
	c.Leaf = leaf
	return &c, nil
}

// certBlocks returns the DER of every CERTIFICATE block of a PEM file, in
// order.
func certBlocks(data []byte) ([][]byte, error) {
	var ders [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			ders = append(ders, b.Bytes)
		}
	}
	if len(ders) == 0 {
		return nil, ErrNoCert
	}
	return ders, nil
}

func certHint(data []byte) string {
	if hasBlock(data, "PRIVATE KEY") {
		return "it holds a private key: are cert and key swapped?"
	}
	return "it should hold PEM blocks -----BEGIN CERTIFICATE-----: the certificate, then its intermediates"
}

func keyHint(data []byte) string {
	switch {
	case hasBlock(data, "ENCRYPTED PRIVATE KEY"):
		return "it is encrypted; pj needs it unencrypted (openssl pkey -in KEY -out KEY.plain), readable only by pj"
	case hasBlock(data, "CERTIFICATE"):
		return "it holds a certificate: are cert and key swapped?"
	}
	return "it should hold one PEM block -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY)"
}

// hasBlock reports whether a PEM block whose type ends in typ is in data.
func hasBlock(data []byte, typ string) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if strings.HasSuffix(b.Type, typ) {
			return true
		}
	}
}

// parseKey returns the first private key of a PEM file.
func parseKey(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, ErrNoKey
		}
		if b.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, fmt.Errorf("%w: it is encrypted", ErrBadKey)
		}
		if !strings.HasSuffix(b.Type, "PRIVATE KEY") {
			continue
		}
		var k any
		var err error
		switch b.Type {
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		default:
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%w: a %T cannot sign", ErrBadKey, k)
		}
		return s, nil
	}
}

// LoadPool reads a file of PEM CA certificates; role names it in errors
// ("client_ca", "ca"). A file without a certificate is an error.
func LoadPool(role, file string) (*x509.CertPool, []*x509.Certificate, error) {
	data, err := readFile(role, file)
	if err != nil {
		return nil, nil, err
	}
	ders, err := certBlocks(data)
	if err != nil {
		return nil, nil, &FileError{Role: role, File: file, Err: err, Hint: caHint(data)}
	}
	pool := x509.NewCertPool()
	certs := make([]*x509.Certificate, 0, len(ders))
	for i, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, &FileError{Role: role, File: file, Err: fmt.Errorf("%w: certificate %d: %w", ErrBadCert, i+1, err)}
		}
		pool.AddCert(c)
		certs = append(certs, c)
	}
	return pool, certs, nil
}

func caHint(data []byte) string {
	if hasBlock(data, "PRIVATE KEY") {
		return "it holds a private key; give the CA's certificate, never its key"
	}
	return "it should hold one or more PEM blocks -----BEGIN CERTIFICATE----- of the CA"
}

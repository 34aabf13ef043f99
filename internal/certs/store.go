// Package certs keeps pj's certificates as state: files read into an
// immutable snapshot that handshakes use, swapped whole when the files are
// read again (SIGHUP, a watched file changing), never mutated. A file that
// fails to load on a reload leaves the certificate loaded before it in
// place; established connections never notice a reload.
//
// Store answers the server side (the `tls` of a proxy: certificates chosen
// by SNI, client CAs, version, ALPN, ACME certificates); Client the side
// that originates TLS to backends (`backend_tls`).
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/watch"
)

// ServerOptions say how pj terminates TLS from clients.
type ServerOptions struct {
	// Certificates are chosen by the name the client asks for (SNI),
	// from each certificate's DNS names; the first is the fallback.
	Certificates []Pair
	// ClientCA, if set, is a PEM file of the CAs whose client
	// certificates are accepted; a client without one is refused.
	ClientCA string
	// MinVersion is "1.2" (the default when empty) or "1.3".
	MinVersion string
	// ALPN lists the application protocols offered, in order of
	// preference; a client that offers none of them is refused.
	ALPN []string
	// ACME, if set, obtains and renews certificates automatically.
	ACME *ACMEOptions
}

// Versions maps min_version values to crypto/tls versions.
var Versions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// VersionName is the text of a negotiated version, as the log writes it.
func VersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "1.0"
	case tls.VersionTLS11:
		return "1.1"
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS13:
		return "1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

// Store answers handshakes from an atomically swapped snapshot of the
// files of its ServerOptions.
type Store struct {
	opt  ServerOptions
	min  uint16
	log  *slog.Logger
	acme *ACME // nil without ACME; shared with the stores before and after this one
	// closed is set by the first Close, which releases acme.
	closed atomic.Bool
	// listener is shared with the stores this one replaces and will be
	// replaced by: see NewStore.
	listener *listenerConfig

	mu   sync.Mutex // serialises loads
	snap atomic.Pointer[snapshot]
}

// snapshot is one reading of the files: never changed once published.
type snapshot struct {
	certs    []*loaded
	exact    map[string][]*loaded // by lower-case DNS name
	wildcard map[string][]*loaded // "example.com" for "*.example.com"
	clientCA *x509.CertPool
	caCerts  []*x509.Certificate
	config   *tls.Config // what ordinary hellos are answered with
}

// loaded is one certificate as read from its files.
type loaded struct {
	pair  Pair
	cert  *tls.Certificate
	names []string // lower-case DNS names of the certificate
}

// NewStore reads every file of opt. At start-up (prev nil) any file that
// cannot be used is an error. On a configuration reload, prev is the store
// this one replaces: a certificate whose files fail now but that prev had
// loaded from the same files stays as it was (the problem is logged), and
// prev's ACME client carries over when its options are the same.
func NewStore(opt ServerOptions, log *slog.Logger, prev *Store) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(opt.Certificates) == 0 && opt.ACME == nil {
		return nil, errors.New("tls: no certificates: give certificates (cert and key files) or acme")
	}
	minVersion := uint16(tls.VersionTLS12)
	if opt.MinVersion != "" {
		v, ok := Versions[opt.MinVersion]
		if !ok {
			return nil, fmt.Errorf("tls min_version %q: expected \"1.2\" or \"1.3\"", opt.MinVersion)
		}
		minVersion = v
	}
	s := &Store{opt: opt, min: minVersion, log: log}
	if opt.ACME != nil {
		if prev != nil && prev.acme != nil && prev.acme.opt.equal(*opt.ACME) {
			s.acme = prev.acme
			s.acme.acquire()
		} else {
			a, err := NewACME(*opt.ACME, log)
			if err != nil {
				return nil, err
			}
			s.acme = a
		}
	}
	var old *snapshot
	if prev != nil {
		old = prev.snap.Load()
	}
	snap, problems := s.load(old)
	if snap == nil {
		s.Close()
		return nil, errors.Join(problems...)
	}
	s.logKept(problems)
	s.snap.Store(snap)
	// The listener's config only hands each hello to the newest store,
	// which answers with its snapshot's config. Its session ticket keys
	// (made and rotated by crypto/tls) are the ones every snapshot uses,
	// and it outlives configuration reloads, so clients resume across
	// both kinds of reload.
	if prev != nil {
		s.listener = prev.listener
	} else {
		s.listener = &listenerConfig{}
		s.listener.cfg = &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: s.listener.configForClient}
	}
	s.listener.current.Store(s)
	return s, nil
}

// listenerConfig is the tls.Config of a listener, whichever store is
// current for it.
type listenerConfig struct {
	cfg     *tls.Config
	current atomic.Pointer[Store]
}

func (l *listenerConfig) configForClient(h *tls.ClientHelloInfo) (*tls.Config, error) {
	return l.current.Load().configForClient(h)
}

// HelloObserver is implemented by a connection that wants to see the
// client's hello before a certificate is chosen: the log names the server
// name a client asked for even when its handshake fails.
type HelloObserver interface {
	ObserveHello(h *tls.ClientHelloInfo)
}

// TLSConfig is the configuration to give tls.Server for the listener of
// this store and of the stores that replace it (NewStore with prev).
func (s *Store) TLSConfig() *tls.Config { return s.listener.cfg }

// ACME returns the store's ACME client, or nil.
func (s *Store) ACME() *ACME { return s.acme }

// Reload reads the files again and swaps in what they hold. A file that
// cannot be used keeps the certificate (or CA) loaded before; each such
// problem is logged and returned. Connections already established are not
// touched; handshakes that start after Reload returns use the new files.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, problems := s.load(s.snap.Load())
	if snap == nil { // cannot happen with a previous snapshot; be safe
		return errors.Join(problems...)
	}
	s.logKept(problems)
	s.snap.Store(snap)
	return errors.Join(problems...)
}

func (s *Store) logKept(problems []error) {
	for _, err := range problems {
		s.log.Error("a certificate file could not be loaded; the one loaded before stays in use", "error", err.Error())
	}
}

// Files lists the files the store reads, for a watcher.
func (s *Store) Files() []string {
	var out []string
	for _, p := range s.opt.Certificates {
		out = append(out, p.Cert, p.Key)
	}
	if s.opt.ClientCA != "" {
		out = append(out, s.opt.ClientCA)
	}
	return out
}

// Watch reloads the store whenever one of its files changes, until ctx is
// done: certificates replaced by a rename (certbot, cert-manager), or by a
// Kubernetes secret's ..data symlink swap.
func (s *Store) Watch(ctx context.Context, debounce time.Duration) error {
	return watch.Files(ctx, s.Files(), debounce, s.log, func() {
		if err := s.Reload(); err == nil {
			s.log.Info("certificates reloaded", "files", strings.Join(s.Files(), ", "))
		}
	})
}

// Start begins obtaining the ACME certificates, if the store has ACME and
// its client is not running yet (a store that replaces one with the same
// ACME options goes on with its client). A store that never starts (a
// configuration reload that failed) never contacts the CA.
func (s *Store) Start() {
	if s.acme != nil && !s.closed.Load() {
		s.acme.Start()
	}
}

// Close releases the store's ACME client: it stops once no store that
// shares it (the one before a reload, the one after) is open. Close may be
// called more than once.
func (s *Store) Close() {
	if s.closed.CompareAndSwap(false, true) && s.acme != nil {
		s.acme.release()
	}
}

// load reads every file. A file that fails is replaced by what old holds
// for the same file, with the problem returned; with nothing to fall back
// on, load returns a nil snapshot.
func (s *Store) load(old *snapshot) (*snapshot, []error) {
	var problems []error
	fatal := false
	snap := &snapshot{exact: map[string][]*loaded{}, wildcard: map[string][]*loaded{}}
	for _, p := range s.opt.Certificates {
		c, err := LoadPair(p)
		var l *loaded
		if err == nil {
			l = &loaded{pair: p, cert: c, names: dnsNames(c.Leaf)}
		} else if l = old.find(p); l == nil {
			fatal = true
		}
		if err != nil {
			problems = append(problems, err)
		}
		if l != nil {
			snap.add(l)
		}
	}
	if s.opt.ClientCA != "" {
		pool, certs, err := LoadPool("client_ca", s.opt.ClientCA)
		switch {
		case err == nil:
			snap.clientCA, snap.caCerts = pool, certs
		case old != nil && old.clientCA != nil:
			snap.clientCA, snap.caCerts = old.clientCA, old.caCerts
			problems = append(problems, err)
		default:
			fatal = true
			problems = append(problems, err)
		}
	}
	if fatal {
		return nil, problems
	}
	snap.config = s.serverConfig(snap)
	return snap, problems
}

// find returns the certificate old loaded from p's files, or nil.
func (sn *snapshot) find(p Pair) *loaded {
	if sn == nil {
		return nil
	}
	for _, l := range sn.certs {
		if l.pair == p {
			return l
		}
	}
	return nil
}

func (sn *snapshot) add(l *loaded) {
	sn.certs = append(sn.certs, l)
	for _, n := range l.names {
		if rest, ok := strings.CutPrefix(n, "*."); ok {
			sn.wildcard[rest] = append(sn.wildcard[rest], l)
		} else {
			sn.exact[n] = append(sn.exact[n], l)
		}
	}
}

// dnsNames are the names a certificate is valid for, in lower case. Like
// clients, pj ignores the subject's common name.
func dnsNames(c *x509.Certificate) []string {
	out := make([]string, 0, len(c.DNSNames))
	for _, n := range c.DNSNames {
		out = append(out, strings.ToLower(strings.TrimSuffix(n, ".")))
	}
	return out
}

func (s *Store) serverConfig(snap *snapshot) *tls.Config {
	c := &tls.Config{
		MinVersion:     s.min,
		NextProtos:     slices.Clone(s.opt.ALPN),
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return s.certificate(snap, h) },
	}
	if snap.clientCA != nil {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = snap.clientCA
	}
	return c
}

// configForClient answers each hello with the snapshot current when it
// arrived, or with the ACME challenge's config for a tls-alpn-01 hello.
func (s *Store) configForClient(h *tls.ClientHelloInfo) (*tls.Config, error) {
	if o, ok := h.Conn.(HelloObserver); ok {
		o.ObserveHello(h)
	}
	if s.acme != nil && IsChallenge(h.SupportedProtos) {
		return s.acme.challenge, nil
	}
	return s.snap.Load().config, nil
}

// certificate chooses the certificate for a hello: one whose names hold
// the server name exactly, else one with a wildcard for it, else an ACME
// certificate for it, else the first (the fallback). Among certificates for
// the same name (an ECDSA one and an RSA one), the first the client
// supports wins.
func (s *Store) certificate(snap *snapshot, h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(h.ServerName, "."))
	if name != "" {
		if c := pick(h, snap.exact[name]); c != nil {
			return c, nil
		}
		if _, parent, ok := strings.Cut(name, "."); ok {
			if c := pick(h, snap.wildcard[parent]); c != nil {
				return c, nil
			}
		}
		if s.acme != nil && s.acme.covers(name) {
			return s.acme.certificate(name)
		}
	}
	if len(snap.certs) > 0 {
		return snap.certs[0].cert, nil
	}
	return s.acme.certificate(s.acme.opt.Domains[0])
}

func pick(h *tls.ClientHelloInfo, list []*loaded) *tls.Certificate {
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0].cert
	}
	for _, l := range list {
		if h.SupportsCertificate(l.cert) == nil {
			return l.cert
		}
	}
	return list[0].cert
}

// Covers reports whether a certificate of the store (or its ACME domains)
// is valid for name; pj check uses it for a route's sni.
func (s *Store) Covers(name string) bool {
	return s.snap.Load().covers(name) || (s.acme != nil && s.acme.covers(strings.ToLower(name)))
}

func (sn *snapshot) covers(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if len(sn.exact[name]) > 0 {
		return true
	}
	_, parent, ok := strings.Cut(name, ".")
	return ok && len(sn.wildcard[parent]) > 0
}

// Expiry is when one certificate of a store stops being valid.
type Expiry struct {
	// Certificate names it: its file, or "acme:" and its domain.
	Certificate string
	NotAfter    time.Time
}

// Expiries lists the expiry of every certificate the store serves now,
// for pj_tls_certificate_expiry_timestamp_seconds.
func (s *Store) Expiries() []Expiry {
	snap := s.snap.Load()
	out := make([]Expiry, 0, len(snap.certs))
	for _, l := range snap.certs {
		out = append(out, Expiry{Certificate: l.pair.Cert, NotAfter: l.cert.Leaf.NotAfter})
	}
	if s.acme != nil {
		out = append(out, s.acme.expiries()...)
	}
	return out
}

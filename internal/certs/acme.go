package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// ACMEOptions say for which names, from which directory and where on disk
// certificates are obtained and renewed automatically.
type ACMEOptions struct {
	Domains []string
	Email   string // the account's contact; optional
	// Directory is the ACME directory URL; empty means Let's Encrypt's.
	Directory string
	// CARoots, if set, is a PEM file of the roots that sign the
	// directory's HTTPS certificate (a private or test ACME server);
	// empty means the system's roots.
	CARoots string
	// Storage is a directory for the account key and the certificates,
	// so that a restart does not ask the CA again.
	Storage string
	// HTTPListen, if set, is the address (HOST:PORT, port 80 for a
	// public CA) where pj answers the http-01 challenge, and redirects
	// every other request to https. Empty: tls-alpn-01 alone.
	HTTPListen string
}

func (o ACMEOptions) equal(p ACMEOptions) bool {
	return slices.Equal(o.Domains, p.Domains) && o.Email == p.Email && o.Directory == p.Directory &&
		o.CARoots == p.CARoots && o.Storage == p.Storage && o.HTTPListen == p.HTTPListen
}

// ChallengeProto is the ALPN protocol of ACME's tls-alpn-01 challenge.
const ChallengeProto = acme.ALPNProto

// IsChallenge reports whether a TLS hello offering alpn is an ACME server
// validating a tls-alpn-01 challenge: it offers acme-tls/1 and nothing else
// (RFC 8737, section 3). On a port where pj routes without terminating, such
// a hello for one of an ACME client's domains must go to the terminator
// anyway (see ACME.Wants).
func IsChallenge(alpn []string) bool {
	return len(alpn) == 1 && alpn[0] == ChallengeProto
}

// ACME obtains and renews certificates for a list of domains, answering
// the CA's challenges itself: tls-alpn-01 in the TLS handshake of pj's own
// listeners, and http-01 through HTTPHandler where a port 80 listener
// serves it. Certificates are ECDSA P-256.
type ACME struct {
	opt       ACMEOptions
	m         *autocert.Manager
	log       *slog.Logger
	domains   map[string]*atomic.Bool // lower-case domain → a certificate is ready
	challenge *tls.Config

	// refs counts the stores that use the client: a store built on a
	// reload shares its predecessor's client, and the client stops when
	// the last of them is closed, whichever order they close in.
	refs   atomic.Int32
	start  sync.Once
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	close  sync.Once

	// httpHandler answers on the http-01 listener; nil without one.
	httpHandler http.Handler
}

// NewACME checks opt and prepares the client; Start begins obtaining
// certificates.
func NewACME(opt ACMEOptions, log *slog.Logger) (*ACME, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkACME(opt); err != nil {
		return nil, err
	}
	dir := opt.Directory
	if dir == "" {
		dir = autocert.DefaultACMEDirectory
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if opt.CARoots != "" {
		pool, _, err := LoadPool("acme ca_roots", opt.CARoots)
		if err != nil {
			return nil, err
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if err := os.MkdirAll(opt.Storage, 0o700); err != nil {
		return nil, fmt.Errorf("acme storage %s: %w; create it, writable only by the user pj runs as", opt.Storage, unwrapPath(err))
	}
	a := &ACME{opt: opt, log: log, domains: map[string]*atomic.Bool{}}
	a.refs.Store(1)
	a.ctx, a.cancel = context.WithCancel(context.Background())
	for _, d := range opt.Domains {
		a.domains[strings.ToLower(d)] = new(atomic.Bool)
	}
	a.m = &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(opt.Storage),
		HostPolicy: autocert.HostWhitelist(opt.Domains...),
		Email:      opt.Email,
		Client: &acme.Client{
			DirectoryURL: dir,
			UserAgent:    "pj",
			HTTPClient:   &http.Client{Transport: closable{transport, a.ctx}, Timeout: time.Minute},
		},
	}
	a.challenge = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{ChallengeProto},
		GetCertificate: a.m.GetCertificate,
	}
	if opt.HTTPListen != "" {
		// Asking autocert for its handler is what makes it accept
		// http-01 challenges beside tls-alpn-01.
		a.httpHandler = a.HTTPHandler(nil)
		if err := joinChallengeListener(opt.HTTPListen, a); err != nil {
			a.cancel()
			return nil, err
		}
	}
	return a, nil
}

// closable refuses every request once ctx is done: autocert has no way to
// stop a manager, whose renewal timers would otherwise go on asking the CA
// for certificates nobody serves.
type closable struct {
	rt  http.RoundTripper
	ctx context.Context
}

func (c closable) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.ctx.Err() != nil {
		return nil, errors.New("this ACME client was stopped (the configuration that used it was replaced)")
	}
	return c.rt.RoundTrip(r)
}

// checkACME finds the mistakes in opt that would make every order fail.
func checkACME(opt ACMEOptions) error {
	var errs []error
	if len(opt.Domains) == 0 {
		errs = append(errs, errors.New("tls acme: no domains: list the names to obtain certificates for"))
	}
	for _, d := range opt.Domains {
		switch {
		case strings.Contains(d, "*"):
			errs = append(errs, fmt.Errorf("tls acme domain %q: a wildcard needs the dns-01 challenge, which pj does not answer; list each name", d))
		case net.ParseIP(d) != nil:
			errs = append(errs, fmt.Errorf("tls acme domain %q: an IP address; ACME certificates here are for DNS names", d))
		case !strings.Contains(strings.Trim(d, "."), "."):
			errs = append(errs, fmt.Errorf("tls acme domain %q: expected a fully qualified name such as app.example.com", d))
		}
	}
	if opt.Storage == "" {
		errs = append(errs, errors.New("tls acme: storage is required (e.g. /var/lib/pj/acme), so that a restart does not ask the CA again"))
	}
	return errors.Join(errs...)
}

// Start obtains a certificate for every domain in the background (from
// storage when it holds a valid one), retrying with a growing pause until
// it succeeds or Close is called. Each certificate is then renewed before
// it expires. Handshakes for a domain whose certificate is not ready yet
// fail at once rather than wait for the CA.
func (a *ACME) Start() {
	a.start.Do(func() {
		for _, d := range a.opt.Domains {
			a.wg.Go(func() { a.obtain(strings.ToLower(d)) })
		}
	})
}

// retry bounds the pause between two attempts at a certificate.
const (
	firstRetry = 10 * time.Second
	maxRetry   = time.Hour
)

func (a *ACME) obtain(domain string) {
	pause := firstRetry
	for {
		c, err := a.m.GetCertificate(ecdsaHello(domain))
		if err == nil {
			a.domains[domain].Store(true)
			a.log.Info("ACME certificate ready", "domain", domain, "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
			return
		}
		hint := "the CA must reach this name on port 443 (tls-alpn-01); set http_listen to answer http-01 on port 80 too"
		if a.opt.HTTPListen != "" {
			hint = "the CA must reach this name on port 443 (tls-alpn-01) or on port 80 at " + a.opt.HTTPListen + " (http-01)"
		}
		a.log.Warn("cannot obtain an ACME certificate yet; retrying", "domain", domain, "error", err.Error(),
			"retry_in", pause.String(), "hint", hint)
		t := time.NewTimer(pause)
		select {
		case <-a.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, maxRetry)
	}
}

// ecdsaHello is a hello that makes autocert choose (or obtain) the ECDSA
// certificate of domain.
func ecdsaHello(domain string) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{
		ServerName:       domain,
		CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256},
	}
}

// Close stops obtaining and renewing certificates: an attempt under way
// fails at its next request to the CA.
func (a *ACME) Close() {
	a.close.Do(func() {
		a.cancel()
		if a.opt.HTTPListen != "" {
			leaveChallengeListener(a.opt.HTTPListen, a)
		}
	})
}

// acquire adds a user of a, which must have one already.
func (a *ACME) acquire() { a.refs.Add(1) }

// release drops a user of a; the last one closes it.
func (a *ACME) release() {
	if a.refs.Add(-1) == 0 {
		a.Close()
	}
}

// wait waits for the attempts Start began (tests).
func (a *ACME) wait() { a.wg.Wait() }

// Ready reports whether a certificate for domain is in hand.
func (a *ACME) Ready(domain string) bool {
	r := a.domains[strings.ToLower(domain)]
	return r != nil && r.Load()
}

// Wants reports whether a hello with this server name and ALPN list is the
// CA validating one of a's domains: a route decider sends such a hello to
// the store's terminator even on a port that passes TLS through.
func (a *ACME) Wants(serverName string, alpn []string) bool {
	return IsChallenge(alpn) && a.covers(strings.ToLower(strings.TrimSuffix(serverName, ".")))
}

// HTTPHandler answers http-01 challenges on a port 80 listener and hands
// every other request to fallback (nil: a redirect to https). Calling it
// lets the CA use http-01 when tls-alpn-01 fails.
func (a *ACME) HTTPHandler(fallback http.Handler) http.Handler {
	h := a.m.HTTPHandler(fallback)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The domain check compares the Host header with the domains;
		// behind a port other than 80 it carries the port.
		if host, _, err := net.SplitHostPort(r.Host); err == nil {
			r = r.Clone(r.Context())
			r.Host = host
		}
		h.ServeHTTP(w, r)
	})
}

func (a *ACME) covers(name string) bool { return a.domains[name] != nil }

// certificate returns the certificate of domain if it is ready.
func (a *ACME) certificate(domain string) (*tls.Certificate, error) {
	if !a.Ready(domain) {
		return nil, fmt.Errorf("no certificate for %s yet: ACME issuance has not succeeded (see the log)", domain)
	}
	return a.m.GetCertificate(ecdsaHello(domain))
}

func (a *ACME) expiries() []Expiry {
	var out []Expiry
	for _, d := range a.opt.Domains {
		if c, err := a.certificate(strings.ToLower(d)); err == nil && c.Leaf != nil {
			out = append(out, Expiry{Certificate: "acme:" + d, NotAfter: c.Leaf.NotAfter})
		}
	}
	return out
}

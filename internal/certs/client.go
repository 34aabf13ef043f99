package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pj-proxy/pj/internal/watch"
)

// ClientOptions say how pj originates TLS to backends.
type ClientOptions struct {
	// ServerName is the name asked for and verified; empty means the
	// backend's host name (or IP address) as configured.
	ServerName string
	// CA is a PEM file of the CAs that sign backends' certificates;
	// empty means the system's roots.
	CA string
	// Cert and Key, if set, are a client certificate shown to backends
	// that ask for one.
	Cert, Key string
	// InsecureSkipVerify accepts any certificate a backend shows. It
	// removes TLS's protection against a man in the middle.
	InsecureSkipVerify bool
}

// Client holds what originating TLS needs, read from its files into a
// snapshot that Reload swaps like a Store's.
type Client struct {
	opt ClientOptions
	log *slog.Logger

	mu   sync.Mutex // serialises loads
	snap atomic.Pointer[clientSnap]
}

type clientSnap struct {
	roots    *x509.CertPool   // nil: the system's
	cert     *tls.Certificate // nil: none
	sessions tls.ClientSessionCache
}

// sessionCacheSize bounds the TLS sessions kept for resuming connections
// to backends: one per backend and server name is what is used.
const sessionCacheSize = 1024

// NewClient reads the files of opt. prev, if not nil, is the client this
// one replaces: a file that fails now but that prev loaded keeps prev's
// contents (logged), as in NewStore.
func NewClient(opt ClientOptions, log *slog.Logger, prev *Client) (*Client, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if (opt.Cert == "") != (opt.Key == "") {
		return nil, errors.New("backend_tls: give both cert and key for a client certificate, or neither")
	}
	c := &Client{opt: opt, log: log}
	var old *clientSnap
	if prev != nil && prev.opt == opt {
		old = prev.snap.Load()
	}
	snap, problems := c.load(old)
	if snap == nil {
		return nil, errors.Join(problems...)
	}
	c.logKept(problems)
	c.snap.Store(snap)
	return c, nil
}

// Options returns what the client was built from.
func (c *Client) Options() ClientOptions { return c.opt }

func (c *Client) load(old *clientSnap) (*clientSnap, []error) {
	var problems []error
	fatal := false
	snap := &clientSnap{sessions: tls.NewLRUClientSessionCache(sessionCacheSize)}
	if c.opt.CA != "" {
		pool, _, err := LoadPool("backend_tls ca", c.opt.CA)
		switch {
		case err == nil:
			snap.roots = pool
		case old != nil && old.roots != nil:
			snap.roots = old.roots
			problems = append(problems, err)
		default:
			fatal = true
			problems = append(problems, err)
		}
	}
	if c.opt.Cert != "" {
		cert, err := LoadPair(Pair{Cert: c.opt.Cert, Key: c.opt.Key})
		switch {
		case err == nil:
			snap.cert = cert
		case old != nil && old.cert != nil:
			snap.cert = old.cert
			problems = append(problems, err)
		default:
			fatal = true
			problems = append(problems, err)
		}
	}
	if old != nil && len(problems) == 0 && snap.sameTrust(old) {
		// Sessions verified under the same roots stay resumable.
		snap.sessions = old.sessions
	}
	if fatal {
		return nil, problems
	}
	return snap, problems
}

func (s *clientSnap) sameTrust(o *clientSnap) bool {
	return (s.roots == nil && o.roots == nil) || (s.roots != nil && o.roots != nil && s.roots.Equal(o.roots))
}

func (c *Client) logKept(problems []error) {
	for _, err := range problems {
		c.log.Error("a backend_tls file could not be loaded; what was loaded before stays in use", "error", err.Error())
	}
}

// Reload reads the files again; see Store.Reload.
func (c *Client) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	snap, problems := c.load(c.snap.Load())
	if snap == nil {
		return errors.Join(problems...)
	}
	c.logKept(problems)
	c.snap.Store(snap)
	return errors.Join(problems...)
}

// Files lists the files the client reads, for a watcher.
func (c *Client) Files() []string {
	var out []string
	if c.opt.CA != "" {
		out = append(out, c.opt.CA)
	}
	if c.opt.Cert != "" {
		out = append(out, c.opt.Cert, c.opt.Key)
	}
	return out
}

// Watch reloads the client whenever one of its files changes, until ctx is
// done. A client without files returns at once.
func (c *Client) Watch(ctx context.Context, debounce time.Duration) error {
	if len(c.Files()) == 0 {
		return nil
	}
	return watch.Files(ctx, c.Files(), debounce, c.log, func() {
		if err := c.Reload(); err == nil {
			c.log.Info("backend_tls files reloaded", "files", strings.Join(c.Files(), ", "))
		}
	})
}

// Config returns the tls.Config for one connection to a backend whose
// configured host is host. alpn, if not empty, is offered to the backend.
func (c *Client) Config(host string, alpn []string) *tls.Config {
	snap := c.snap.Load()
	name := c.opt.ServerName
	if name == "" {
		name = host
	}
	cfg := &tls.Config{
		ServerName:         name,
		RootCAs:            snap.roots,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: snap.sessions,
		InsecureSkipVerify: c.opt.InsecureSkipVerify, //nolint:gosec // the operator asked for it, and pj check warns
		NextProtos:         slices.Clone(alpn),
	}
	if snap.cert != nil {
		cfg.Certificates = []tls.Certificate{*snap.cert}
	}
	return cfg
}

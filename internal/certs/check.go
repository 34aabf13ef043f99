package certs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Severity says whether a finding makes a configuration invalid.
type Severity uint8

// Severities of findings.
const (
	Error   Severity = iota // pj cannot use the configuration
	Warning                 // pj can, but clients or backends will likely fail
)

func (s Severity) String() string {
	if s == Warning {
		return "warning"
	}
	return "error"
}

// Finding is one problem CheckServer or CheckClient found: a sentence that
// names the file and says what to do.
type Finding struct {
	Severity Severity
	Message  string
}

func (f Finding) String() string { return f.Severity.String() + ": " + f.Message }

// findings collects findings.
type findings []Finding

func (fs *findings) add(s Severity, format string, args ...any) {
	*fs = append(*fs, Finding{Severity: s, Message: fmt.Sprintf(format, args...)})
}

// CheckServer reads the files of a proxy's (or route's) tls as pj check
// does, at time now, and reports what is wrong: a file that cannot be read,
// a file without a certificate, a key that does not match its certificate,
// a certificate expired or not yet valid (warnings), and names in sni
// (what the route matches) that no certificate covers (a warning: clients
// would be shown the fallback certificate, which they refuse).
func CheckServer(opt ServerOptions, sni []string, now time.Time) []Finding {
	var fs findings
	if len(opt.Certificates) == 0 && opt.ACME == nil {
		fs.add(Error, "tls: no certificates: give certificates (cert and key files) or acme")
	}
	if _, ok := Versions[opt.MinVersion]; !ok && opt.MinVersion != "" {
		fs.add(Error, "tls min_version %q: expected \"1.2\" or \"1.3\"", opt.MinVersion)
	}
	for _, p := range opt.ALPN {
		if p == "" || len(p) > 255 {
			fs.add(Error, "tls alpn %q: a protocol name is 1 to 255 bytes, such as h2 or http/1.1", p)
		}
	}
	snap := &snapshot{exact: map[string][]*loaded{}, wildcard: map[string][]*loaded{}}
	for _, p := range opt.Certificates {
		switch {
		case p.Cert == "":
			fs.add(Error, "tls certificates: an entry without cert: give the certificate file")
			continue
		case p.Key == "":
			fs.add(Error, "tls certificate %s: no key: give the private key file", p.Cert)
			continue
		}
		c, err := LoadPair(p)
		if err != nil {
			fs.add(Error, "tls %s", err)
			continue
		}
		l := &loaded{pair: p, cert: c, names: dnsNames(c.Leaf)}
		snap.add(l)
		validity(&fs, "tls certificate "+p.Cert, c.Leaf.NotBefore, c.Leaf.NotAfter, now)
		if len(l.names) == 0 {
			fs.add(Warning, "tls certificate %s has no DNS names (subject alternative names): clients refuse it for every name; issue it with the names clients use", p.Cert)
		}
	}
	if opt.ClientCA != "" {
		checkCAs(&fs, "tls ", "client_ca", opt.ClientCA, now)
	}
	var acmeDomains map[string]bool
	if a := opt.ACME; a != nil {
		if err := checkACME(*a); err != nil {
			for _, e := range unjoin(err) {
				fs.add(Error, "%s", e)
			}
		}
		if a.CARoots != "" {
			if _, _, err := LoadPool("acme ca_roots", a.CARoots); err != nil {
				fs.add(Error, "tls %s", err)
			}
		}
		if a.Storage != "" {
			checkStorage(&fs, a.Storage)
		}
		acmeDomains = map[string]bool{}
		for _, d := range a.Domains {
			acmeDomains[strings.ToLower(d)] = true
		}
	}
	if len(snap.certs) > 0 || acmeDomains != nil {
		for _, name := range sni {
			n := strings.ToLower(strings.TrimSuffix(name, "."))
			if snap.covers(n) || snap.coversPattern(n) || acmeDomains[n] {
				continue
			}
			fallback := "no certificate at all"
			if len(snap.certs) > 0 {
				f := snap.certs[0]
				fallback = fmt.Sprintf("the fallback %s (names: %s)", f.pair.Cert, namesText(f.names))
			}
			fs.add(Warning, "tls: no certificate covers sni %q: its clients would get %s and refuse it; add a certificate whose names include %s", name, fallback, name)
		}
	}
	return fs
}

// coversPattern reports whether a route's wildcard pattern "*.example.com"
// is covered by a wildcard certificate for the same domain.
func (sn *snapshot) coversPattern(pattern string) bool {
	rest, ok := strings.CutPrefix(pattern, "*.")
	return ok && len(sn.wildcard[rest]) > 0
}

func namesText(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// CheckClient reads the files of a backend_tls as pj check does, at time
// now, and reports what is wrong.
func CheckClient(opt ClientOptions, now time.Time) []Finding {
	var fs findings
	if opt.CA != "" {
		checkCAs(&fs, "", "backend_tls ca", opt.CA, now)
	}
	switch {
	case opt.Cert != "" && opt.Key == "":
		fs.add(Error, "backend_tls cert %s: no key: give the client certificate's private key file", opt.Cert)
	case opt.Cert == "" && opt.Key != "":
		fs.add(Error, "backend_tls key %s: no cert: give the client certificate file", opt.Key)
	case opt.Cert != "":
		c, err := LoadPair(Pair{Cert: opt.Cert, Key: opt.Key})
		if err != nil {
			fs.add(Error, "backend_tls %s", err)
		} else {
			validity(&fs, "backend_tls cert "+opt.Cert, c.Leaf.NotBefore, c.Leaf.NotAfter, now)
		}
	}
	if opt.InsecureSkipVerify {
		msg := "backend_tls insecure_skip_verify: backends' certificates are not verified, so anyone on the way to them can read and change the traffic; give ca (and server_name) instead"
		if opt.CA != "" {
			msg += "; ca is ignored while it is set"
		}
		fs.add(Warning, "%s", msg)
	}
	return fs
}

// checkCAs reads a CA file as the store does, role as LoadPool takes it
// and prefix what the findings say before the role ("tls "), and warns
// about each CA outside its validity period.
func checkCAs(fs *findings, prefix, role, file string, now time.Time) {
	_, certs, err := LoadPool(role, file)
	if err != nil {
		fs.add(Error, "%s%s", prefix, err)
		return
	}
	for _, c := range certs {
		validity(fs, fmt.Sprintf("%s%s %s: CA %q", prefix, role, file, c.Subject.CommonName), c.NotBefore, c.NotAfter, now)
	}
}

// validity warns about a certificate outside its validity period.
func validity(fs *findings, what string, notBefore, notAfter, now time.Time) {
	const day = "2006-01-02"
	switch {
	case now.After(notAfter):
		fs.add(Warning, "%s expired on %s: peers refuse it; renew it (pj reads it again on reload)", what, notAfter.UTC().Format(day))
	case now.Before(notBefore):
		fs.add(Warning, "%s is not valid before %s: peers refuse it until then; check the clock or the certificate", what, notBefore.UTC().Format(day))
	}
}

// checkStorage reports an ACME storage path pj could not write to.
func checkStorage(fs *findings, dir string) {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return // created at start-up
	case err != nil:
		fs.add(Error, "tls acme storage %s: %v; make it a directory pj can write to", dir, unwrapPath(err))
	case !fi.IsDir():
		fs.add(Error, "tls acme storage %s: not a directory; give a directory for the account key and certificates", dir)
	case unix.Access(dir, unix.W_OK|unix.X_OK) != nil:
		fs.add(Error, "tls acme storage %s: not writable; make it writable (only) by the user pj runs as", dir)
	}
}

// unjoin splits an errors.Join error into its parts.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

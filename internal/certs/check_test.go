package certs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestCheckServer(t *testing.T) {
	p := newPKI(t)
	app := p.pair("app", testutil.Leaf{Names: []string{"app.example.com", "*.api.example.com"}})
	other := p.pair("other", testutil.Leaf{Names: []string{"other.example.com"}})
	expired := p.pair("expired", testutil.Leaf{Names: []string{"old.example.com"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	noNames := p.pair("nonames", testutil.Leaf{})
	unreadable := Pair{Cert: filepath.Join(p.dir, "missing.pem"), Key: app.Key}
	caFile := testutil.WriteFileIn(t, p.dir, "ca.pem", p.ca.PEM)
	emptyCA := testutil.WriteFileIn(t, p.dir, "empty-ca.pem", []byte("# no certificate here\n"))
	notDir := testutil.WriteFileIn(t, p.dir, "a-file", []byte("x"))

	type want struct {
		sev  Severity
		text string
	}
	tests := []struct {
		name string
		opt  ServerOptions
		sni  []string
		want []want // in order; nothing else may be found
	}{
		{name: "valid", opt: ServerOptions{Certificates: []Pair{app}, ClientCA: caFile, MinVersion: "1.3", ALPN: []string{"h2"}},
			sni: []string{"app.example.com", "v1.api.example.com", "*.api.example.com", "APP.example.com"}},
		{name: "key of another certificate", opt: ServerOptions{Certificates: []Pair{{Cert: app.Cert, Key: other.Key}}},
			want: []want{{Error, "tls key " + other.Key + ": the key does not match the certificate " + app.Cert + "; give the key the certificate was issued for"}}},
		{name: "expired", opt: ServerOptions{Certificates: []Pair{expired}},
			want: []want{{Warning, "tls certificate " + expired.Cert + " expired on " + time.Now().Add(-24*time.Hour).UTC().Format("2006-01-02") + ": peers refuse it; renew it"}}},
		{name: "not valid yet", opt: ServerOptions{Certificates: []Pair{p.pair("future", testutil.Leaf{Names: []string{"f.test"}, NotBefore: time.Now().Add(24 * time.Hour), NotAfter: time.Now().Add(48 * time.Hour)})}},
			want: []want{{Warning, "is not valid before"}}},
		{name: "names that do not cover a route's sni", opt: ServerOptions{Certificates: []Pair{app}},
			sni: []string{"db.example.com", "a.b.api.example.com", "*.example.com"},
			want: []want{
				{Warning, `tls: no certificate covers sni "db.example.com": its clients would get the fallback ` + app.Cert + " (names: app.example.com, *.api.example.com) and refuse it; add a certificate whose names include db.example.com"},
				{Warning, `sni "a.b.api.example.com"`},
				{Warning, `sni "*.example.com"`},
			}},
		{name: "unreadable file", opt: ServerOptions{Certificates: []Pair{unreadable}},
			want: []want{{Error, "tls certificate " + unreadable.Cert + ": cannot read the file: no such file or directory; check the path"}}},
		{name: "a CA file without a certificate", opt: ServerOptions{Certificates: []Pair{app}, ClientCA: emptyCA},
			want: []want{{Error, "tls client_ca " + emptyCA + ": no certificate in it; it should hold one or more PEM blocks -----BEGIN CERTIFICATE----- of the CA"}}},
		{name: "a certificate without names", opt: ServerOptions{Certificates: []Pair{noNames}},
			want: []want{{Warning, "has no DNS names"}}},
		{name: "bad settings", opt: ServerOptions{MinVersion: "1.0", ALPN: []string{""}},
			want: []want{{Error, "no certificates"}, {Error, `min_version "1.0"`}, {Error, `alpn ""`}}},
		{name: "acme", opt: ServerOptions{ACME: &ACMEOptions{Domains: []string{"*.example.com", "localhost"}, CARoots: emptyCA, Storage: notDir}},
			want: []want{{Error, "a wildcard needs the dns-01 challenge"}, {Error, "expected a fully qualified name"},
				{Error, "acme ca_roots " + emptyCA + ": no certificate in it"}, {Error, "acme storage " + notDir + ": not a directory"}}},
		{name: "acme covers sni", opt: ServerOptions{ACME: &ACMEOptions{Domains: []string{"app.example.com"}, Storage: filepath.Join(p.dir, "acme")}},
			sni: []string{"app.example.com"}},
		{name: "acme storage required", opt: ServerOptions{ACME: &ACMEOptions{Domains: []string{"app.example.com"}}},
			want: []want{{Error, "storage is required"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CheckServer(tt.opt, tt.sni, time.Now())
			if len(got) != len(tt.want) {
				t.Fatalf("CheckServer found %d problems, want %d:\n%s", len(got), len(tt.want), findingsText(got))
			}
			for i, w := range tt.want {
				if got[i].Severity != w.sev || !strings.Contains(got[i].Message, w.text) {
					t.Errorf("finding %d = %s\nwant a %s with %q", i, got[i], w.sev, w.text)
				}
			}
		})
	}
}

func findingsText(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString("  " + f.String() + "\n")
	}
	return b.String()
}

func TestCheckClient(t *testing.T) {
	p := newPKI(t)
	client := p.pair("client", testutil.Leaf{Client: true})
	other := p.pair("other", testutil.Leaf{Client: true})
	caFile := testutil.WriteFileIn(t, p.dir, "ca.pem", p.ca.PEM)
	unreadable := testutil.WriteFileIn(t, p.dir, "secret.pem", p.ca.PEM)
	if err := os.Chmod(unreadable, 0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opt  ClientOptions
		want []string // "error: ..." or "warning: ..." prefixes of each finding
	}{
		{"valid", ClientOptions{CA: caFile, Cert: client.Cert, Key: client.Key, ServerName: "db.internal"}, nil},
		{"system roots", ClientOptions{}, nil},
		{"mismatched client key", ClientOptions{Cert: client.Cert, Key: other.Key}, []string{"error: backend_tls key " + other.Key + ": the key does not match"}},
		{"cert without key", ClientOptions{Cert: client.Cert}, []string{"error: backend_tls cert " + client.Cert + ": no key"}},
		{"insecure", ClientOptions{InsecureSkipVerify: true, CA: caFile}, []string{"warning: backend_tls insecure_skip_verify: backends' certificates are not verified"}},
		{"a CA file that is a key", ClientOptions{CA: client.Key}, []string{"error: backend_tls ca " + client.Key + ": no certificate in it; it holds a private key"}},
	}
	if os.Geteuid() != 0 { // root reads any file
		tests = append(tests, struct {
			name string
			opt  ClientOptions
			want []string
		}{"unreadable CA", ClientOptions{CA: unreadable}, []string{"error: backend_tls ca " + unreadable + ": cannot read the file: permission denied; make it readable"}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CheckClient(tt.opt, time.Now())
			if len(got) != len(tt.want) {
				t.Fatalf("CheckClient found %d problems, want %d:\n%s", len(got), len(tt.want), findingsText(got))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i].String(), w) {
					t.Errorf("finding %d = %s\nwant it to start %q", i, got[i], w)
				}
			}
		})
	}
}

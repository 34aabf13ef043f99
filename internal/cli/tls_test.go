package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestCheckTLS(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	dir := t.TempDir()
	good, goodKey := ca.Issue(t, testutil.Leaf{Names: []string{"app.example.com"}})
	_, otherKey := ca.Issue(t, testutil.Leaf{Names: []string{"app.example.com"}})
	old, oldKey := ca.Issue(t, testutil.Leaf{Names: []string{"app.example.com"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	file := func(name string, data []byte) string { return testutil.WriteFileIn(t, dir, name, data) }
	cert, key := file("app.pem", good), file("app.key", goodKey)
	wrongKey := file("other.key", otherKey)
	oldCert, oldKeyFile := file("old.pem", old), file("old.key", oldKey)
	caFile := file("ca.pem", ca.PEM)
	notCA := file("notca.pem", []byte("hello\n"))

	proxy := func(tls string) string {
		return "proxies:\n  - name: edge\n    listen: 127.0.0.1:0\n    backends: [127.0.0.1:1]\n    " + tls + "\n"
	}
	routed := func(sni, tls string) string {
		return "proxies:\n  - name: edge\n    listen: 127.0.0.1:0\n    routes:\n      - name: app\n        match: { sni: [" +
			sni + "] }\n        backends: [127.0.0.1:1]\n        " + tls + "\n"
	}
	pair := func(c, k string) string { return "tls: { certificates: [{ cert: " + c + ", key: " + k + " }] }" }
	for _, tc := range []struct {
		name, file string
		valid      bool
		want       string
	}{
		{"good", proxy(pair(cert, key)), true, "TLS terminated with " + cert},
		{"key of another certificate", proxy(pair(cert, wrongKey)), false, "does not match"},
		{"unreadable file", proxy(pair(dir+"/missing.pem", key)), false, "missing.pem"},
		{"expired certificate", proxy(pair(oldCert, oldKeyFile)), true, "warning: proxy edge: "},
		{"name not covered", routed(`"db.example.com"`, pair(cert, key)), true, "warning: proxy edge, route app: "},
		{"client CA without a certificate", proxy(pair(cert, key)[:len(pair(cert, key))-2] + ", client_ca: " + notCA + " }"), false, "notca.pem"},
		{"backend CA without a certificate", proxy("backend_tls: { ca: " + notCA + " }"), false, "notca.pem"},
		{"backend CA", proxy("backend_tls: { ca: " + caFile + " }"), true, "TLS to backends, verified with " + caFile},
		{"acme with http-01", proxy("tls: { acme: { domains: [app.example.com], storage: " + dir + "/acme, http_listen: \"127.0.0.1:8080\" } }"),
			true, "ACME for app.example.com (http-01 on 127.0.0.1:8080)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := check(t, nil, "-c", testutil.WriteFile(t, "pj.yaml", tc.file))
			if (err == nil) != tc.valid {
				t.Fatalf("pj check: %v (valid %v)\n%s", err, tc.valid, out)
			}
			text := out
			if err != nil {
				text = err.Error()
			}
			if !strings.Contains(text, tc.want) {
				t.Errorf("pj check said %q, want %q in it", text, tc.want)
			}
		})
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// startTLSTerminator runs a crypto/tls terminator in front of backend with
// the certificate of "loadgen cert" in dir: what haproxy-tls and nginx-tls
// do in the benchmark.
func startTLSTerminator(t *testing.T, dir, backend string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	return serveForwards(t, ln, backend,
		func(c, b net.Conn) {
			_, _ = io.Copy(b, c)
			_ = b.(*net.TCPConn).CloseWrite()
		},
		func(c, b net.Conn) {
			_, _ = io.Copy(c, b)
			_ = c.(*tls.Conn).CloseWrite()
		})
}

func TestTLSModes(t *testing.T) {
	dir := t.TempDir()
	var errb bytes.Buffer
	if err := Run(context.Background(), []string{"cert", "-dir", dir}, io.Discard, &errb); err != nil {
		t.Fatalf("cert: %v %s", err, errb.String())
	}
	addr := startTLSTerminator(t, dir, startBackend(t))
	self := strconv.Itoa(os.Getpid())
	common := []string{"-target", "self", "-addr", addr, "-pids", self, "-duration", "200ms", "-conn-workers", "2", "-streams", "2",
		"-tls-ca", filepath.Join(dir, "ca.pem")}
	for _, tt := range []struct {
		mode    string
		figures []string
	}{
		{"tlsfull", []string{"hps", "handshakes", "cpu_s_per_1k_hs"}},
		{"tlsresume", []string{"hps", "resumed", "cpu_s_per_1k_hs"}},
		{"tlsbulk", []string{"gbps", "bytes", "cpu_s_per_gib"}},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			m, err := runLine(t, append([]string{"-mode", tt.mode}, common...)...)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.figures {
				positive(t, m, k)
			}
			if tt.mode == "tlsfull" && m["resumed"] != 0.0 {
				t.Errorf("tlsfull resumed %v handshakes, want none", m["resumed"])
			}
		})
	}
	t.Run("a CA that did not sign the target's certificate", func(t *testing.T) {
		other := t.TempDir()
		if err := Run(context.Background(), []string{"cert", "-dir", other}, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
		if _, err := runLine(t, append(append([]string{"-mode", "tlsfull"}, common...), "-tls-ca", filepath.Join(other, "ca.pem"))...); err == nil {
			t.Fatal("tlsfull succeeded against a certificate it cannot verify")
		}
	})
	t.Run("no CA", func(t *testing.T) {
		if _, err := runLine(t, "-mode", "tlsfull", "-addr", addr); err == nil {
			t.Fatal("tlsfull ran without -tls-ca")
		}
	})
}

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

// TestCyclingModesHonourCountAndPace runs every cycling mode, the TLS
// ones through a terminator, with -count alone and with -pace: each stops
// at its count, and a paced one cannot start its cycles faster than its
// rate.
func TestCyclingModesHonourCountAndPace(t *testing.T) {
	dir := t.TempDir()
	if err := Run(context.Background(), []string{"cert", "-dir", dir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	backend := startBackend(t)
	terminator := startTLSTerminator(t, dir, backend)
	for _, tt := range []struct {
		mode, addr, done string
	}{
		{"conn", backend, "conns_ok"},
		{"sni", backend, "conns_ok"},
		{"tlsfull", terminator, "handshakes"},
		{"tlsresume", terminator, "handshakes"},
	} {
		common := []string{"-mode", tt.mode, "-target", "t", "-addr", tt.addr, "-duration", "1m", "-conn-workers", "3",
			"-tls-ca", filepath.Join(dir, "ca.pem")}
		t.Run(tt.mode+" -count", func(t *testing.T) {
			m, err := runLine(t, append(common, "-count", "7")...)
			if err != nil {
				t.Fatal(err)
			}
			if m[tt.done] != 7.0 || m["errors"] != 0.0 {
				t.Fatalf("%s = %v, errors = %v, want 7 and 0 (line %v)", tt.done, m[tt.done], m["errors"], m)
			}
		})
		t.Run(tt.mode+" -pace", func(t *testing.T) {
			// 5 cycles at 20 a second: the fifth starts 250 ms after
			// the first tick could come, however fast the target is.
			m, err := runLine(t, append(common, "-count", "5", "-pace", "-conn-rate", "20")...)
			if err != nil {
				t.Fatal(err)
			}
			if m[tt.done] != 5.0 || m["conn_rate"] != 20.0 {
				t.Fatalf("%s = %v, conn_rate = %v, want 5 and 20 (line %v)", tt.done, m[tt.done], m["conn_rate"], m)
			}
			if s, _ := m["elapsed_s"].(float64); s < 0.25 {
				t.Fatalf("5 cycles at 20/s took %vs, less than 0.25s: not paced (line %v)", s, m)
			}
		})
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"path/filepath"
	"testing"
	"time"
)

func TestConnPacedKeepsItsRate(t *testing.T) {
	addr := startBackend(t)
	// 20 cycles per second for 400 ms: about 8, never many more, however
	// fast the target answers.
	m, err := runLine(t, "-mode", "connpaced", "-target", "direct", "-addr", addr, "-duration", "400ms",
		"-conn-workers", "4", "-conn-rate", "20")
	if err != nil {
		t.Fatal(err)
	}
	positive(t, m, "p50_us")
	if n, _ := m["conns_ok"].(float64); n < 1 || n > 20*0.4+2 {
		t.Errorf("conns_ok = %v at 20/s for 400ms, want 1 to 10", m["conns_ok"])
	}
	if m["conn_rate"] != 20.0 {
		t.Errorf("conn_rate = %v, want 20", m["conn_rate"])
	}
}

func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	var errb bytes.Buffer
	if err := Run(context.Background(), []string{"cert", "-dir", dir}, io.Discard, &errb); err != nil {
		t.Fatalf("cert: %v %s", err, errb.String())
	}
	port := startServing(t, "serve", "-listen", "127.0.0.1:0",
		"-tls-cert", filepath.Join(dir, "cert.pem"), "-tls-key", filepath.Join(dir, "key.pem"))
	roots, err := loadRoots(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", "127.0.0.1:"+port, &tls.Config{ServerName: "bench.pj.test", RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS to the backend: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "x"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'x' {
		t.Fatalf("echo %q, %v", buf, err)
	}
}

package server_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

func TestTLSFailedReloadLeaksNoACMEClient(t *testing.T) {
	// A reload that fails (here: an address already in use) after the
	// new proxies were built must neither start a new ACME client nor
	// take the running one away from the running proxy: once pj stops,
	// no ACME goroutine may be left.
	storage := t.TempDir() // removed last, once no ACME goroutine can write there
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // after the backends and pj stopped
	x := testutil.ClosedAddr(t)
	busy := testutil.Listen(t, "tcp4").Addr().String()
	backend, _ := countingEcho(t)
	acme := func(email string) *config.TLS {
		return &config.TLS{ACME: &config.ACME{Domains: []string{"app.pj.test"}, Email: email,
			Directory: "https://" + testutil.ClosedAddr(t) + "/dir", Storage: filepath.Join(storage, email)}}
	}
	px := pjtest.Proxy("app", x, backend)
	px.TLS = acme("ops@pj.test")
	r := pjtest.Start(t, pjtest.Config(px), server.Options{})
	r.Logs.WaitLines(t, "cannot obtain an ACME certificate yet", 1)

	for _, tt := range []struct {
		name string
		tls  *config.TLS
	}{
		{"the same ACME options", px.TLS},
		{"new ACME options", acme("new@pj.test")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			changed := px
			changed.TLS = tt.tls
			changed.ConnectTimeout = 2 * time.Second // the proxy is built anew
			bad := pjtest.Config(changed, pjtest.Proxy("clash", busy, backend))
			if _, err := r.Reload(bad); err == nil {
				t.Fatal("a reload onto a busy address succeeded")
			}
		})
	}
}

// inotifyWatches counts the inotify watches of this process on dir.
func inotifyWatches(t *testing.T, dir string) int {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	ino := fmt.Sprintf(" ino:%x ", fi.Sys().(*syscall.Stat_t).Ino)
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if link, _ := os.Readlink("/proc/self/fd/" + fd.Name()); link != "anon_inode:inotify" {
			continue
		}
		info, _ := os.ReadFile("/proc/self/fdinfo/" + fd.Name())
		n += strings.Count(string(info), ino)
	}
	return n
}

func TestTLSReloadStopsTheWatchersItNoLongerNeeds(t *testing.T) {
	// With --watch, pj watches the directories of the certificate files.
	// A reload that removes a certificate stops watching its directory;
	// one that turns --watch off stops watching them all.
	backend, _ := countingEcho(t)
	pa, pb := newPKI(t), newPKI(t) // two directories
	a, b := pa.cert(t, "a", "a.example.com"), pb.cert(t, "b", "b.example.com")
	x := testutil.ClosedAddr(t)
	px := pjtest.Proxy("app", x, backend)
	px.TLS = &config.TLS{Certificates: []config.Certificate{a, b}}
	cfg := pjtest.Config(px)
	cfg.Watch = true
	r := pjtest.Start(t, cfg, server.Options{})
	if na, nb := inotifyWatches(t, pa.dir), inotifyWatches(t, pb.dir); na != 1 || nb != 1 {
		t.Fatalf("watches: %d on a's directory, %d on b's; want 1 and 1", na, nb)
	}

	px.TLS = &config.TLS{Certificates: []config.Certificate{a}}
	cfg = pjtest.Config(px)
	cfg.Watch = true
	if _, err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if na, nb := inotifyWatches(t, pa.dir), inotifyWatches(t, pb.dir); na != 1 || nb != 0 {
		t.Fatalf("after removing b: %d watches on a's directory, %d on b's; want 1 and 0", na, nb)
	}

	cfg.Watch = false
	if _, err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if na := inotifyWatches(t, pa.dir); na != 0 {
		t.Fatalf("with watch turned off, %d watches on a's directory", na)
	}
	// And back on.
	cfg.Watch = true
	if _, err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if na := inotifyWatches(t, pa.dir); na != 1 {
		t.Fatalf("with watch turned on again, %d watches on a's directory", na)
	}
}

func TestACMEHTTP01ListenerAcrossReloads(t *testing.T) {
	// The http-01 listener stays bound across a reload that replaces
	// the ACME client (here: a new email), and is closed by one that
	// removes it.
	httpAddr := testutil.ClosedAddr(t)
	backend, _ := countingEcho(t)
	storage := acmeStorage(t)
	acme := func(email string) *config.TLS {
		return &config.TLS{ACME: &config.ACME{Domains: []string{"app.pj.test"}, Email: email,
			Directory: "https://" + testutil.ClosedAddr(t) + "/dir", Storage: filepath.Join(storage, email), HTTPListen: httpAddr}}
	}
	answers := func() bool {
		c, err := net.DialTimeout("tcp", httpAddr, 5*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET / HTTP/1.0\r\nHost: app.pj.test\r\n\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.HasPrefix(line, "HTTP/1.0 302")
	}
	px := pjtest.Proxy("app", testutil.ClosedAddr(t), backend)
	px.TLS = acme("ops@pj.test")
	r := pjtest.Start(t, pjtest.Config(px), server.Options{})
	if !answers() {
		t.Fatal("the http-01 listener does not answer")
	}
	px.TLS = acme("new@pj.test")
	if _, err := r.Reload(pjtest.Config(px)); err != nil {
		t.Fatalf("a reload that keeps http_listen: %v", err)
	}
	if !answers() {
		t.Fatal("the http-01 listener does not answer after the reload")
	}
	px.TLS = &config.TLS{Certificates: []config.Certificate{newPKI(t).cert(t, "app", "app.pj.test")}}
	if _, err := r.Reload(pjtest.Config(px)); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		t.Fatalf("the http-01 address is still bound after a reload removed acme: %v", err)
	}
	_ = ln.Close()
}

func TestACMEHTTP01ListenerThatCannotBindStopsStartUp(t *testing.T) {
	// Start-up is all or nothing, the http-01 listener included.
	busy := testutil.Listen(t, "tcp4").Addr().String()
	x := testutil.ClosedAddr(t)
	px := pjtest.Proxy("app", x, testutil.ClosedAddr(t))
	px.TLS = &config.TLS{ACME: &config.ACME{Domains: []string{"app.pj.test"},
		Directory: "https://" + testutil.ClosedAddr(t) + "/dir", Storage: filepath.Join(t.TempDir(), "acme"), HTTPListen: busy}}
	cfg := pjtest.Config(px)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(cfg, server.Options{})
	if err == nil {
		srv.Close()
		t.Fatal("pj started with its http-01 address in use")
	}
	if !strings.Contains(err.Error(), "http_listen "+busy) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("start-up error %q: want the http-01 address and the reason", err)
	}
	ln, err := net.Listen("tcp", x)
	if err != nil {
		t.Fatalf("the proxy's address is still bound after the failed start: %v", err)
	}
	_ = ln.Close()
}

// acmeStorage returns a directory for ACME clients to keep their account
// and certificates in. Called before pj starts, it is removed only once
// pj has stopped and every ACME client's goroutine has ended: a client
// that is stopping may still be writing its account key there.
func acmeStorage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() {
		testutil.WaitFor(t, 10*time.Second, "the ACME clients to stop", func() bool {
			buf := make([]byte, 1<<20)
			return !bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("certs.(*ACME).obtain"))
		})
	})
	return dir
}

package testutil

import (
	"context"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// LookTool finds a program a test runs (psql, ssh). Without it the test
// skips, unless PJ_REQUIRE_CLIENTS is set, as .ci/run sets it once it has
// installed them: then a missing program is a failure.
func LookTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	missing(t, name+" is not installed")
	return ""
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("PJ_REQUIRE_CLIENTS") != "" {
		t.Fatalf("%s (PJ_REQUIRE_CLIENTS is set, so this is a failure)", why)
	}
	t.Skip(why)
}

// Postgres is a real PostgreSQL server on loopback.
type Postgres struct {
	Addr    string // host:port of its TCP listener
	CAFile  string // the certificate it serves, for sslrootcert
	DataDir string
}

// StartPostgres runs a PostgreSQL server (Debian's postgresql package)
// with ssl=on and cert, on a loopback port, in a new cluster in a
// temporary directory, until the test ends. Every connection is trusted:
// user postgres, no password. Run as root, its programs run as the
// postgres user, which they insist on.
func StartPostgres(t testing.TB, cert Cert) *Postgres {
	t.Helper()
	bin := postgresBin()
	if bin == "" {
		missing(t, "PostgreSQL's server programs (initdb, postgres) are not installed")
	}
	dir := t.TempDir()
	as := postgresUser(t)
	certFile, keyFile := postgresFiles(t, dir, cert, as)
	data := filepath.Join(dir, "data")
	command := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as}
		cmd.WaitDelay = 5 * time.Second
		return cmd
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := command(ctx, "initdb", "-D", data, "-A", "trust", "-U", "postgres",
		"-E", "UTF8", "--no-sync", "--no-instructions").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}

	addr := ClosedAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	server := command(context.Background(), "postgres", "-D", data,
		"-c", "listen_addresses="+host, "-c", "port="+port, "-c", "unix_socket_directories="+dir,
		"-c", "ssl=on", "-c", "ssl_cert_file="+certFile, "-c", "ssl_key_file="+keyFile,
		"-c", "fsync=off", "-c", "full_page_writes=off")
	var log Buffer
	server.Stdout, server.Stderr = &log, &log
	if err := server.Start(); err != nil {
		t.Fatalf("postgres: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = server.Wait(); close(exited) }()
	t.Cleanup(func() {
		// SIGINT is PostgreSQL's fast shutdown: sessions are cut.
		_ = server.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = server.Process.Kill()
			<-exited
		}
	})

	deadline := time.Now().Add(time.Minute)
	for {
		if command(ctx, "pg_isready", "-q", "-h", host, "-p", port).Run() == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("postgres exited at start:\n%s", log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres not ready within a minute:\n%s", log.String())
		}
	}
	return &Postgres{Addr: addr, CAFile: certFile, DataDir: data}
}

// postgresUser is the user PostgreSQL's programs run as: the postgres
// user when the test runs as root (they refuse root), else nil (the
// test's own).
func postgresUser(t testing.TB) *syscall.Credential {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		missing(t, "running as root and there is no postgres user to run PostgreSQL as")
	}
	uid, uerr := strconv.ParseUint(u.Uid, 10, 32)
	gid, gerr := strconv.ParseUint(u.Gid, 10, 32)
	if uerr != nil || gerr != nil {
		t.Fatalf("the postgres user's ids %q, %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// postgresFiles makes dir reachable by the server and writes its
// certificate and key there, owned by as (if not nil).
func postgresFiles(t testing.TB, dir string, cert Cert, as *syscall.Credential) (certFile, keyFile string) {
	t.Helper()
	// The server must reach its directory: t.TempDir's parent is private
	// to the test's user.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	for f, b := range map[string][]byte{certFile: cert.CertPEM, keyFile: cert.KeyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if as != nil {
		for _, f := range []string{dir, certFile, keyFile} {
			if err := os.Chown(f, int(as.Uid), int(as.Gid)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return certFile, keyFile
}

// postgresBin is the directory of the newest installed PostgreSQL's
// server programs, or "".
func postgresBin() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

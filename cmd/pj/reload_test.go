package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// yamlConfig writes a configuration of name → listen → backend proxies.
func yamlConfig(t *testing.T, path string, proxies ...[3]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("grace_period: 1m\nproxies:\n")
	for _, p := range proxies {
		fmt.Fprintf(&b, "  - name: %s\n    listen: %q\n    backends: [%q]\n", p[0], p[1], p[2])
	}
	writeAtomically(t, path, b.String())
}

// writeAtomically replaces path by renaming a new file over it, as editors
// and configuration management tools do.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestSIGHUPReloadRefusesNothingAndCutsNothing(t *testing.T) {
	a1, a2, echo := testutil.Identify(t, "a1"), testutil.Identify(t, "a2"), testutil.StartEcho(t)
	x, y, z := testutil.ClosedAddr(t), testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	yamlConfig(t, path, [3]string{"web", x, a1}, [3]string{"legacy", y, echo})
	p := startPJ(t, 2, "", "-c", path)

	long := testutil.Dial(t, y)
	if got := testutil.RoundTrip(t, long, "before"); got != "before" {
		t.Fatal(got)
	}

	// A bounded client loop hammers the listener that stays...
	const clients, perClient = 4, 200
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []error
		served   int
	)
	for range clients {
		wg.Go(func() {
			for range perClient {
				_, err := testutil.Ask(x)
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					served++
				}
				mu.Unlock()
			}
		})
	}
	// ...while SIGHUP adds, removes and changes proxies, three times.
	steps := [][][3]string{
		{{"web", x, a2}, {"cache", z, echo}},
		{{"web", x, a1}, {"cache", z, echo}},
		{{"web", x, a2}, {"cache", z, echo}},
	}
	for i, step := range steps {
		yamlConfig(t, path, step...)
		p.signal(t, syscall.SIGHUP)
		p.stderr.WaitLines(t, "INFO reload: ", i+1)
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed during reloads; first: %v", len(failures), clients*perClient, failures[0])
	}
	if served != clients*perClient {
		t.Fatalf("served %d", served)
	}
	first := p.stderr.Lines("INFO reload: ")[0]
	for _, want := range []string{"+1 proxy (cache)", "-1 proxy (legacy)", "web: backends changed", "trigger=SIGHUP"} {
		if !strings.Contains(first, want) {
			t.Errorf("reload line %q lacks %q", first, want)
		}
	}
	if got, err := testutil.Ask(x); err != nil || got != "a2" {
		t.Fatalf("web answered %q, %v after the last reload; want a2", got, err)
	}
	c := testutil.Dial(t, z)
	if got := testutil.RoundTrip(t, c, "new"); got != "new" {
		t.Fatalf("the added proxy answered %q", got)
	}
	if nc, err := net.DialTimeout("tcp", y, time.Second); err == nil {
		_ = nc.Close()
		t.Fatal("the removed proxy still accepts")
	}
	if got := testutil.RoundTrip(t, long, "after"); got != "after" {
		t.Fatalf("the established connection of the removed proxy broke: %q", got)
	}
}

func TestInvalidReloadChangesNothing(t *testing.T) {
	a1, a2 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2")
	x := testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	yamlConfig(t, path, [3]string{"web", x, a1})
	p := startPJ(t, 1, "", "-c", path)

	writeAtomically(t, path, fmt.Sprintf(`proxies:
  - name: web
    listen: %q
    backends: [%q]
    conect_timeout: 2s
    idle_timeout: soon
`, x, a2))
	p.signal(t, syscall.SIGHUP)
	p.stderr.WaitLines(t, "reload failed", 1)
	problems := p.stderr.Lines("reload: invalid configuration")
	if len(problems) != 2 ||
		!strings.Contains(problems[0]+problems[1], "pj.yaml:5") || !strings.Contains(problems[0]+problems[1], "did you mean connect_timeout") ||
		!strings.Contains(problems[0]+problems[1], "pj.yaml:6") {
		t.Fatalf("want both problems logged with their lines, got:\n%s", strings.Join(problems, "\n"))
	}
	if got, err := testutil.Ask(x); err != nil || got != "a1" {
		t.Fatalf("web answered %q, %v; the running configuration must go on", got, err)
	}
}

func TestWatchFollowsRenameOverAndSymlinkSwap(t *testing.T) {
	a1, a2, a3 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2"), testutil.Identify(t, "a3")
	x := testutil.ClosedAddr(t)

	// The Kubernetes ConfigMap layout: pj.yaml -> ..data/pj.yaml,
	// ..data -> ..v1.
	dir := t.TempDir()
	version := func(name, backend string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		yamlConfig(t, filepath.Join(dir, name, "pj.yaml"), [3]string{"web", x, backend})
	}
	version("..v1", a1)
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pj.yaml")
	if err := os.Symlink("..data/pj.yaml", path); err != nil {
		t.Fatal(err)
	}
	p := startPJ(t, 1, "", "-c", path, "--watch")
	if got, err := testutil.Ask(x); err != nil || got != "a1" {
		t.Fatalf("answered %q, %v", got, err)
	}

	// kubelet's update: a new version directory, then a new ..data link
	// renamed over the old one.
	version("..v2", a2)
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink("..v2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the symlink swap to be applied", func() bool {
		got, err := testutil.Ask(x)
		return err == nil && got == "a2"
	})

	// An editor's save: a new file renamed over the path (which replaces
	// the link by a plain file).
	yamlConfig(t, path, [3]string{"web", x, a3})
	testutil.WaitFor(t, 10*time.Second, "the renamed-over file to be applied", func() bool {
		got, err := testutil.Ask(x)
		return err == nil && got == "a3"
	})
	p.stderr.WaitLines(t, `trigger="file changed"`, 2)
}

func TestWatchSurvivesHostileFiles(t *testing.T) {
	// Under --watch, whatever replaces the file, a bad reload changes
	// nothing: not a link to /dev/zero (which never ends), not a FIFO
	// (which blocks whoever opens it), not TOML nested 100 000 deep (which
	// once took gigabytes and killed pj).
	a1, a2 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2")
	x := testutil.ClosedAddr(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "pj.toml")
	good := func(backend string) string {
		return fmt.Sprintf("[[proxies]]\nname = \"web\"\nlisten = %q\nbackends = [%q]\n", x, backend)
	}
	writeAtomically(t, path, good(a1))
	p := startPJ(t, 1, "", "-c", path, "--watch")

	swap := func(make func(tmp string) error) {
		t.Helper()
		tmp := filepath.Join(dir, "next")
		if err := make(tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	for i, bad := range []struct {
		name string
		make func(tmp string) error
		says string
	}{
		{"a link to /dev/zero", func(tmp string) error { return os.Symlink("/dev/zero", tmp) }, "not a regular file"},
		{"a FIFO", func(tmp string) error { return syscall.Mkfifo(tmp, 0o600) }, "not a regular file"},
		{"TOML nested 100 000 deep", func(tmp string) error {
			return os.WriteFile(tmp, []byte("x"+strings.Repeat(".a", 100_000)+" = 1\n"), 0o600)
		}, "nested"},
	} {
		swap(bad.make)
		line := p.stderr.WaitLines(t, "reload failed", i+1)[i]
		if !strings.Contains(line, bad.says) {
			t.Fatalf("%s: %q does not say %q", bad.name, line, bad.says)
		}
		if got, err := testutil.Ask(x); err != nil || got != "a1" {
			t.Fatalf("after %s, web answered %q, %v; the running configuration must go on", bad.name, got, err)
		}
	}
	// A file of 80 mistakes: the first 50 are logged, then how many more.
	before := len(p.stderr.Lines("problem="))
	swap(func(tmp string) error {
		return os.WriteFile(tmp, []byte(good(a1)+strings.Repeat("[[proxies]]\nlisten = \"127.0.0.1:0\"\nbackend = []\n", 80)), 0o600)
	})
	p.stderr.WaitLines(t, "reload failed", 4)
	if n := len(p.stderr.Lines("problem=")) - before; n != 50 {
		t.Fatalf("%d problems logged for a file of 80 (or more), want the first 50", n)
	}
	if l := p.stderr.Lines("more_problems="); len(l) != 1 {
		t.Fatalf("no line says how many more problems there are:\n%s", tail(p.stderr.String(), 5))
	}
	// Still watching, still reloading.
	swap(func(tmp string) error { return os.WriteFile(tmp, []byte(good(a2)), 0o600) })
	testutil.WaitFor(t, 10*time.Second, "a good file to be applied after the bad ones", func() bool {
		got, err := testutil.Ask(x)
		return err == nil && got == "a2"
	})
}

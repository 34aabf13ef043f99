package watch

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// watching starts File on path and returns a counter of change calls.
func watching(t *testing.T, path string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- File(ctx, path, 20*time.Millisecond, slog.New(slog.DiscardHandler), func() { n.Add(1) })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("File: %v", err)
		}
	})
	return &n
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitChange writes through change until the watcher has reported a call:
// the watcher may still be starting when the first change happens.
func waitChange(t *testing.T, n *atomic.Int64, change func(i int)) {
	t.Helper()
	start := n.Load()
	i := 0
	testutil.WaitFor(t, 10*time.Second, "a change to be reported", func() bool {
		if n.Load() > start {
			return true
		}
		if i%20 == 0 { // every 100ms, until the watcher is up
			change(i)
		}
		i++
		return false
	})
}

func TestWriteInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pj.yaml")
	write(t, path, "a")
	n := watching(t, path)
	waitChange(t, n, func(i int) { write(t, path, "b") })
}

func TestEditorRenamesANewFileOverTheOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pj.yaml")
	write(t, path, "a")
	n := watching(t, path)
	waitChange(t, n, func(i int) {
		tmp := filepath.Join(dir, ".pj.yaml.swp")
		write(t, tmp, "b")
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	})
	// The watch survives the rename: a second replacement is seen too.
	waitChange(t, n, func(i int) {
		tmp := filepath.Join(dir, "pj.yaml.new")
		write(t, tmp, "c")
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	})
}

func TestKubernetesConfigMapSymlinkSwap(t *testing.T) {
	// The layout kubelet gives a ConfigMap volume:
	//   pj.yaml -> ..data/pj.yaml,  ..data -> ..2026_11_26_v1,  ..2026_11_26_v1/pj.yaml
	// An update writes a new timestamped directory and renames a new
	// ..data link over the old one.
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "pj.yaml"), content)
	}
	version("..v1", "a")
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pj.yaml")
	if err := os.Symlink("..data/pj.yaml", path); err != nil {
		t.Fatal(err)
	}
	n := watching(t, path)
	waitChange(t, n, func(i int) {
		name := "..v" + string(rune('2'+i/20))
		version(name, "b")
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	})
	if b, err := os.ReadFile(path); err != nil || string(b) != "b" {
		t.Fatalf("the file reads %q, %v after the swap", b, err)
	}
}

func TestFilesReportsAChangeToAnyOfThem(t *testing.T) {
	// A certificate and its key, in two directories: one watcher reports
	// a change to either.
	cert := filepath.Join(t.TempDir(), "app.pem")
	key := filepath.Join(t.TempDir(), "app.key")
	write(t, cert, "c1")
	write(t, key, "k1")
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Files(ctx, []string{cert, key}, 20*time.Millisecond, slog.New(slog.DiscardHandler), func() { n.Add(1) })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Files: %v", err)
		}
	})
	waitChange(t, &n, func(i int) { write(t, key, "k2") })
	waitChange(t, &n, func(i int) {
		tmp := cert + ".tmp"
		write(t, tmp, "c2")
		if err := os.Rename(tmp, cert); err != nil {
			t.Fatal(err)
		}
	})
}

func TestFilesRefusesAnUnwatchableDirectory(t *testing.T) {
	ok := filepath.Join(t.TempDir(), "a.pem")
	write(t, ok, "a")
	missing := filepath.Join(t.TempDir(), "no-such-dir", "b.pem")
	err := Files(context.Background(), []string{ok, missing}, time.Millisecond, slog.New(slog.DiscardHandler), func() {})
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Files = %v, want an error naming %s", err, missing)
	}
}

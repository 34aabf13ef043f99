// Package watch tells when a file (pj's configuration, a certificate) may
// have changed, in the ways files really change: written in place, replaced
// by a tool that writes a new file and renames it over the old (editors,
// certbot, cert-manager), or swapped by Kubernetes, whose ConfigMap and
// Secret volumes replace a "..data" symlink that the file's path goes
// through.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// File calls changed, at most once per debounce interval of quiet, after
// any event that may have changed the file at path. It returns when ctx is
// done, or at once if the file's directory cannot be watched. It is New
// and Run.
func File(ctx context.Context, path string, debounce time.Duration, log *slog.Logger, changed func()) error {
	w, err := New(path, log)
	if err != nil {
		return err
	}
	return w.Run(ctx, debounce, changed)
}

// Files is File for several files with one watcher (one inotify instance,
// of which a user has only a few): changed is called once for a burst of
// changes to any of them, as when a certificate and its key are replaced
// together. It is NewFiles and Run.
func Files(ctx context.Context, paths []string, debounce time.Duration, log *slog.Logger, changed func()) error {
	w, err := NewFiles(paths, log)
	if err != nil {
		return err
	}
	return w.Run(ctx, debounce, changed)
}

// Watcher watches one file or a few.
//
// It watches the directory, not the file: a file that is renamed over or
// whose symlink is swapped is a new inode, which a watch on the old one
// would never report. Events are filtered to those naming the file, a
// "..data" entry, or any link on the way to the file's current target.
type Watcher struct {
	path     string   // the paths as given, for messages
	abs      []string // each path made absolute
	log      *slog.Logger
	w        *fsnotify.Watcher
	dirs     map[string]bool // watched
	relevant map[string]bool // paths whose events count
}

// New starts watching path: a change made once New has returned is
// reported by Run. Run (or Close) must follow.
func New(path string, log *slog.Logger) (*Watcher, error) {
	return NewFiles([]string{path}, log)
}

// NewFiles is New for several files, watched by one watcher.
func NewFiles(paths []string, log *slog.Logger) (*Watcher, error) {
	abs := make([]string, 0, len(paths))
	for _, p := range paths {
		a, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", p, err)
		}
		abs = append(abs, a)
	}
	name := strings.Join(paths, ", ")
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", name, err)
	}
	w := &Watcher{path: name, abs: abs, log: log, w: fw, dirs: map[string]bool{}, relevant: map[string]bool{}}
	w.rewatch()
	for i, a := range abs {
		if !w.dirs[filepath.Dir(a)] {
			_ = fw.Close() // giving up: its error would hide the real one
			return nil, fmt.Errorf("watch %s: cannot watch its directory", paths[i])
		}
	}
	return w, nil
}

// rewatch watches the directories of the files and of every link on the
// way to them.
func (w *Watcher) rewatch() {
	for _, a := range w.abs {
		for _, p := range chain(a) {
			w.relevant[p] = true
			d := filepath.Dir(p)
			if !w.dirs[d] {
				if err := w.w.Add(d); err != nil {
					w.log.Warn("cannot watch a directory of a watched file", "dir", d, "file", a, "error", err.Error())
					continue
				}
				w.dirs[d] = true
			}
		}
	}
}

// Close stops watching; Run does it when it returns.
func (w *Watcher) Close() error { return w.w.Close() }

// Run calls changed, at most once per debounce interval of quiet, after
// any event that may have changed the file, until ctx is done; then it
// closes the watcher.
func (w *Watcher) Run(ctx context.Context, debounce time.Duration, changed func()) error {
	defer w.Close()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.w.Events:
			if !ok {
				return nil
			}
			if w.relevant[ev.Name] || filepath.Base(ev.Name) == "..data" {
				timer.Reset(debounce)
			}
		case err, ok := <-w.w.Errors:
			if !ok {
				return nil
			}
			w.log.Warn("watching files", "path", w.path, "error", err.Error())
		case <-timer.C:
			w.rewatch() // the links may point elsewhere now
			changed()
		}
	}
}

// chain lists path and every symlink target on the way to the file it
// finally names, each as an absolute path.
func chain(path string) []string {
	out := []string{path}
	for range 16 { // more links than that is a loop
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			break
		}
		target, err := os.Readlink(path)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		path = filepath.Clean(target)
		out = append(out, path)
	}
	// A directory link on the way (Kubernetes' ..data) is not a link of
	// the file's own path: resolve it too.
	if real, err := filepath.EvalSymlinks(out[0]); err == nil && real != out[len(out)-1] {
		out = append(out, real)
	}
	return out
}

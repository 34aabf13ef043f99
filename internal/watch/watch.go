// Package watch tells when a configuration file may have changed, in the
// ways files really change: written in place, replaced by an editor that
// writes a new file and renames it over the old, or swapped by Kubernetes,
// whose ConfigMap volumes replace a "..data" symlink that the file's path
// goes through.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// File calls changed, at most once per debounce interval of quiet, after
// any event that may have changed the file at path. It returns when ctx is
// done, or at once if the file's directory cannot be watched.
//
// It watches the directory, not the file: a file that is renamed over or
// whose symlink is swapped is a new inode, which a watch on the old one
// would never report. Events are filtered to those naming the file, a
// "..data" entry, or any link on the way to the file's current target.
func File(ctx context.Context, path string, debounce time.Duration, log *slog.Logger, changed func()) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	defer w.Close()

	dirs := map[string]bool{}
	relevant := map[string]bool{}
	rewatch := func() {
		for _, p := range chain(abs) {
			relevant[p] = true
			d := filepath.Dir(p)
			if !dirs[d] {
				if err := w.Add(d); err != nil {
					log.Warn("cannot watch a directory of the configuration file", "dir", d, "error", err.Error())
					continue
				}
				dirs[d] = true
			}
		}
	}
	rewatch()
	if !dirs[filepath.Dir(abs)] {
		return fmt.Errorf("watch %s: cannot watch its directory", path)
	}

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if relevant[ev.Name] || filepath.Base(ev.Name) == "..data" {
				timer.Reset(debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("watching the configuration file", "path", path, "error", err.Error())
		case <-timer.C:
			rewatch() // the links may point elsewhere now
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

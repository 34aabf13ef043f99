// Package version reports which build of pj is running.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at build time with
//
//	go build -ldflags "-X github.com/pj-proxy/pj/internal/version.Version=v1.2.3"
//
// When it is empty, String falls back to the module version and VCS revision
// that the Go toolchain records in the binary.
var Version string

// Get returns the version of this build: the linker-set Version, else the
// main module's version, else the VCS revision, else "devel".
func Get() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		return "devel-" + rev + modified
	}
	return "devel"
}

// String is the text of `pj --version`: first line "pj VERSION".
func String() string {
	return fmt.Sprintf("pj %s\n%s %s/%s\n", Get(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

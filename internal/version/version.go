// Package version reports which build of pj is running.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set at build time by the Makefile and by the release build:
//
//	go build -ldflags "-X github.com/pj-proxy/pj/internal/version.Version=v1.2.3
//	  -X github.com/pj-proxy/pj/internal/version.Commit=0123abcd...
//	  -X github.com/pj-proxy/pj/internal/version.Date=2026-11-26T00:42:20Z"
//
// When one is empty, Build falls back to what the Go toolchain records in the
// binary (the module version, the VCS revision and its time).
var (
	Version string
	Commit  string
	Date    string
)

// Info describes one build of pj.
type Info struct {
	Version   string // v1.2.3, or devel-REVISION for a build from a work tree
	Commit    string // the full VCS revision, "unknown" if none was recorded
	Date      string // when the binary was built (or, failing that, its commit's time), RFC 3339; "unknown" if neither is known
	GoVersion string // the Go toolchain that built it
	Platform  string // GOOS/GOARCH
}

// Get returns the version of this build, as Build().Version.
func Get() string { return Build().Version }

// Build returns the description of this build.
func Build() Info {
	info := Info{
		Version: Version, Commit: Commit, Date: Date,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
	}
	var rev, revTime string
	var modified bool
	bi, ok := debug.ReadBuildInfo()
	if ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				revTime = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if info.Commit == "" {
		info.Commit = rev
		if modified && rev != "" {
			info.Commit += "-dirty"
		}
	}
	if info.Date == "" {
		info.Date = revTime
	}
	if info.Version == "" {
		info.Version = fallbackVersion(bi, ok, rev, modified)
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	if info.Date == "" {
		info.Date = "unknown"
	}
	return info
}

func fallbackVersion(bi *debug.BuildInfo, ok bool, rev string, modified bool) string {
	if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version // go install github.com/pj-proxy/pj/cmd/pj@v1.2.3
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified {
		return "devel-" + rev + "-dirty"
	}
	return "devel-" + rev
}

// String is the text of `pj --version`: the first line is "pj VERSION",
// then one "key: value" line each for the commit, the build date, the Go
// version and the platform.
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pj %s\n", i.Version)
	fmt.Fprintf(&b, "commit: %s\n", i.Commit)
	fmt.Fprintf(&b, "built: %s\n", i.Date)
	fmt.Fprintf(&b, "go: %s\n", i.GoVersion)
	fmt.Fprintf(&b, "platform: %s\n", i.Platform)
	return b.String()
}

// String is Build().String().
func String() string { return Build().String() }

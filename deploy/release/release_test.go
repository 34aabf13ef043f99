// Package release_test checks .goreleaser.yaml the way `goreleaser
// check` begins: by decoding it strictly into GoReleaser's own
// configuration types, so that an unknown or misspelt key fails. Then it
// checks what pj's releases promise. It is a module of its own so that
// pj's module does not depend on GoReleaser; `make release-check` runs
// it.
package release_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/goreleaser/goreleaser/v2/pkg/config"
)

const root = "../.."

func load(t *testing.T) config.Project {
	t.Helper()
	f, err := os.Open(filepath.Join(root, ".goreleaser.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := config.LoadReader(f)
	if err != nil {
		t.Fatalf(".goreleaser.yaml: %v", err)
	}
	if p.Version != 2 {
		t.Fatalf(".goreleaser.yaml: version %d, want 2", p.Version)
	}
	return p
}

func TestBuildsAreStaticLinuxAmd64AndArm64(t *testing.T) {
	p := load(t)
	if len(p.Builds) != 1 {
		t.Fatalf("%d builds, want 1", len(p.Builds))
	}
	b := p.Builds[0]
	if b.Main != "./cmd/pj" || b.Binary != "pj" {
		t.Errorf("main %q binary %q, want ./cmd/pj and pj", b.Main, b.Binary)
	}
	if !slices.Equal(b.Goos, []string{"linux"}) || !slices.Equal(b.Goarch, []string{"amd64", "arm64"}) {
		t.Errorf("goos %v goarch %v, want linux and amd64, arm64", b.Goos, b.Goarch)
	}
	if !slices.Contains(b.Env, "CGO_ENABLED=0") {
		t.Errorf("env %v: want CGO_ENABLED=0, a static binary", b.Env)
	}
	ldflags := strings.Join(b.Ldflags, " ")
	for _, v := range []string{"Version", "Commit", "Date"} {
		if !strings.Contains(ldflags, "github.com/pj-proxy/pj/internal/version."+v+"=") {
			t.Errorf("ldflags %q do not set version.%s (pj -V)", ldflags, v)
		}
	}
	if len(p.Checksum.NameTemplate) == 0 {
		t.Error("no checksum file")
	}
	if len(p.Archives) != 1 || !slices.Equal(p.Archives[0].Formats, []string{"tar.gz"}) {
		t.Errorf("archives %+v, want one tar.gz per platform", p.Archives)
	}
}

func TestPackagesCarryTheUnitAndTheConfiguration(t *testing.T) {
	p := load(t)
	if len(p.NFPMs) != 1 {
		t.Fatalf("%d nfpms, want 1", len(p.NFPMs))
	}
	n := p.NFPMs[0]
	if !slices.Equal(n.Formats, []string{"deb", "rpm"}) {
		t.Errorf("formats %v, want deb and rpm", n.Formats)
	}
	if n.Bindir != "/usr/bin" {
		t.Errorf("bindir %q, want /usr/bin, where the unit's ExecStart looks", n.Bindir)
	}
	want := map[string]string{
		"/usr/lib/systemd/system/pj.service": "",
		"/usr/lib/systemd/system/pj.socket":  "",
		"/etc/pj/pj.yaml":                    "config|noreplace", // local edits survive upgrades
	}
	for _, c := range n.Contents {
		if _, err := os.Stat(filepath.Join(root, c.Source)); err != nil {
			t.Errorf("package content %s: %v", c.Source, err)
		}
		if typ, ok := want[c.Destination]; ok {
			if c.Type != typ {
				t.Errorf("%s: type %q, want %q", c.Destination, c.Type, typ)
			}
			delete(want, c.Destination)
		}
	}
	for dst := range want {
		t.Errorf("the packages do not install %s", dst)
	}
	for _, s := range []string{n.Scripts.PostInstall, n.Scripts.PreRemove, n.Scripts.PostRemove} {
		fi, err := os.Stat(filepath.Join(root, s))
		if err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("package script %q: missing or not executable (%v)", s, err)
		}
	}
	if n.Maintainer == "" || n.Description == "" {
		t.Error("a package needs a maintainer and a description")
	}
}

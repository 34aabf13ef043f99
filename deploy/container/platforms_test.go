package container_test

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// machines maps a GOARCH to the ELF machine its binaries are for.
var machines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
}

// TestImagePlatforms checks every platform the image was built for
// (PJ_IMAGE_PLATFORMS, "linux/amd64 linux/arm64"): with more than one,
// the image is a manifest list naming each; each platform's /pj is a
// static binary for that architecture. Only the platform of this machine
// runs (the other tests); the others are checked without emulation.
func TestImagePlatforms(t *testing.T) {
	name, engine := image(t)
	if engine != "buildah" {
		t.Skip("platforms are inspected with buildah")
	}
	platforms := strings.Fields(os.Getenv("PJ_IMAGE_PLATFORMS"))
	if len(platforms) == 0 {
		t.Fatal("PJ_IMAGE_PLATFORMS is not set: make image-test sets it to the platforms built")
	}
	if len(platforms) > 1 {
		out, err := exec.Command("buildah", "manifest", "inspect", name).Output()
		if err != nil {
			t.Fatalf("buildah manifest inspect %s: %v (%s): a multi-platform image is a manifest list", name, err, stderrOf(err))
		}
		var list struct {
			Manifests []struct {
				Platform struct {
					OS           string `json:"os"`
					Architecture string `json:"architecture"`
				} `json:"platform"`
			} `json:"manifests"`
		}
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatal(err)
		}
		var listed []string
		for _, m := range list.Manifests {
			listed = append(listed, m.Platform.OS+"/"+m.Platform.Architecture)
		}
		slices.Sort(listed)
		want := slices.Sorted(slices.Values(platforms))
		if !slices.Equal(listed, want) {
			t.Fatalf("the manifest list names %v, want %v", listed, want)
		}
	}
	for _, p := range platforms {
		t.Run(p, func(t *testing.T) {
			arch := p[strings.IndexByte(p, '/')+1:]
			args := []string{"from", "--pull=never"}
			if len(platforms) > 1 {
				args = append(args, "--platform", p)
			}
			out, err := exec.Command("buildah", append(args, name)...).Output()
			if err != nil {
				t.Fatalf("buildah from %s: %v (%s)", p, err, stderrOf(err))
			}
			id := strings.TrimSpace(string(out))
			t.Cleanup(func() { _ = exec.Command("buildah", "rm", id).Run() })
			mnt, err := exec.Command("buildah", "mount", id).Output()
			if err != nil {
				t.Fatalf("buildah mount: %v (%s)", err, stderrOf(err))
			}
			t.Cleanup(func() { _ = exec.Command("buildah", "umount", id).Run() })
			f, err := elf.Open(filepath.Join(strings.TrimSpace(string(mnt)), "pj"))
			if err != nil {
				t.Fatalf("/pj is not an ELF binary: %v", err)
			}
			defer f.Close()
			if want, ok := machines[arch]; !ok || f.Machine != want {
				t.Errorf("/pj is for %v, want %s", f.Machine, arch)
			}
			for _, prog := range f.Progs {
				if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
					t.Errorf("/pj is dynamically linked (%v): on an empty base it cannot start", prog.Type)
				}
			}
		})
	}
}

// Package container_test checks pj's container image as it was built:
// `make image-test` builds it and runs these tests with PJ_IMAGE set to
// its name. Without PJ_IMAGE they are skipped. The image is run with
// buildah (`buildah run --isolation chroot`, which works without a daemon
// and in CI sandboxes), or with docker or podman when ENGINE says so.
package container_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjproc"
)

// image returns the image under test and the engine that runs it.
func image(t *testing.T) (name, engine string) {
	t.Helper()
	name = os.Getenv("PJ_IMAGE")
	if name == "" {
		t.Skip("PJ_IMAGE is not set: `make image-test` builds the image and runs this test")
	}
	engine = os.Getenv("ENGINE")
	if engine == "" {
		engine = "buildah"
	}
	if _, err := exec.LookPath(engine); err != nil {
		t.Fatalf("%s, which runs the image, is not installed: %v", engine, err)
	}
	return name, engine
}

// container is a working container of the image (buildah) or nothing
// (docker and podman run the image itself).
type container struct {
	engine, image, id string
}

func newContainer(t *testing.T) *container {
	t.Helper()
	name, engine := image(t)
	c := &container{engine: engine, image: name}
	if engine == "buildah" {
		out, err := exec.Command("buildah", "from", "--pull=never", name).Output()
		if err != nil {
			t.Fatalf("buildah from %s: %v (%s)", name, err, stderrOf(err))
		}
		c.id = strings.TrimSpace(string(out))
		t.Cleanup(func() { _ = exec.Command("buildah", "rm", c.id).Run() })
	}
	return c
}

// command runs pj in the container with args, through the image's
// entry point where the engine applies it.
func (c *container) command(args ...string) *exec.Cmd {
	if c.engine == "buildah" {
		// buildah run does not apply the entry point; the test checks it
		// in TestImageConfiguration.
		return exec.Command("buildah", append([]string{"run", "--isolation", "chroot", c.id, "--", "/pj"}, args...)...)
	}
	return exec.Command(c.engine, append([]string{"run", "--rm", "--network", "host", c.image}, args...)...)
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

func TestImageVersion(t *testing.T) {
	c := newContainer(t)
	code, out, errOut := pjproc.Run(t, c.command("-V"))
	if code != 0 {
		t.Fatalf("pj -V in the image: exit %d (%s)", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if want := "pj " + os.Getenv("PJ_IMAGE_VERSION"); len(lines) != 5 || !strings.HasPrefix(lines[0], want) {
		t.Fatalf("pj -V printed %q, want 5 lines, the first %q", out, want)
	}
	for i, key := range []string{"commit: ", "built: ", "go: go1.", "platform: linux/"} {
		v, ok := strings.CutPrefix(lines[i+1], key)
		if !ok || v == "" || v == "unknown" {
			t.Errorf("line %d is %q, want %q and a value", i+2, lines[i+1], key)
		}
	}
}

func TestImageProxiesARoundTrip(t *testing.T) {
	c := newContainer(t)
	backend := testutil.StartEcho(t)
	p := pjproc.Start(t, c.command("--proxy", "127.0.0.1:0:"+backend))
	// pj logs the port it bound; the chroot shares this machine's
	// network, so the test reaches it on loopback.
	addr := p.WaitListening(t, 1)[0]

	conn := testutil.Dial(t, addr)
	if got := testutil.RoundTrip(t, conn, "through the image"); got != "through the image" {
		t.Fatalf("round trip through pj in the image returned %q", got)
	}
	_ = conn.Close()
	// The connection's log line comes from inside the image.
	p.Stderr.WaitLines(t, "-> "+backend+" [ok]", 1)
}

// TestImageConfiguration checks what the Dockerfile promises: pj as the
// entry point, a non-root user, CA certificates, and nothing but them.
func TestImageConfiguration(t *testing.T) {
	c := newContainer(t)
	if c.engine != "buildah" {
		t.Skip("the image's files are inspected with buildah")
	}
	out, err := exec.Command("buildah", "inspect", "--type", "container", c.id).Output()
	if err != nil {
		t.Fatalf("buildah inspect: %v (%s)", err, stderrOf(err))
	}
	var info struct {
		OCIv1 struct {
			Config struct {
				User       string
				Entrypoint []string
				Cmd        []string
			}
		}
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	cfg := info.OCIv1.Config
	if cfg.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (non-root)", cfg.User)
	}
	if len(cfg.Entrypoint) != 1 || cfg.Entrypoint[0] != "/pj" || len(cfg.Cmd) != 0 {
		t.Errorf("entry point %q, command %q: want [/pj] and none, so that a compose command: is pj's flags", cfg.Entrypoint, cfg.Cmd)
	}

	mnt, err := exec.Command("buildah", "mount", c.id).Output()
	if err != nil {
		t.Fatalf("buildah mount: %v (%s)", err, stderrOf(err))
	}
	root := strings.TrimSpace(string(mnt))
	t.Cleanup(func() { _ = exec.Command("buildah", "umount", c.id).Run() })
	var files []string
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, path)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"etc/ssl/certs/ca-certificates.crt", "pj"}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Errorf("the image holds %q, want exactly %q", files, want)
	}
	ca, err := os.ReadFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"))
	if err != nil || !strings.Contains(string(ca), "BEGIN CERTIFICATE") {
		t.Errorf("the CA bundle holds no certificate (%v)", err)
	}
}

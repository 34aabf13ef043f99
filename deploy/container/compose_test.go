package container_test

import (
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/pj-proxy/pj/internal/config"
)

// TestComposeFile checks deploy/compose/compose.yaml: pj from the image
// this repository builds, in front of the backend service, with the
// command that the image's entry point turns into pj's flags.
func TestComposeFile(t *testing.T) {
	data, err := os.ReadFile("../compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Services map[string]struct {
			Image           string   `yaml:"image"`
			Build           any      `yaml:"build"`
			Command         string   `yaml:"command"`
			Ports           []string `yaml:"ports"`
			DependsOn       []string `yaml:"depends_on"`
			Restart         string   `yaml:"restart"`
			ReadOnly        bool     `yaml:"read_only"`
			CapDrop         []string `yaml:"cap_drop"`
			SecurityOpt     []string `yaml:"security_opt"`
			StopGracePeriod string   `yaml:"stop_grace_period"`
		} `yaml:"services"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	pj, ok := file.Services["pj"]
	if !ok {
		t.Fatal("no pj service")
	}
	if _, ok := file.Services["backend"]; !ok {
		t.Fatal("no backend service")
	}
	if pj.Image != "pj:latest" || pj.Build == nil {
		t.Errorf("pj: image %q, build %v: want pj:latest, buildable from the repository", pj.Image, pj.Build)
	}
	const want = "--proxy 0.0.0.0:8787:backend:22 --proxy 0.0.0.0:8080:backend:80"
	if pj.Command != want {
		t.Errorf("pj: command %q, want %q", pj.Command, want)
	}
	for _, f := range strings.Fields(pj.Command) {
		if f == "--proxy" {
			continue
		}
		if _, err := config.ParseMapping(f); err != nil {
			t.Errorf("pj: mapping %q: %v", f, err)
		}
	}
	if strings.Join(pj.DependsOn, ",") != "backend" || strings.Join(pj.Ports, ",") != "8787:8787,8080:8080" {
		t.Errorf("pj: depends_on %q, ports %q", pj.DependsOn, pj.Ports)
	}
	if !pj.ReadOnly || strings.Join(pj.CapDrop, ",") != "ALL" || len(pj.SecurityOpt) != 1 || pj.StopGracePeriod != "40s" {
		t.Errorf("pj: read_only %v, cap_drop %q, security_opt %q, stop_grace_period %q: want a read-only, unprivileged pj given 40s to drain",
			pj.ReadOnly, pj.CapDrop, pj.SecurityOpt, pj.StopGracePeriod)
	}
}

package config_test

import (
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

// kernelRelayIgnored is what a load says of kernel_relay, after where it
// is set.
const kernelRelayIgnored = ": kernel_relay is no longer supported and is ignored: " +
	"connections are relayed with splice, which measured faster; remove it"

// TestKernelRelayIsAcceptedAndIgnored loads files that set kernel_relay
// wherever an older pj accepted it: each loads, warns once naming every
// line that sets it, and runs as the same file without it would.
func TestKernelRelayIsAcceptedAndIgnored(t *testing.T) {
	tests := []struct {
		name, file, text string
		where            string // the lines that set it; "" for none
	}{
		{"a proxy", "pj.yaml", "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n    kernel_relay: true\n", "pj.yaml:4"},
		{"a proxy, false", "pj.yaml", "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n    kernel_relay: false\n", "pj.yaml:4"},
		{"the defaults", "pj.yaml", "defaults:\n  kernel_relay: true\n  idle_timeout: 1m\nproxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n", "pj.yaml:2"},
		{"a listener with routes and a route", "pj.yaml",
			"proxies:\n  - name: edge\n    listen: 0.0.0.0:443\n    kernel_relay: true\n    routes:\n      - backends: [b:1]\n        kernel_relay: true\n",
			"pj.yaml:4, pj.yaml:7"},
		{"beside what it refused: bandwidth and backend_tls", "pj.yaml",
			"proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n    bandwidth: { per_connection: 1MiB }\n    backend_tls: { server_name: db.example }\n    kernel_relay: true\n",
			"pj.yaml:6"},
		{"a UDP proxy", "pj.yaml", "proxies:\n  - listen: 0.0.0.0:53/udp\n    backends: [b:53]\n    kernel_relay: true\n", "pj.yaml:4"},
		{"none", "pj.yaml", "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n", ""},

		{"TOML: a proxy", "pj.toml", "[[proxies]]\nlisten = \"0.0.0.0:9000\"\nbackends = [\"b:9000\"]\nkernel_relay = true\n", "pj.toml:4"},
		{"TOML: the defaults and a route", "pj.toml",
			"[defaults]\nkernel_relay = true\n[[proxies]]\nname = \"edge\"\nlisten = \"0.0.0.0:443\"\n[[proxies.routes]]\nbackends = [\"b:1\"]\nkernel_relay = false\n",
			"pj.toml:2, pj.toml:8"},
		{"TOML: none", "pj.toml", "[[proxies]]\nlisten = \"0.0.0.0:9000\"\nbackends = [\"b:9000\"]\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := loadNamed(t, tt.file, tt.text)
			var want []string
			if tt.where != "" {
				want = []string{tt.where + kernelRelayIgnored}
			}
			if got := c.Warnings(); !slices.Equal(got, want) {
				t.Errorf("warnings %q, want %q", got, want)
			}
			// The same file without the key: the same configuration.
			var kept []string
			for line := range strings.Lines(tt.text) {
				if !strings.Contains(line, "kernel_relay") {
					kept = append(kept, line)
				}
			}
			without := loadNamed(t, tt.file, strings.Join(kept, ""))
			if without.Warnings() != nil {
				t.Errorf("without the key, warnings %q", without.Warnings())
			}
			c.Ignored, c.File, without.File = nil, "", ""
			for i := range c.Proxies {
				c.Proxies[i].Source, without.Proxies[i].Source = "", ""
				for j := range c.Proxies[i].Routes {
					c.Proxies[i].Routes[j].Source, without.Proxies[i].Routes[j].Source = "", ""
				}
			}
			if !reflect.DeepEqual(c, without) {
				t.Errorf("with the key:\n%+v\nwithout:\n%+v\nwant the same", c, without)
			}
		})
	}
}

// loadNamed writes text as name in a directory of its own, which becomes
// the working directory, and loads it by that name, as pj does.
func loadNamed(t *testing.T, name, text string) config.Config {
	t.Helper()
	t.Chdir(filepath.Dir(testutil.WriteFile(t, name, text)))
	c, err := config.Load(name, env(nil))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

func TestKernelRelayIsStillABoolean(t *testing.T) {
	// An older pj refused anything but true or false; so does this one.
	_, got := load(t, "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n    kernel_relay: yes please\n")
	if want := []string{"pj.yaml:4: proxies[0].kernel_relay: expected true or false, got a string"}; !slices.Equal(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
}

func TestKernelRelayIsNotOffered(t *testing.T) {
	// A key that is no longer supported is not among those a typo is
	// told of.
	_, got := load(t, "proxies:\n  - listen: 0.0.0.0:9000\n    backends: [b:9000]\n    kernel_reley: true\n")
	if len(got) != 1 || strings.Contains(got[0], "kernel_relay") || !strings.Contains(got[0], "unknown key") {
		t.Errorf("problems %q, want one unknown key that does not offer kernel_relay", got)
	}
}

package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/testutil"
)

// kernelRelayIgnored is what pj says of kernel_relay, after where it is
// set.
const kernelRelayIgnored = ": kernel_relay is no longer supported and is ignored: " +
	"connections are relayed with splice, which measured faster; remove it"

// TestCheckWarnsOfKernelRelay: pj check accepts kernel_relay wherever an
// older pj did (a key of a YAML or TOML file, --kernel-relay,
// PJ_KERNEL_RELAY) and warns of it in exactly one line, which names every
// place that sets it.
func TestCheckWarnsOfKernelRelay(t *testing.T) {
	yaml := testutil.WriteFile(t, "pj.yaml", "defaults:\n  kernel_relay: true\nproxies:\n  - listen: 127.0.0.1:0\n    backends: [127.0.0.1:1]\n    kernel_relay: false\n")
	toml := testutil.WriteFile(t, "pj.toml", "[[proxies]]\nlisten = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:1\"]\nkernel_relay = true\n")
	plain := testutil.WriteFile(t, "plain.yaml", "proxies:\n  - listen: 127.0.0.1:0\n    backends: [127.0.0.1:1]\n")
	mapping := "127.0.0.1:0:127.0.0.1:1"
	tests := []struct {
		name  string
		env   map[string]string
		args  []string
		where string // the places that set it; "" for none
	}{
		{"a YAML file", nil, []string{"-c", yaml}, yaml + ":2, " + yaml + ":6"},
		{"a TOML file", nil, []string{"-c", toml}, toml + ":4"},
		{"the flag", nil, []string{"-p", mapping, "--kernel-relay"}, "--kernel-relay"},
		{"the flag, false, beside a file", nil, []string{"-c", plain, "--kernel-relay=false"}, "--kernel-relay"},
		{"the variable", map[string]string{"PJ_KERNEL_RELAY": "true"}, []string{"-c", plain}, "PJ_KERNEL_RELAY"},
		{"the variable alone", map[string]string{"PJ_KERNEL_RELAY": "true"}, []string{"-p", mapping}, "PJ_KERNEL_RELAY"},
		{"a file and the flag, which wins over the variable", map[string]string{"PJ_KERNEL_RELAY": "true"},
			[]string{"-c", toml, "--kernel-relay"}, toml + ":4, --kernel-relay"},
		{"none in a file", nil, []string{"-c", plain}, ""},
		{"none on the command line", nil, []string{"-p", mapping}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := check(t, tt.env, tt.args...)
			if err != nil {
				t.Fatalf("pj check: %v", err)
			}
			if !strings.Contains(out, " is valid: 1 proxy\n") {
				t.Errorf("output:\n%s\nwant a valid configuration", out)
			}
			var got, want []string
			for line := range strings.Lines(out) {
				if strings.Contains(line, "kernel") {
					got = append(got, strings.TrimSuffix(line, "\n"))
				}
			}
			if tt.where != "" {
				want = []string{"warning: " + tt.where + kernelRelayIgnored}
			}
			if !slices.Equal(got, want) {
				t.Errorf("lines about the kernel relay %q, want %q; output:\n%s", got, want, out)
			}
		})
	}
}

func TestKernelRelayFlagIsHidden(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"check", "--help"}} {
		var out strings.Builder
		if err := Run(context.Background(), args, &out, io.Discard); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(out.String(), "--idle-timeout") || strings.Contains(out.String(), "kernel") {
			t.Errorf("pj %s:\n%s\nwant the flags without --kernel-relay", strings.Join(args, " "), out.String())
		}
	}
}

// TestKernelRelayIsLoggedOncePerLoad: pj warns of kernel_relay once at
// start-up and once at each reload, wherever it is set, and not at all
// for a configuration without it.
func TestKernelRelayIsLoggedOncePerLoad(t *testing.T) {
	echo := testutil.StartEcho(t)
	for _, tt := range []struct {
		name, key string
		args      []string
		where     string // "" for no warning
	}{
		{"the file and the flag", "    kernel_relay: true\n", []string{"--kernel-relay"}, ":4, --kernel-relay"},
		{"none", "", nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "pj.yaml")
			text := fmt.Sprintf("proxies:\n  - listen: 127.0.0.1:0\n    backends: [%q]\n%s", echo, tt.key)
			if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			reload := make(chan struct{}, 1)
			inst, err := tryStartWith(t, nil, []Option{WithReload(reload)}, nil, append([]string{"-c", file}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			want := func(loads int) []string {
				if tt.where == "" {
					return nil
				}
				return slices.Repeat([]string{"WARN " + file + tt.where + kernelRelayIgnored}, loads)
			}
			warnings := func() []string {
				var out []string
				for _, l := range inst.log.Lines("kernel") {
					_, msg, _ := strings.Cut(l, "] ") // after the time
					out = append(out, msg)
				}
				return out
			}
			// Lines are written in order: the warning comes before the
			// listener is announced, and before a reload is.
			inst.log.WaitLines(t, "INFO listening", 1)
			if got := warnings(); !slices.Equal(got, want(1)) {
				t.Errorf("after start-up, log lines about the kernel relay:\n%q\nwant\n%q", got, want(1))
			}
			reload <- struct{}{}
			inst.log.WaitLines(t, "trigger=SIGHUP", 1)
			if got := warnings(); !slices.Equal(got, want(2)) {
				t.Errorf("after a reload, log lines about the kernel relay:\n%q\nwant\n%q", got, want(2))
			}
		})
	}
}

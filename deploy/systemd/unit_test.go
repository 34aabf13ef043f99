// Package systemd_test checks the systemd units pj ships: the hardening
// and notification directives they must keep, and, where systemd-analyze
// is installed, that systemd itself accepts them.
package systemd_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

// unit is a parsed unit file: section → key → values, in file order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not KEY=VALUE in a section: %q", path, n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

func TestServiceDirectives(t *testing.T) {
	svc := parseUnit(t, "pj.service")["Service"]
	want := map[string]string{
		"Type":                    "notify",
		"NotifyAccess":            "all", // the new process of an upgrade says MAINPID=
		"ExecStart":               "/usr/bin/pj -c /etc/pj/pj.yaml",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"DynamicUser":             "yes",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"CapabilityBoundingSet":   "CAP_NET_BIND_SERVICE",
		"AmbientCapabilities":     "CAP_NET_BIND_SERVICE",
		"LimitNOFILE":             "1048576",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	}
	for k, v := range want {
		got := svc[k]
		if len(got) != 1 || got[0] != v {
			t.Errorf("[Service] %s = %q, want %q", k, got, v)
		}
	}
	// The watchdog is on, and stopping outlasts the default grace period
	// (30s), so that systemd never kills a drain that pj would finish.
	for _, k := range []string{"WatchdogSec", "TimeoutStopSec"} {
		if len(svc[k]) != 1 {
			t.Fatalf("[Service] %s is not set once", k)
		}
	}
	if svc["TimeoutStopSec"][0] != "60s" {
		t.Errorf("TimeoutStopSec = %s, want 60s (above the 30s grace period)", svc["TimeoutStopSec"][0])
	}
	if svc["ExecStartPre"] == nil || !strings.HasPrefix(svc["ExecStartPre"][0], "/usr/bin/pj check ") {
		t.Errorf("ExecStartPre = %q: want the configuration checked before start", svc["ExecStartPre"])
	}
}

func TestSocketDirectives(t *testing.T) {
	u := parseUnit(t, "pj.socket")
	if len(u["Socket"]["ListenStream"]) == 0 {
		t.Fatal("pj.socket has no ListenStream")
	}
	if len(u["Socket"]["ListenDatagram"]) != 0 {
		t.Fatal("pj.socket passes datagram sockets, which pj does not take")
	}
	if got := u["Install"]["WantedBy"]; len(got) != 1 || got[0] != "sockets.target" {
		t.Errorf("[Install] WantedBy = %q, want sockets.target", got)
	}
}

// TestSystemdAccepts runs systemd-analyze on the units: verify must print
// nothing (it warns, yet exits 0, on an unknown directive), and the
// service's exposure must stay below 2.0 on systemd's 0-10 scale.
// PJ_REQUIRE_SYSTEMD_ANALYZE=1 (set by CI) fails instead of skipping when
// systemd-analyze is missing.
func TestSystemdAccepts(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("PJ_REQUIRE_SYSTEMD_ANALYZE") != "" {
			t.Fatal("systemd-analyze is not installed (apt-get install systemd)")
		}
		t.Skip("systemd-analyze is not installed; the directives were checked above")
	}
	// verify checks that ExecStart's program exists: point it at this
	// test's own executable.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"pj.service", "pj.socket"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "/usr/bin/pj", self)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(analyze, "verify", "pj.service", "pj.socket")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	cmd = exec.Command(analyze, "security", "--offline=yes", "--threshold=20", "pj.service")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-analyze security: exposure above 2.0 (%v)\n%s", err, out)
	}
}

// TestPackagedConfigurationIsValid checks the example the packages install
// as /etc/pj/pj.yaml, which the unit's ExecStartPre checks in turn.
func TestPackagedConfigurationIsValid(t *testing.T) {
	data, err := os.ReadFile("../pj.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Decode("pj.yaml", data, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GracePeriod.Seconds() >= 60 {
		t.Errorf("grace_period %s: the unit's TimeoutStopSec (60s) must stay above it", cfg.GracePeriod)
	}
}

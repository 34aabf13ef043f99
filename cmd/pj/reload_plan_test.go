package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

// planConfig writes a configuration with an admin listener of its own
// (token may be empty) and name → listen → backend proxies.
func planConfig(t *testing.T, path, token string, proxies ...[3]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "grace_period: 1m\nadmin: { listen: \"127.0.0.1:0\", token: %q }\nproxies:\n", token)
	for _, p := range proxies {
		fmt.Fprintf(&b, "  - name: %s\n    listen: %q\n    backends: [%q]\n", p[0], p[1], p[2])
	}
	writeAtomically(t, path, b.String())
}

// runWith runs pj to completion with env (beside PATH) and returns its
// exit status, stdout and stderr.
func runWith(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(pjBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("pj %v did not exit within 40s", args)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

type reloadJSON struct {
	Valid   bool     `json:"valid"`
	DryRun  bool     `json:"dry_run"`
	Applied bool     `json:"applied"`
	Errors  []string `json:"errors"`
	Changes []struct {
		Action      string   `json:"action"`
		Proxy       string   `json:"proxy"`
		Listen      string   `json:"listen"`
		Keys        []string `json:"keys"`
		Connections int64    `json:"connections_affected"`
	} `json:"changes"`
	ConnectionsAffected *int64 `json:"connections_affected"`
}

// postReload calls the API as a script would.
func postReload(t *testing.T, addr, query, token string) (int, reloadJSON) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/api/v1/reload"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out reloadJSON
	if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("POST /api/v1/reload%s: %s: %v\n%s", query, resp.Status, err, body)
		}
	}
	return resp.StatusCode, out
}

func TestReloadPlanSaysWhatItWouldCutAndChangesNothing(t *testing.T) {
	a1, a2, echo := testutil.Identify(t, "a1"), testutil.Identify(t, "a2"), testutil.StartEcho(t)
	x, y, z := testutil.ClosedAddr(t), testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	planConfig(t, path, "", [3]string{"web", x, a1}, [3]string{"legacy", y, echo})
	p := startPJ(t, 2, "", "-c", path)
	admin := p.adminAddr(t)

	// Two live connections on the proxy the new file removes.
	long := []net.Conn{testutil.Dial(t, y), testutil.Dial(t, y)}
	for _, c := range long {
		if got := testutil.RoundTrip(t, c, "before"); got != "before" {
			t.Fatal(got)
		}
	}
	planConfig(t, path, "", [3]string{"web", x, a2}, [3]string{"cache", z, echo})

	t.Run("the CLI's dry run", func(t *testing.T) {
		code, out, errOut := runWith(t, nil, "reload", "--dry-run", "--admin", admin)
		if code != 0 {
			t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
		for _, want := range []string{
			"a reload would:",
			"+ add proxy cache on " + z,
			"- remove proxy legacy on " + y + " (cuts 2 live connections)",
			"~ change proxy web: backends (cuts 0 live connections)",
			"live connections cut: 2",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("stdout lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("the API's dry run", func(t *testing.T) {
		code, res := postReload(t, admin, "?dry_run=true", "")
		if code != http.StatusOK || !res.Valid || !res.DryRun || res.Applied || len(res.Errors) != 0 {
			t.Fatalf("status %d, %+v", code, res)
		}
		if res.ConnectionsAffected == nil || *res.ConnectionsAffected != 2 {
			t.Fatalf("connections_affected %v, want 2", res.ConnectionsAffected)
		}
		got := map[string]string{}
		for _, c := range res.Changes {
			got[c.Action+" "+c.Proxy] = fmt.Sprintf("%s %v %d", c.Listen, c.Keys, c.Connections)
		}
		want := map[string]string{
			"add cache":     z + " [] 0",
			"remove legacy": y + " [] 2",
			"change web":    x + " [backends] 0",
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("changes %v, want %v", got, want)
		}
	})
	// Nothing of the dry runs was applied.
	if got, err := testutil.Ask(x); err != nil || got != "a1" {
		t.Fatalf("web answered %q, %v after dry runs; want a1", got, err)
	}
	if _, err := net.DialTimeout("tcp", z, time.Second); err == nil {
		t.Fatal("a dry run bound the added proxy")
	}
	if len(p.stderr.Lines("INFO reload: ")) != 0 {
		t.Fatal("a dry run reloaded")
	}

	t.Run("an invalid file", func(t *testing.T) {
		good, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		writeAtomically(t, path, string(good)+"    conect_timeout: 2s\n")
		defer writeAtomically(t, path, string(good))
		for _, args := range [][]string{{"reload", "--dry-run"}, {"reload"}} {
			code, out, errOut := runWith(t, []string{"PJ_ADMIN=" + admin}, args...)
			if code != 1 || !strings.Contains(errOut, "did you mean connect_timeout") || !strings.Contains(errOut, "pj.yaml:") {
				t.Fatalf("%v: exit %d, want 1 and the problem with its line\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
			}
		}
		code, res := postReload(t, admin, "?dry_run=1", "")
		if code != http.StatusUnprocessableEntity || res.Valid || len(res.Errors) == 0 || len(res.Changes) != 0 {
			t.Fatalf("status %d, %+v", code, res)
		}
		if got, err := testutil.Ask(x); err != nil || got != "a1" {
			t.Fatalf("web answered %q, %v after an invalid reload; want a1", got, err)
		}
	})

	t.Run("applied", func(t *testing.T) {
		code, out, errOut := runWith(t, []string{"PJ_ADMIN=" + admin}, "reload")
		if code != 0 || !strings.Contains(out, "reloaded:") || !strings.Contains(out, "- remove proxy legacy") {
			t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
		if got, err := testutil.Ask(x); err != nil || got != "a2" {
			t.Fatalf("web answered %q, %v after the reload; want a2", got, err)
		}
		if got := testutil.RoundTrip(t, testutil.Dial(t, z), "new"); got != "new" {
			t.Fatalf("the added proxy answered %q", got)
		}
		// The removed proxy's connections run on for the grace period.
		for _, c := range long {
			if got := testutil.RoundTrip(t, c, "after"); got != "after" {
				t.Fatalf("a connection of the removed proxy broke: %q", got)
			}
		}
		p.stderr.WaitLines(t, "trigger=\"admin API\"", 1)
		// Reloading the same file again changes nothing.
		code, res := postReload(t, admin, "", "")
		if code != http.StatusOK || !res.Valid || !res.Applied || len(res.Changes) != 0 {
			t.Fatalf("status %d, %+v", code, res)
		}
	})
}

func TestReloadUsageAndToken(t *testing.T) {
	echo := testutil.StartEcho(t)
	x := testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	planConfig(t, path, "s3cret", [3]string{"web", x, echo})
	p := startPJ(t, 1, "", "-c", path)
	admin := p.adminAddr(t)

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"no admin address", nil, []string{"reload"}, 2, "--admin HOST:PORT (or PJ_ADMIN)"},
		{"a malformed address", nil, []string{"reload", "--admin", "nonsense"}, 2, "expected HOST:PORT"},
		{"an unknown flag", nil, []string{"reload", "--dryrun"}, 2, "unknown flag"},
		{"an argument", nil, []string{"reload", "now"}, 2, "takes no arguments"},
		{"nothing listening", nil, []string{"reload", "--admin", testutil.ClosedAddr(t)}, 1, "is pj running with --admin"},
		{"no token", []string{"PJ_ADMIN=" + admin}, []string{"reload", "--dry-run"}, 1, "PJ_ADMIN_TOKEN"},
		{"a wrong token", []string{"PJ_ADMIN=" + admin, "PJ_ADMIN_TOKEN=wrong"}, []string{"reload"}, 1, "401"},
		{"the token", []string{"PJ_ADMIN=" + admin, "PJ_ADMIN_TOKEN=s3cret"}, []string{"reload", "--dry-run"}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runWith(t, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, want %d and %q on stderr\nstdout:\n%s\nstderr:\n%s", code, tc.code, tc.want, out, errOut)
			}
		})
	}
	if code, _ := postReload(t, admin, "", ""); code != http.StatusUnauthorized {
		t.Fatalf("a reload without the token: status %d, want 401", code)
	}
	if code, _ := postReload(t, admin, "?dry_run=maybe", "s3cret"); code != http.StatusBadRequest {
		t.Fatalf("dry_run=maybe: status %d, want 400", code)
	}
	if code, res := postReload(t, admin, "?dry_run=true", "s3cret"); code != http.StatusOK || !res.Valid || len(res.Changes) != 0 {
		t.Fatalf("status %d, %+v", code, res)
	}
	if len(p.stderr.Lines("INFO reload: ")) != 0 {
		t.Fatal("a refused request reloaded")
	}
}

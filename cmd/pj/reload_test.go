package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjproc"
)

// yamlConfig writes a configuration of name → listen → backend proxies.
func yamlConfig(t *testing.T, path string, proxies ...[3]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("grace_period: 1m\nproxies:\n")
	for _, p := range proxies {
		fmt.Fprintf(&b, "  - name: %s\n    listen: %q\n    backends: [%q]\n", p[0], p[1], p[2])
	}
	testutil.WriteAtomically(t, path, b.String())
}

func TestSIGHUPReloadRefusesNothingAndCutsNothing(t *testing.T) {
	a1, a2, echo := testutil.Identify(t, "a1"), testutil.Identify(t, "a2"), testutil.StartEcho(t)
	x, y, z := testutil.ClosedAddr(t), testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	yamlConfig(t, path, [3]string{"web", x, a1}, [3]string{"legacy", y, echo})
	p, _ := startPJ(t, 2, pjproc.Command("-c", path))

	long := testutil.Dial(t, y)
	if got := testutil.RoundTrip(t, long, "before"); got != "before" {
		t.Fatal(got)
	}

	// A bounded client loop hammers the listener that stays...
	const clients, perClient = 4, 200
	loop := connectLoop(clients, perClient, nil, func(string) error {
		_, err := testutil.Ask(x)
		return err
	})
	// ...while SIGHUP adds, removes and changes proxies, three times.
	steps := [][][3]string{
		{{"web", x, a2}, {"cache", z, echo}},
		{{"web", x, a1}, {"cache", z, echo}},
		{{"web", x, a2}, {"cache", z, echo}},
	}
	for i, step := range steps {
		yamlConfig(t, path, step...)
		p.Signal(t, syscall.SIGHUP)
		p.Stderr.WaitLines(t, "INFO reload: ", i+1)
	}
	failures, served := loop()
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed during reloads; first: %v", len(failures), clients*perClient, failures[0])
	}
	if served != clients*perClient {
		t.Fatalf("served %d", served)
	}
	first := p.Stderr.Lines("INFO reload: ")[0]
	for _, want := range []string{"+1 proxy (cache)", "-1 proxy (legacy)", "web: backends changed", "trigger=SIGHUP"} {
		if !strings.Contains(first, want) {
			t.Errorf("reload line %q lacks %q", first, want)
		}
	}
	if got, err := testutil.Ask(x); err != nil || got != "a2" {
		t.Fatalf("web answered %q, %v after the last reload; want a2", got, err)
	}
	c := testutil.Dial(t, z)
	if got := testutil.RoundTrip(t, c, "new"); got != "new" {
		t.Fatalf("the added proxy answered %q", got)
	}
	if testutil.Connects(y) {
		t.Fatal("the removed proxy still accepts")
	}
	if got := testutil.RoundTrip(t, long, "after"); got != "after" {
		t.Fatalf("the established connection of the removed proxy broke: %q", got)
	}
}

func TestInvalidReloadChangesNothing(t *testing.T) {
	a1, a2 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2")
	x := testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	yamlConfig(t, path, [3]string{"web", x, a1})
	p, _ := startPJ(t, 1, pjproc.Command("-c", path))

	testutil.WriteAtomically(t, path, fmt.Sprintf(`proxies:
  - name: web
    listen: %q
    backends: [%q]
    conect_timeout: 2s
    idle_timeout: soon
`, x, a2))
	p.Signal(t, syscall.SIGHUP)
	p.Stderr.WaitLines(t, "reload failed", 1)
	problems := p.Stderr.Lines("reload: invalid configuration")
	if len(problems) != 2 ||
		!strings.Contains(problems[0]+problems[1], "pj.yaml:5") || !strings.Contains(problems[0]+problems[1], "did you mean connect_timeout") ||
		!strings.Contains(problems[0]+problems[1], "pj.yaml:6") {
		t.Fatalf("want both problems logged with their lines, got:\n%s", strings.Join(problems, "\n"))
	}
	if got, err := testutil.Ask(x); err != nil || got != "a1" {
		t.Fatalf("web answered %q, %v; the running configuration must go on", got, err)
	}
}

func TestWatchFollowsRenameOverAndSymlinkSwap(t *testing.T) {
	a1, a2, a3 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2"), testutil.Identify(t, "a3")
	x := testutil.ClosedAddr(t)

	// The Kubernetes ConfigMap layout: pj.yaml -> ..data/pj.yaml,
	// ..data -> ..v1.
	dir := t.TempDir()
	version := func(name, backend string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		yamlConfig(t, filepath.Join(dir, name, "pj.yaml"), [3]string{"web", x, backend})
	}
	version("..v1", a1)
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pj.yaml")
	if err := os.Symlink("..data/pj.yaml", path); err != nil {
		t.Fatal(err)
	}
	p, _ := startPJ(t, 1, pjproc.Command("-c", path, "--watch"))
	if got, err := testutil.Ask(x); err != nil || got != "a1" {
		t.Fatalf("answered %q, %v", got, err)
	}

	// kubelet's update: a new version directory, then a new ..data link
	// renamed over the old one.
	version("..v2", a2)
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink("..v2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the symlink swap to be applied", func() bool {
		got, err := testutil.Ask(x)
		return err == nil && got == "a2"
	})

	// An editor's save: a new file renamed over the path (which replaces
	// the link by a plain file).
	yamlConfig(t, path, [3]string{"web", x, a3})
	testutil.WaitFor(t, 10*time.Second, "the renamed-over file to be applied", func() bool {
		got, err := testutil.Ask(x)
		return err == nil && got == "a3"
	})
	p.Stderr.WaitLines(t, `trigger="file changed"`, 2)
}

func TestWatchSurvivesHostileFiles(t *testing.T) {
	// Under --watch, whatever replaces the file, a bad reload changes
	// nothing: not a link to /dev/zero (which never ends), not a FIFO
	// (which blocks whoever opens it), not TOML nested 100 000 deep (which
	// once took gigabytes and killed pj).
	a1, a2 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2")
	x := testutil.ClosedAddr(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "pj.toml")
	good := func(backend string) string {
		return fmt.Sprintf("[[proxies]]\nname = \"web\"\nlisten = %q\nbackends = [%q]\n", x, backend)
	}
	testutil.WriteAtomically(t, path, good(a1))
	p, _ := startPJ(t, 1, pjproc.Command("-c", path, "--watch"))

	swap := func(make func(tmp string) error) {
		t.Helper()
		tmp := filepath.Join(dir, "next")
		if err := make(tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	for i, bad := range []struct {
		name string
		make func(tmp string) error
		says string
	}{
		{"a link to /dev/zero", func(tmp string) error { return os.Symlink("/dev/zero", tmp) }, "not a regular file"},
		{"a FIFO", func(tmp string) error { return syscall.Mkfifo(tmp, 0o600) }, "not a regular file"},
		{"TOML nested 100 000 deep", func(tmp string) error {
			return os.WriteFile(tmp, []byte("x"+strings.Repeat(".a", 100_000)+" = 1\n"), 0o600)
		}, "nested"},
	} {
		swap(bad.make)
		line := p.Stderr.WaitLines(t, "reload failed", i+1)[i]
		if !strings.Contains(line, bad.says) {
			t.Fatalf("%s: %q does not say %q", bad.name, line, bad.says)
		}
		if got, err := testutil.Ask(x); err != nil || got != "a1" {
			t.Fatalf("after %s, web answered %q, %v; the running configuration must go on", bad.name, got, err)
		}
	}
	// A file of 80 mistakes: the first 50 are logged, then how many more.
	before := len(p.Stderr.Lines("problem="))
	swap(func(tmp string) error {
		return os.WriteFile(tmp, []byte(good(a1)+strings.Repeat("[[proxies]]\nlisten = \"127.0.0.1:0\"\nbackend = []\n", 80)), 0o600)
	})
	p.Stderr.WaitLines(t, "reload failed", 4)
	if n := len(p.Stderr.Lines("problem=")) - before; n != 50 {
		t.Fatalf("%d problems logged for a file of 80 (or more), want the first 50", n)
	}
	if l := p.Stderr.Lines("more_problems="); len(l) != 1 {
		t.Fatalf("no line says how many more problems there are:\n%s", testutil.Tail(p.Stderr.String(), 5))
	}
	// Still watching, still reloading.
	swap(func(tmp string) error { return os.WriteFile(tmp, []byte(good(a2)), 0o600) })
	testutil.WaitFor(t, 10*time.Second, "a good file to be applied after the bad ones", func() bool {
		got, err := testutil.Ask(x)
		return err == nil && got == "a2"
	})
}

// planConfig writes a configuration with an admin listener of its own
// (token may be empty) and name → listen → backend proxies.
func planConfig(t *testing.T, path, token string, proxies ...[3]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "grace_period: 1m\nadmin: { listen: \"127.0.0.1:0\", token: %q }\nproxies:\n", token)
	for _, p := range proxies {
		fmt.Fprintf(&b, "  - name: %s\n    listen: %q\n    backends: [%q]\n", p[0], p[1], p[2])
	}
	testutil.WriteAtomically(t, path, b.String())
}

// runWith runs pj to completion with env (beside PATH) and returns its
// exit status, stdout and stderr.
func runWith(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := pjproc.Command(args...)
	cmd.Env = append(cmd.Env, env...)
	return pjproc.Run(t, cmd)
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
	ConnectionsAffected *int64   `json:"connections_affected"`
	Warnings            []string `json:"warnings"`
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

func TestReloadSaysWhatTheFileSetsInVain(t *testing.T) {
	// A file that sets a retired key reloads, and every way of asking
	// says what to remove, naming the file and the line.
	echo, x := testutil.StartEcho(t), testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	planConfig(t, path, "", [3]string{"web", x, echo})
	p, _ := startPJ(t, 1, pjproc.Command("-c", path))
	admin := p.Address(t, "admin listening")
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WriteAtomically(t, path, string(text)+"    kernel_relay: true\n")
	want := path + ":7: kernel_relay is no longer supported and is ignored"

	for _, args := range [][]string{{"reload", "--dry-run"}, {"reload"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, out, errOut := runWith(t, nil, append(args, "--admin", admin)...)
			if code != 0 {
				t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
			}
			if n := strings.Count(out, "warning: "+want); n != 1 {
				t.Errorf("stdout has the warning %d times, want once:\n%s", n, out)
			}
		})
	}
	t.Run("the API's dry run", func(t *testing.T) {
		code, res := postReload(t, admin, "?dry_run=true", "")
		if code != http.StatusOK || !res.Valid || len(res.Warnings) != 1 || !strings.HasPrefix(res.Warnings[0], want) {
			t.Fatalf("status %d, %+v; want one warning %q", code, res, want)
		}
	})
}

func TestReloadPlanSaysWhatItWouldCutAndChangesNothing(t *testing.T) {
	a1, a2, echo := testutil.Identify(t, "a1"), testutil.Identify(t, "a2"), testutil.StartEcho(t)
	x, y, z := testutil.ClosedAddr(t), testutil.ClosedAddr(t), testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	planConfig(t, path, "", [3]string{"web", x, a1}, [3]string{"legacy", y, echo})
	p, _ := startPJ(t, 2, pjproc.Command("-c", path))
	admin := p.Address(t, "admin listening")

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
	if testutil.Connects(z) {
		t.Fatal("a dry run bound the added proxy")
	}
	if len(p.Stderr.Lines("INFO reload: ")) != 0 {
		t.Fatal("a dry run reloaded")
	}

	t.Run("an invalid file", func(t *testing.T) {
		good, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		testutil.WriteAtomically(t, path, string(good)+"    conect_timeout: 2s\n")
		defer testutil.WriteAtomically(t, path, string(good))
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
		p.Stderr.WaitLines(t, "trigger=\"admin API\"", 1)
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
	p, _ := startPJ(t, 1, pjproc.Command("-c", path))
	admin := p.Address(t, "admin listening")

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
	if len(p.Stderr.Lines("INFO reload: ")) != 0 {
		t.Fatal("a refused request reloaded")
	}
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

// load builds the configuration as pj and pj check do: the flags of args,
// the variables of env, then loadConfig.
func load(t *testing.T, env map[string]string, args ...string) (config.Config, error) {
	t.Helper()
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	f := &flags{cfg: config.Default()}
	fs := pflag.NewFlagSet("pj", pflag.ContinueOnError)
	addConfigFlags(fs, f)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	if err := f.fromEnv(fs, lookup); err != nil {
		return config.Config{}, err
	}
	return loadConfig(f, lookup)
}

// check runs "pj check" in-process and returns its stdout and error.
func check(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var stdout strings.Builder
	err := Run(context.Background(), append([]string{"check"}, args...), &stdout, io.Discard, WithLookupEnv(lookup),
		WithListening(func([]net.Addr) { t.Error("pj check started listening") }))
	return stdout.String(), err
}

const precedenceYAML = `log: { format: json }
grace_period: 1m
defaults:
  connect_timeout: 2s
  idle_timeout: 1m
proxies:
  - name: own
    listen: 127.0.0.1:0
    backends: [127.0.0.1:1]
    connect_timeout: 7s
    idle_timeout: 0s
  - name: inherits
    listen: 127.0.0.1:0
    backends: [127.0.0.1:2]
`

func TestFlagsAndFilePrecedence(t *testing.T) {
	file := testutil.WriteFile(t, "pj.yaml", precedenceYAML)
	other := testutil.WriteFile(t, "other.toml", "[[proxies]]\nname = \"other\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:3\"]\n")

	type want struct {
		connect        [3]time.Duration // defaults, own, inherits
		idle           [3]time.Duration
		format         string
		grace          time.Duration
		names          []string
		mappingConnect time.Duration // of the proxies after the file's
	}
	fileOnly := want{
		connect: [3]time.Duration{2 * time.Second, 7 * time.Second, 2 * time.Second},
		idle:    [3]time.Duration{time.Minute, 0, time.Minute},
		format:  "json", grace: time.Minute, names: []string{"own", "inherits"},
	}
	with := func(f func(*want)) want { w := fileOnly; w.names = append([]string(nil), w.names...); f(&w); return w }
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want want
	}{
		{"the file alone", nil, []string{"-c", file}, fileOnly},
		{"PJ_CONFIG when -c is absent", map[string]string{"PJ_CONFIG": file}, nil, fileOnly},
		{"-c wins over PJ_CONFIG", map[string]string{"PJ_CONFIG": other}, []string{"--config", file}, fileOnly},
		{"PJ_CONFIG names the other file", map[string]string{"PJ_CONFIG": other}, nil, want{
			connect: [3]time.Duration{5 * time.Second}, format: "text", grace: 30 * time.Second, names: []string{"other"},
		}},
		{"a flag overrides the defaults and the proxies that do not set the key", nil,
			[]string{"-c", file, "--connect-timeout", "3s", "--idle-timeout", "10s"}, with(func(w *want) {
				w.connect = [3]time.Duration{3 * time.Second, 7 * time.Second, 3 * time.Second}
				w.idle = [3]time.Duration{10 * time.Second, 0, 10 * time.Second}
			})},
		{"a variable overrides as its flag does", map[string]string{"PJ_CONNECT_TIMEOUT": "3s"},
			[]string{"-c", file}, with(func(w *want) {
				w.connect = [3]time.Duration{3 * time.Second, 7 * time.Second, 3 * time.Second}
			})},
		{"a flag given at its built-in value still overrides", nil,
			[]string{"-c", file, "--connect-timeout", "5s"}, with(func(w *want) {
				w.connect = [3]time.Duration{5 * time.Second, 7 * time.Second, 5 * time.Second}
			})},
		{"a flag wins over its variable", map[string]string{"PJ_CONNECT_TIMEOUT": "9s"},
			[]string{"-c", file, "--connect-timeout", "3s"}, with(func(w *want) {
				w.connect = [3]time.Duration{3 * time.Second, 7 * time.Second, 3 * time.Second}
			})},
		{"top-level flags override the file", map[string]string{"PJ_GRACE_PERIOD": "5s"},
			[]string{"-c", file, "--log-format", "text"}, with(func(w *want) {
				w.format, w.grace = "text", 5*time.Second
			})},
		{"mappings are added and inherit the file's defaults", map[string]string{"PJ_PROXY": "127.0.0.1:0:127.0.0.1:5"},
			[]string{"-c", file, "-p", "127.0.0.1:0:127.0.0.1:4"}, with(func(w *want) {
				w.names = append(w.names, "127.0.0.1:0")
				w.mappingConnect = 2 * time.Second
			})},
		{"PJ_PROXY is added when no -p is given", map[string]string{"PJ_PROXY": "127.0.0.1:0:127.0.0.1:5"},
			[]string{"-c", file, "--connect-timeout", "4s"}, with(func(w *want) {
				w.connect = [3]time.Duration{4 * time.Second, 7 * time.Second, 4 * time.Second}
				w.names = append(w.names, "127.0.0.1:0")
				w.mappingConnect = 4 * time.Second
			})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := load(t, tt.env, tt.args...)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			var names []string
			for _, p := range c.Proxies {
				names = append(names, p.Name)
			}
			if strings.Join(names, " ") != strings.Join(tt.want.names, " ") {
				t.Fatalf("proxies %q, want %q", names, tt.want.names)
			}
			if c.Log.Format != tt.want.format || c.GracePeriod != tt.want.grace {
				t.Errorf("log format %q, grace period %s; want %q, %s", c.Log.Format, c.GracePeriod, tt.want.format, tt.want.grace)
			}
			if c.Defaults.ConnectTimeout != tt.want.connect[0] {
				t.Errorf("defaults: connect timeout %s, want %s", c.Defaults.ConnectTimeout, tt.want.connect[0])
			}
			if len(tt.want.names) > 1 { // the precedence file
				if c.Defaults.IdleTimeout != tt.want.idle[0] {
					t.Errorf("defaults: idle timeout %s, want %s", c.Defaults.IdleTimeout, tt.want.idle[0])
				}
				for i, p := range c.Proxies[:2] {
					if p.ConnectTimeout != tt.want.connect[i+1] || p.IdleTimeout != tt.want.idle[i+1] {
						t.Errorf("proxy %s: connect %s, idle %s; want %s, %s", p.Name,
							p.ConnectTimeout, p.IdleTimeout, tt.want.connect[i+1], tt.want.idle[i+1])
					}
				}
			}
			for _, p := range c.Proxies[min(2, len(c.Proxies)):] {
				if p.ConnectTimeout != tt.want.mappingConnect || !strings.HasPrefix(p.Source, "-p ") && !strings.HasPrefix(p.Source, "PJ_PROXY ") {
					t.Errorf("mapping %s (%s): connect %s, want %s", p.Name, p.Source, p.ConnectTimeout, tt.want.mappingConnect)
				}
			}
		})
	}
}

func TestConfigFileErrors(t *testing.T) {
	bad := testutil.WriteFile(t, "bad.yaml", `defaults:
  conect_timeout: 5s
proxies:
  - listen: 127.0.0.1:0
    backends: [127.0.0.1:1]
    idle_timeout: 5
`)
	empty := testutil.WriteFile(t, "empty.toml", "[log]\nformat = \"json\"\n")
	good := testutil.WriteFile(t, "good.yaml", "proxies:\n  - listen: 127.0.0.1:8080\n    backends: [127.0.0.1:1]\n")
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want []string // each in the error
	}{
		{"every problem of the file", nil, []string{"-c", bad}, 1, []string{
			"2 problems",
			bad + ":2: defaults.conect_timeout: unknown key (did you mean connect_timeout?)",
			bad + `:6: proxies[0].idle_timeout: expected a duration string such as "5s", got a number`,
		}},
		{"a file that does not exist", nil, []string{"-c", missing}, 1, []string{missing, "no such file"}},
		{"a file without proxies", nil, []string{"-c", empty}, 1, []string{empty + ": no proxies"}},
		{"an unset variable", map[string]string{"PJ_CONFIG": testutil.WriteFile(t, "v.yaml", "admin: {token: '${PJ_ADMIN_TOKEN}'}\n")},
			nil, 1, []string{"v.yaml:1: admin.token: environment variable PJ_ADMIN_TOKEN is not set"}},
		{"a mapping on a file proxy's address", nil, []string{"-c", good, "-p", "127.0.0.1:8080:127.0.0.1:2"}, 1, []string{
			`-p 127.0.0.1:8080:127.0.0.1:2: listen address 127.0.0.1:8080 is already used by proxy "127.0.0.1:8080" (` + good + ":2)",
		}},
		{"a bad flag beside a file is a usage error", nil, []string{"-c", good, "--idle-timeout", "-1s"}, 2, []string{"idle timeout -1s"}},
		{"a bad mapping beside a file is a usage error", nil, []string{"-c", good, "-p", "nonsense"}, 2, []string{`"nonsense"`}},
		{"an unknown extension", nil, []string{"-c", testutil.WriteFile(t, "pj.json", "{}")}, 1, []string{"pj.json: cannot tell the format", ".yaml, .yml", ".toml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, cmd := range [][]string{nil, {"check"}} { // pj and pj check say the same
				lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
				err := Run(context.Background(), append(cmd, tt.args...), io.Discard, io.Discard, WithLookupEnv(lookup),
					WithListening(func([]net.Addr) { t.Error("pj started listening") }))
				if code := ExitCode(err); code != tt.code {
					t.Fatalf("pj %q: exit %d (%v), want %d", append(cmd, tt.args...), code, err, tt.code)
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("pj %q: error %q does not contain %q", cmd, err, w)
					}
				}
			}
		})
	}
}

// A proxy with routes from a file serves each client by what it sends
// first: an SSH client, an HTTP client, and one that sends nothing and
// goes, after match_timeout, to the route that takes the rest. The JSON
// log names the route. The clients that talk go through a proxy that
// waits long for them (a loaded machine may hold a client between its
// connect and its first bytes past a short match_timeout); the silent
// one through a twin with a short match_timeout.
func TestRoutesFromAFile(t *testing.T) {
	ssh, web, rest := greeter(t, "ssh"), greeter(t, "web"), greeter(t, "rest")
	routes := "    routes:\n" +
		"      - {name: ssh, match: {protocol: ssh}, backends: [" + ssh + "]}\n" +
		"      - {name: web, match: {protocol: http}, backends: [" + web + "]}\n" +
		"      - {backends: [" + rest + "]}\n"
	file := testutil.WriteFile(t, "pj.yaml", "proxies:\n"+
		"  - name: edge\n    listen: 127.0.0.1:0\n    match_timeout: 30s\n"+routes+
		"  - name: quiet\n    listen: 127.0.0.1:0\n    match_timeout: 100ms\n"+routes)
	p := start(t, nil, "-c", file, "--log-format", "json")
	for _, tc := range []struct {
		to                int // index of the proxy
		send, want, route string
	}{
		{0, "SSH-2.0-OpenSSH_9.6\r\n", "ssh", "ssh"},
		{0, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "web", "web"},
		{1, "", "rest", "quiet#3"},
	} {
		c := testutil.Dial(t, p.addrs[tc.to])
		if _, err := io.WriteString(c, tc.send); err != nil {
			t.Fatal(err)
		}
		// The silent client waits: it is routed when match_timeout passes.
		got := make([]byte, len(tc.want))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != tc.want {
			t.Fatalf("a client sending %q got %q (%v), want %q", tc.send, got, err, tc.want)
		}
		_ = c.CloseWrite()
		testutil.ReadAll(t, c)
		_ = c.Close()
		p.log.WaitLines(t, `"route":"`+tc.route+`"`, 1)
	}
	if l := p.log.Lines("listening"); len(l) != 2 || !strings.Contains(l[0], "ssh="+ssh) || !strings.Contains(l[0], "edge#3="+rest) {
		t.Fatalf("start-up lines %q: want the routes and their backends", l)
	}
}

// greeter is a backend that tells each client its name, reads what the
// client sends until its end, and closes.
func greeter(t *testing.T, name string) string {
	t.Helper()
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(c, name)
		_, _ = io.Copy(io.Discard, c)
	})
	return ln.Addr().String()
}

func TestWatchNeedsAConfigFile(t *testing.T) {
	err := Run(context.Background(), []string{"--watch", "-p", "127.0.0.1:0:127.0.0.1:1"}, io.Discard, io.Discard,
		WithLookupEnv(func(string) (string, bool) { return "", false }),
		WithListening(func([]net.Addr) { t.Error("pj started listening") }))
	if ExitCode(err) != 2 || !strings.Contains(err.Error(), "-c FILE") {
		t.Fatalf("--watch without a file: %v (exit %d), want a usage error asking for -c", err, ExitCode(err))
	}
	// With a file, --watch is accepted, and so is PJ_WATCH.
	file := testutil.WriteFile(t, "pj.yaml", "proxies: [{listen: '127.0.0.1:0', backends: ['"+testutil.StartEcho(t)+"']}]\n")
	for _, tt := range []struct {
		env  map[string]string
		args []string
	}{{nil, []string{"--watch", "-c", file}}, {map[string]string{"PJ_WATCH": "true", "PJ_CONFIG": file}, nil}} {
		p := start(t, tt.env, tt.args...)
		if got := testutil.SendAndRead(t, p.addrs[0], "watched"); got != "watched" {
			t.Fatalf("echo = %q", got)
		}
	}
}

func TestServeFromAConfigFile(t *testing.T) {
	echo := testutil.StartEcho(t)
	file := testutil.WriteFile(t, "pj.toml", `[defaults]
idle_timeout = "${IDLE}"

[[proxies]]
name = "echo"
listen = "127.0.0.1:0"
backends = ["`+echo+`"]
`)
	p := start(t, map[string]string{"IDLE": "100ms"}, "-c", file)
	// The file's proxy relays a silent connection to the file's backend,
	// and its idle timeout, from a variable, closes it. (A round trip
	// first would race that timeout on a loaded machine.)
	c := testutil.Dial(t, p.addrs[0])
	if got := testutil.ReadAll(t, c); got != "" {
		t.Fatalf("read %q", got)
	}
	l := p.log.WaitLines(t, "[timeout]", 1)[0]
	if !strings.Contains(l, "-> "+echo+" [timeout]") || !strings.Contains(l, "proxy=echo") {
		t.Fatalf("log line %q: want the timeout of the file's proxy named echo, relaying to %s", l, echo)
	}
}

func TestCheck(t *testing.T) {
	// The listen address is taken: check must not try to bind it.
	busy := testutil.Listen(t, "tcp4").Addr().String()
	file := testutil.WriteFile(t, "pj.yaml", `log: { format: json }
grace_period: 1m
defaults:
  idle_timeout: 90s
proxies:
  - name: web
    listen: "`+busy+`"
    backends:
      - 10.0.0.1:80
      - { address: 10.0.0.2:80, weight: 3 }
      - { address: 10.0.0.9:80, backup: true }
  - listen: 127.0.0.1:2222
    backends: [10.0.0.5:22]
    connect_timeout: 1s
    health_check: { interval: 0s }
`)
	out, err := check(t, nil, "-c", file, "-p", "127.0.0.1:0:127.0.0.1:1")
	if err != nil {
		t.Fatalf("pj check: %v", err)
	}
	want := "configuration from " + file + ` is valid: 3 proxies
log json at level info; grace period 1m

proxy web on ` + busy + ` -> 10.0.0.1:80, 10.0.0.2:80 (weight 3), 10.0.0.9:80 (backup)
  round-robin; idle timeout 1m30s; health checks every 2s (timeout 1s, rise 2, fall 3)

proxy 127.0.0.1:2222 -> 10.0.0.5:22
  round-robin; connect timeout 1s; idle timeout 1m30s; no health checks

proxy 127.0.0.1:0 -> 127.0.0.1:1
  round-robin; idle timeout 1m30s; no health checks
`
	if out != want {
		t.Errorf("summary:\n%s\nwant:\n%s", out, want)
	}

	out, err = check(t, nil, "-p", "127.0.0.1:0:127.0.0.1:1,127.0.0.1:2", "--connect-timeout", "2s")
	if err != nil || !strings.HasPrefix(out, "configuration from the command line is valid: 1 proxy\n") ||
		!strings.Contains(out, "round-robin; connect timeout 2s; health checks every 2s") {
		t.Errorf("check of mappings: %v\n%s", err, out)
	}

	if _, err := check(t, nil); ExitCode(err) != 2 || !strings.Contains(err.Error(), "nothing to check") {
		t.Errorf("check with nothing to check: %v (exit %d), want a usage error", err, ExitCode(err))
	}
}

// pj check shows each route: what it takes, where it goes, and the
// settings it does not share with pj's built-in ones.
func TestCheckRoutes(t *testing.T) {
	file := testutil.WriteFile(t, "pj.yaml", `proxies:
  - name: edge
    listen: 127.0.0.1:8443
    match_timeout: 1s
    allow: [10.0.0.0/8]
    connect_timeout: 2s
    routes:
      - name: db
        match: { protocol: postgres, sni: [db.example.com] }
        backends: [10.0.0.5:5432, { address: 10.0.0.6:5432, backup: true }]
      - match: { source: [10.1.0.0/16], alpn: [h2] }
        backends: [10.0.0.9:443]
        balance: least-conn
      - backends: [10.0.0.8:443]
  - listen: 127.0.0.1:8444
    routes:
      - match: { source: [10.1.0.0/16] }
        backends: [10.0.0.9:443]
      - backends: [10.0.0.8:443]
`)
	out, err := check(t, nil, "-c", file)
	if err != nil {
		t.Fatalf("pj check: %v", err)
	}
	want := "configuration from " + file + ` is valid: 2 proxies

proxy edge on 127.0.0.1:8443 -> 3 routes, chosen by what clients send first, waiting at most 1s
  allow 10.0.0.0/8
  route db: protocol postgres; sni db.example.com -> 10.0.0.5:5432, 10.0.0.6:5432 (backup)
    round-robin; connect timeout 2s; health checks every 2s (timeout 1s, rise 2, fall 3)
  route edge#2: alpn h2; source 10.1.0.0/16 -> 10.0.0.9:443
    least-conn; connect timeout 2s; no health checks
  route edge#3: every connection -> 10.0.0.8:443
    round-robin; connect timeout 2s; no health checks

proxy 127.0.0.1:8444 -> 2 routes, chosen by client address alone
  route 127.0.0.1:8444#1: source 10.1.0.0/16 -> 10.0.0.9:443
    round-robin; no health checks
  route 127.0.0.1:8444#2: every connection -> 10.0.0.8:443
    round-robin; no health checks
`
	if out != want {
		t.Errorf("summary:\n%s\nwant:\n%s", out, want)
	}
}

// TestExamplesCheck runs pj check on every file of examples/: each must be
// valid and show what the example is about.
func TestExamplesCheck(t *testing.T) {
	// From the repository's top, as the README runs them: certificate
	// files are named from there.
	t.Chdir(filepath.Join("..", ".."))
	examples, err := filepath.Glob(filepath.Join("examples", "*.*"))
	if err != nil || len(examples) < 3 {
		t.Fatalf("examples: %v %v", examples, err)
	}
	want := map[string][]string{
		"ssh.yaml":      {"proxy ssh on 0.0.0.0:2222 -> 10.0.0.5:22"},
		"web.yaml":      {"10.0.1.11:80 (weight 2)", "10.0.1.99:80 (backup)", "weighted-round-robin", "health checks every 1s"},
		"database.toml": {"db-standby.internal:5432 (backup)", "health checks every 5s"},
		"edge-443.yaml": {
			"proxy edge on 0.0.0.0:443 -> 4 routes, chosen by what clients send first, waiting at most 5s",
			"route ssh: protocol ssh -> 127.0.0.1:22",
			"route app: sni app.example.com, *.app.example.com -> 10.0.1.10:443, 10.0.1.11:443\n    least-conn; idle timeout 5m",
			"route www: sni www.example.com, example.com -> 10.0.2.10:80\n    round-robin; idle timeout 5m; no health checks; TLS terminated with examples/certs/www.example.com.pem, ALPN http/1.1",
			"route fallback: every connection -> 10.0.2.10:443",
		},
	}
	env := map[string]string{"PJ_WEB_LISTEN": "0.0.0.0:8080"}
	for _, path := range examples {
		t.Run(filepath.Base(path), func(t *testing.T) {
			out, err := check(t, env, "-c", path)
			if err != nil {
				t.Fatalf("pj check -c %s: %v\n%s", path, err, out)
			}
			for _, w := range want[filepath.Base(path)] {
				if !strings.Contains(out, w) {
					t.Errorf("pj check -c %s does not show %q:\n%s", path, w, out)
				}
			}
		})
	}
}

func TestHelpDocumentsConfigFiles(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"-c, --config", "--watch", "PJ_CONFIG", "check", "YAML", "TOML"}},
		{[]string{"check", "--help"}, []string{"-c, --config", "--proxy", "--connect-timeout", "exits 0", "exits 1"}},
	} {
		var out strings.Builder
		if err := Run(context.Background(), tt.args, &out, io.Discard); err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%v does not mention %q", tt.args, w)
			}
		}
	}
}

// TestEveryDeclaredFlagIsOnBothCommands: a key declared with a flag is a
// flag of pj and of pj check, and overrides the file.
func TestEveryDeclaredFlagIsOnBothCommands(t *testing.T) {
	f := &flags{cfg: config.Default()}
	fs := pflag.NewFlagSet("pj", pflag.ContinueOnError)
	addConfigFlags(fs, f)
	for _, fl := range config.Flags() {
		if fl.Name != "" && fs.Lookup(fl.Name) == nil {
			t.Errorf("key %s declares the flag --%s, which the command line lacks", fl.Key, fl.Name)
		}
	}
	file := testutil.WriteFile(t, "pj.yaml", "admin: { listen: '127.0.0.1:0', token: from-file }\nwatch: false\nproxies: [{listen: '127.0.0.1:0', backends: ['127.0.0.1:1']}]\n")
	c, err := load(t, map[string]string{"PJ_ADMIN_TOKEN": "from-env"}, "-c", file, "--watch", "--admin", "127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Watch || c.Admin.Listen != "127.0.0.1:9" || c.Admin.Token != "from-env" {
		t.Errorf("watch %v, admin %q, token %q: want the flags' and the variable's values over the file's", c.Watch, c.Admin.Listen, c.Admin.Token)
	}
}

func TestManyDuplicateMappingsMakeABoundedMessage(t *testing.T) {
	// Each message about a duplicate mapping repeats two mappings: 7000
	// of them once made hundreds of megabytes of output.
	backends := make([]string, 40)
	for i := range backends {
		backends[i] = fmt.Sprintf("10.0.0.%d:80", i+1)
	}
	mapping := "127.0.0.1:8080:" + strings.Join(backends, ",")
	args := make([]string, 0, 2*7000)
	for range 7000 {
		args = append(args, "-p", mapping)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"-p", nil, args},
		{"PJ_PROXY", map[string]string{"PJ_PROXY": strings.Repeat(mapping+";", 7000)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := check(t, tc.env, tc.args...)
			if err == nil || ExitCode(err) != 2 {
				t.Fatalf("check: %.200v; want a usage error", err)
			}
			msg := err.Error()
			if len(msg) > 64<<10 || !strings.Contains(msg, "6999 problems") || !strings.Contains(msg, "more") {
				t.Fatalf("a message of %d bytes: %.500q", len(msg), msg)
			}
		})
	}
}

func TestCheckTakesTheRunsFlagsAndStopsWhenInterrupted(t *testing.T) {
	file := testutil.WriteFile(t, "pj.yaml", "proxies: [{listen: '127.0.0.1:0', backends: ['127.0.0.1:1']}]\n")
	if out, err := check(t, nil, "--watch", "-c", file); err != nil || !strings.Contains(out, "is valid") {
		t.Fatalf("pj check --watch -c FILE: %q, %v", out, err)
	}

	// A check that cannot finish (here a variable lookup that blocks, as
	// a configuration on a hung network file system would) still ends at
	// once when pj is told to stop.
	release := make(chan struct{})
	var once sync.Once
	blocked := make(chan struct{})
	lookup := func(k string) (string, bool) {
		if k == "PJ_BLOCK" {
			once.Do(func() { close(blocked) })
			<-release
		}
		return "", false
	}
	blocking := testutil.WriteFile(t, "blocking.yaml", "proxies: [{listen: '127.0.0.1:0', backends: ['127.0.0.1:1'], name: '${PJ_BLOCK}x'}]\n")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"check", "-c", blocking}, io.Discard, io.Discard, WithLookupEnv(lookup))
	}()
	<-blocked
	cancel(errors.New("SIGTERM received"))
	select {
	case err := <-done:
		if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), "SIGTERM") {
			t.Errorf("an interrupted check returned %v (exit %d); want a failure saying why", err, ExitCode(err))
		}
	case <-time.After(5 * time.Second):
		t.Error("pj check did not stop when told to")
		close(release)
		<-done
		return
	}
	close(release) // the abandoned load ends too
}

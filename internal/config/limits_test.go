package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

// Input meant to exhaust pj through its configuration file: every case
// must be refused (or decoded) within the fuzz budget's memory (64 MiB,
// where they once took gigabytes) and without hanging, with a bounded
// message.

// maxMessage bounds what an error about a file may say: 50 problems of at
// most 1 KiB, and a line saying how many more there were.
const maxMessage = 50*1024 + 1024

// decodeCheaply decodes text within the memory budget and returns the
// error.
func decodeCheaply(t *testing.T, name, text string) error {
	t.Helper()
	var err error
	testutil.WithinMemory(t, func() { _, err = config.Decode(name, []byte(text), env(nil)) })
	if err != nil && len(err.Error()) > maxMessage {
		t.Errorf("the error is %d bytes long (at most %d): %.300q", len(err.Error()), maxMessage, err.Error())
	}
	return err
}

func TestDeepNestingIsCheap(t *testing.T) {
	repeat := func(s string, n int) string { return strings.Repeat(s, n) }
	yamlBlock := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "%sa:\n", repeat(" ", i))
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, file, text string
	}{
		{"TOML dotted key 100 000 deep", "pj.toml", "x" + repeat(".a", 100_000) + " = 1\n"},
		{"TOML header 40 000 deep", "pj.toml", "[a" + repeat(".a", 40_000) + "]\n"},
		{"TOML array of tables 40 000 deep", "pj.toml", "[[a" + repeat(".a", 40_000) + "]]\n"},
		{"TOML inline tables 5 000 deep", "pj.toml", "x = " + repeat("{a = ", 5000) + "1" + repeat("}", 5000) + "\n"},
		{"TOML arrays 5 000 deep", "pj.toml", "x = " + repeat("[", 5000) + "1" + repeat("]", 5000) + "\n"},
		{"YAML block maps 3 000 deep", "pj.yaml", yamlBlock(3000)},
		{"YAML flow lists 9 000 deep", "pj.yaml", "x: " + repeat("[", 9000) + repeat("]", 9000) + "\n"},
		{"YAML flow maps 9 000 deep", "pj.yaml", "x: " + repeat("{a: ", 9000) + "1" + repeat("}", 9000) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeCheaply(t, tc.file, tc.text)
			if err == nil || !strings.Contains(err.Error(), "nested") {
				t.Fatalf("error %.300v; want one saying the file is nested too deeply", err)
			}
		})
	}
}

func TestManyValuesAreCheap(t *testing.T) {
	for _, tc := range []struct {
		name, file, text string
	}{
		{"YAML flow list of 8 million", "pj.yaml", "x: [" + strings.Repeat("1,", 8_000_000) + "]\n"},
		{"YAML block list of 4 million", "pj.yaml", "x:\n" + strings.Repeat("- 1\n", 4_000_000)},
		{"TOML array of 8 million", "pj.toml", "x = [" + strings.Repeat("1,", 8_000_000) + "]\n"},
		{"TOML tables of 2 million", "pj.toml", strings.Repeat("[[a]]\n", 2_000_000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeCheaply(t, tc.file, tc.text)
			if err == nil || !strings.Contains(err.Error(), "too large") {
				t.Fatalf("error %.300v; want one saying the file is too large", err)
			}
		})
	}
}

// TestALargeConfigurationStillDecodes: the bounds leave room for far
// larger configurations than anyone writes.
func TestALargeConfigurationStillDecodes(t *testing.T) {
	var y, tm strings.Builder
	y.WriteString("proxies:\n")
	for i := range 3000 {
		fmt.Fprintf(&y, "  - name: p%d\n    listen: \"127.0.0.1:%d\"\n    backends: [\"10.0.%d.1:80\", {address: \"10.0.%d.2:80\", weight: 2}]\n    idle_timeout: 1m\n", i, 10000+i, i%250, i%250)
		fmt.Fprintf(&tm, "[[proxies]]\nname = \"p%d\"\nlisten = \"127.0.0.1:%d\"\nbackends = [\"10.0.%d.1:80\", {address = \"10.0.%d.2:80\", weight = 2}]\nidle_timeout = \"1m\"\n", i, 10000+i, i%250, i%250)
	}
	for _, f := range []struct{ name, text string }{{"pj.yaml", y.String()}, {"pj.toml", tm.String()}} {
		var c config.Config
		var err error
		testutil.WithinMemory(t, func() { c, err = config.Decode(f.name, []byte(f.text), env(nil)) })
		if err != nil || len(c.Proxies) != 3000 {
			t.Fatalf("%s: %d proxies, %.300v", f.name, len(c.Proxies), err)
		}
	}
}

func TestErrorMessagesAreBounded(t *testing.T) {
	long := strings.Repeat("k", 1000)
	var nested strings.Builder
	for i := range 60 {
		fmt.Fprintf(&nested, "%s%s%d:\n", strings.Repeat(" ", i), long, i)
	}
	deepDups := nested.String() + strings.Repeat(strings.Repeat(" ", 60)+"z: 1\n", 5000)
	var tomlDups strings.Builder
	tomlDups.WriteString("[" + strings.TrimSuffix(strings.Repeat(long+".", 60), ".") + "]\n")
	for range 5000 {
		tomlDups.WriteString("z = 1\n")
	}
	for _, tc := range []struct {
		name, file, text string
		problems         int // found in all
	}{
		{"YAML: 5000 keys set twice under 60 keys of 1000 characters", "pj.yaml", deepDups, 5000},
		{"TOML: the same", "pj.toml", tomlDups.String(), 5000},
		{"YAML: 50 000 keys set twice", "pj.yaml", strings.Repeat("z: 1\n", 50_000), 50_000},
		{"a key of a megabyte", "pj.yaml", strings.Repeat("k", 1<<20) + ": 1\n", 1},
		{"a value of a megabyte", "pj.yaml", "grace_period: " + strings.Repeat("9", 1<<20) + "x\n", 1},
		{"a quoted value of a megabyte", "pj.toml", "grace_period = \"" + strings.Repeat("é", 1<<19) + "\"\n", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeCheaply(t, tc.file, tc.text)
			var ve *config.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T %.300v; want a *ValidationError", err, err)
			}
			if len(ve.Problems) > config.MaxProblems || len(ve.Problems)+ve.More != tc.problems {
				t.Fatalf("%d problems listed and %d more; want at most %d listed of %d", len(ve.Problems), ve.More, config.MaxProblems, tc.problems)
			}
			for _, p := range ve.Problems {
				if len(p) > 1024 {
					t.Fatalf("a problem of %d bytes: %.300q", len(p), p)
				}
			}
			if ve.More > 0 && !strings.Contains(err.Error(), fmt.Sprintf("and %d more", ve.More)) {
				t.Fatalf("the message does not say how many more problems there are: %.500q", err.Error())
			}
		})
	}
}

// TestTheFileMustBeARegularFileOfAReasonableSize: a configuration path
// that is a device, a FIFO or a huge file must be refused at once,
// without reading it: /dev/zero never ends, and a FIFO without a writer
// blocks whoever opens it.
func TestTheFileMustBeARegularFileOfAReasonableSize(t *testing.T) {
	dir := t.TempDir()
	link := func(name, target string) string {
		p := filepath.Join(dir, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.yaml")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(config.MaxFileSize + 1); err != nil { // sparse: costs no disk
		t.Fatal(err)
	}
	_ = f.Close()
	subdir := filepath.Join(dir, "dir.toml")
	if err := os.Mkdir(subdir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"a link to /dev/zero", link("zero.yaml", "/dev/zero"), "not a regular file"},
		{"a FIFO", fifo, "not a regular file"},
		{"a link to a FIFO", link("fifolink.toml", fifo), "not a regular file"},
		{"a directory", subdir, "not a regular file"},
		{"a file over the limit", big, "16 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := config.Load(tc.path, env(nil))
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
					t.Fatalf("error %v; want one naming the file and saying %q", err, tc.want)
				}
			case <-time.After(10 * time.Second):
				// Unblock the reader, so that the test ends.
				if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					_ = w.Close()
				}
				t.Fatal("loading did not return within 10 s")
			}
		})
	}
}

func TestValidateBoundsItsProblems(t *testing.T) {
	// 7000 mappings of one listen address, each with a list of backends:
	// every problem repeats two of them.
	backends := ""
	for i := range 40 {
		backends += fmt.Sprintf("10.0.%d.%d:80,", i/250, i%250+1)
	}
	backends = strings.TrimSuffix(backends, ",")
	c := config.Default()
	for range 7000 {
		p, err := config.ParseMapping("127.0.0.1:8080:" + backends)
		if err != nil {
			t.Fatal(err)
		}
		p.Settings = c.Defaults
		c.Proxies = append(c.Proxies, p)
	}
	var err error
	testutil.WithinMemory(t, func() { err = c.Validate() })
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %T %.300v", err, err)
	}
	if len(ve.Problems) > config.MaxProblems || len(ve.Problems)+ve.More != 6999 {
		t.Fatalf("%d problems and %d more; want at most %d of 6999", len(ve.Problems), ve.More, config.MaxProblems)
	}
	if n := len(err.Error()); n > maxMessage {
		t.Fatalf("a message of %d bytes", n)
	}
}

func TestNamesRefuseControlCharacters(t *testing.T) {
	// A name is written into log lines, metric labels and the API: a
	// newline in it (from the file, or from a variable) would forge log
	// lines.
	for _, tc := range []struct{ file, text string }{
		{"pj.yaml", "proxies:\n  - name: \"web\\n[2026-01-01T00:00:00.000Z] INFO forged\"\n    listen: 127.0.0.1:0\n    backends: [127.0.0.1:1]\n"},
		{"pj.yaml", "proxies:\n  - name: ${NAME}\n    listen: 127.0.0.1:0\n    backends: [127.0.0.1:1]\n"},
		{"pj.toml", "[[proxies]]\nname = \"web\\u001b[31m\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:1\"]\n"},
		{"pj.yaml", "proxies:\n  - name: edge\n    listen: 127.0.0.1:0\n    routes:\n      - name: \"ssh\\n\"\n        match: { protocol: ssh }\n        backends: [127.0.0.1:22]\n"},
	} {
		c, err := config.Decode(tc.file, []byte(tc.text), env(map[string]string{"NAME": "web\rINFO forged"}))
		if err == nil {
			err = c.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), "control character") {
			t.Errorf("%s %q: %v; want the name refused for its control character", tc.file, tc.text, err)
		}
	}
}

func TestProblemsAreOneLineEach(t *testing.T) {
	// A key may hold any character, quoted; a message that repeats it
	// (a header defined twice) must still be one line.
	_, err := config.Decode("pj.toml", []byte("[\"a\\nb\\u001b\"]\n[\"a\\nb\\u001b\"]\n"), env(nil))
	var ve *config.ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) == 0 {
		t.Fatalf("error %v", err)
	}
	for _, p := range ve.Problems {
		if strings.ContainsFunc(p, func(r rune) bool { return r < ' ' }) {
			t.Errorf("problem %q holds a control character", p)
		}
	}
	if !strings.Contains(err.Error(), `a\nb\x1b`) {
		t.Errorf("%q: want the key's characters escaped", err)
	}
}

package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/testutil"
)

// FuzzLoadYAML and FuzzLoadTOML feed arbitrary file contents to Decode.
// Whatever the input: no panic, within the fuzz budget (testutil), and the
// same answer twice; a failure is a
// *ValidationError whose every problem starts with the file's name; a
// success has every proxy's Source on a line of the file, and Validate
// does not panic on it.
//
// The seeds are the test files of load_test.go and the examples; more
// live in testdata/fuzz, including anything the fuzzer has found.
func FuzzLoadYAML(f *testing.F) {
	fuzzLoad(f, "pj.yaml", fullYAML, []string{
		"", "log: {format: json}\n", "proxies:\n  - listen: :0\n    backends: [a:1, {address: b:1, weight: 2}]\n",
		"a: &a\n  b: *a\n", "defaults: &d {idle_timeout: 1m}\nproxies: [{<<: *d, listen: ':1', backends: ['a:1']}]\n",
		"admin: {token: '${TOKEN}$$'}\n", "- 1\n", "proxies:\n  - listen: [\n",
	})
}

func FuzzLoadTOML(f *testing.F) {
	fuzzLoad(f, "pj.toml", fullTOML, []string{
		"", "[log]\nformat = \"json\"\n", "[[proxies]]\nlisten = \":0\"\n[[proxies.backends]]\naddress = \"a:1\"\n",
		"a.b.c = 1\n[a.b]\n", "[defaults]\nhealth_check = { interval = \"1s\" }\n[defaults.health_check]\n",
		"admin.token = '${TOKEN}$$'\n", "x = 1979-05-27T07:32:00Z\n", "proxies = [{listen = \":1\", backends = [\"a:1\"]}]\n",
	})
}

// fuzzLoad seeds f with full, more and the examples of the file's
// format, and fuzzes Decode of a file of that name.
func fuzzLoad(f *testing.F, name, full string, more []string) {
	f.Add(full)
	for _, s := range more {
		f.Add(s)
	}
	examples, _ := filepath.Glob(filepath.Join("..", "..", "examples", "*"+filepath.Ext(name)))
	for _, path := range examples {
		if b, err := os.ReadFile(path); err == nil {
			f.Add(string(b))
		}
	}
	f.Fuzz(func(t *testing.T, text string) {
		testutil.WithinBudget(t, func() { checkDecode(t, name, text) })
	})
}

func checkDecode(t *testing.T, name, text string) {
	vars := env(map[string]string{"TOKEN": "t", "PJ_WEB_LISTEN": "0.0.0.0:8080"})
	c, err := config.Decode(name, []byte(text), vars)
	again, err2 := config.Decode(name, []byte(text), vars)
	if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) || !reflect.DeepEqual(c, again) {
		t.Fatalf("two decodings differ: %v / %v", err, err2)
	}
	if err != nil {
		var ve *config.ValidationError
		if !errors.As(err, &ve) || len(ve.Problems) == 0 {
			t.Fatalf("error %T %v is not a ValidationError with problems", err, err)
		}
		for _, p := range ve.Problems {
			if !strings.HasPrefix(p, name+":") {
				t.Errorf("problem %q does not start with the file name", p)
			}
		}
		return
	}
	lines := strings.Count(text, "\n") + 1
	for _, p := range c.Proxies {
		rest, ok := strings.CutPrefix(p.Source, name+":")
		line, err := strconv.Atoi(rest)
		if !ok || err != nil || line < 1 || line > lines {
			t.Errorf("proxy Source %q is not a line of the %d-line file", p.Source, lines)
		}
	}
	_ = c.Validate()
}

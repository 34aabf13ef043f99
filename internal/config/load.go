package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Override is a setting given outside the configuration file — a
// command-line flag or its PJ_ variable — that wins over the file. It is
// applied to the defaults after the file's own, so proxies inherit it, and
// to every proxy that does not set Key itself: a proxy's own value is more
// specific than a flag meant for all.
type Override struct {
	// Key is the settings key of the file that the override replaces,
	// e.g. "connect_timeout".
	Key string
	// Apply sets the value.
	Apply func(*Settings)
}

// Load reads, decodes and validates the configuration file at path (see
// Decode), and returns the configuration pj runs, or an error naming every
// problem: a *ValidationError, or the error of reading the file.
func Load(path string, lookupEnv func(string) (string, bool), overrides ...Override) (Config, error) {
	if _, err := fileFormat(path); err != nil {
		return Config{}, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read configuration file: %w", err)
	}
	c, err := Decode(path, data, lookupEnv, overrides...)
	if err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Decode decodes the contents of a configuration file into a Config,
// without Validate: a caller that adds to it (proxies from the command
// line) validates the whole. name is the file's path as it should appear
// in messages, and its extension chooses the format: YAML (.yaml, .yml)
// or TOML (.toml).
//
// The result starts from Default(); File is name and every proxy's Source
// is "name:LINE". Each proxy's Settings are the defaults (Default's,
// overlaid with the file's defaults, then with overrides) overlaid with the
// keys the proxy sets, key by key in nested objects too. lookupEnv expands
// ${NAME} in string values; nil means os.LookupEnv.
//
// Every problem of the file — syntax, unknown keys (with the closest valid
// key), wrong types, bad values, unset variables — is reported at once, in
// a *ValidationError whose Problems read "name:LINE: KEY.PATH: what".
func Decode(name string, data []byte, lookupEnv func(string) (string, bool), overrides ...Override) (Config, error) {
	parse, err := fileFormat(name)
	if err != nil {
		return Config{}, err
	}
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	root, treeProblems, err := parse(data)
	if err != nil {
		var se *syntaxError
		if !errors.As(err, &se) {
			se = &syntaxError{msg: err.Error()}
		}
		return Config{}, &ValidationError{Problems: []string{problem{line: se.line, msg: "syntax error: " + se.msg}.format(name)}}
	}
	d := decoder{lookupEnv: lookupEnv, problems: treeProblems}
	dec := d.file(root)
	if len(d.problems) > 0 {
		sort.SliceStable(d.problems, func(i, j int) bool { return d.problems[i].line < d.problems[j].line })
		out := make([]string, len(d.problems))
		for i, p := range d.problems {
			out[i] = p.format(name)
		}
		return Config{}, &ValidationError{Problems: out}
	}
	return dec.resolve(name, overrides), nil
}

// resolve applies inheritance: defaults, then overrides, then each proxy's
// own keys.
func (dec *decoded) resolve(file string, overrides []Override) Config {
	c := dec.cfg
	c.File = file
	dec.defaults.applyTo(&c.Defaults)
	for _, o := range overrides {
		o.Apply(&c.Defaults)
	}
	c.Proxies = make([]Proxy, 0, len(dec.proxies))
	for _, fp := range dec.proxies {
		p := fp.proxy
		p.Source = fmt.Sprintf("%s:%d", file, fp.line)
		p.Settings = cloneSettings(c.Defaults)
		fp.settings.applyTo(&p.Settings)
		for _, o := range overrides {
			if !fp.settings.keys[o.Key] {
				o.Apply(&p.Settings)
			}
		}
		c.Proxies = append(c.Proxies, p)
	}
	return c
}

// cloneSettings copies s so that no slice or pointer is shared with it:
// runtime objects built from one proxy must not change another's.
func cloneSettings(s Settings) Settings {
	s.Allow = slices.Clone(s.Allow)
	s.Deny = slices.Clone(s.Deny)
	if s.AcceptProxyProtocol != nil {
		a := *s.AcceptProxyProtocol
		a.Trusted = slices.Clone(a.Trusted)
		s.AcceptProxyProtocol = &a
	}
	return s
}

// fileFormat returns the parser for a file's extension.
func fileFormat(name string) (func([]byte) (*node, []problem, error), error) {
	switch ext := strings.ToLower(filepath.Ext(name)); ext {
	case ".yaml", ".yml":
		return yamlTree, nil
	case ".toml":
		return func(data []byte) (*node, []problem, error) {
			return tomlTree(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))) // a UTF-8 byte order mark
		}, nil
	default:
		what := "no extension"
		if ext != "" {
			what = "the extension " + ext
		}
		return nil, &ValidationError{Problems: []string{fmt.Sprintf(
			"%s: cannot tell the format from %s: pj reads YAML (.yaml, .yml) and TOML (.toml) files", name, what)}}
	}
}

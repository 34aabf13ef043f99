package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Override is a setting given outside the configuration file — a
// command-line flag or its PJ_ variable — that wins over the file. A
// setting of the proxies is applied to the defaults after the file's own,
// so proxies inherit it, and to every proxy that does not set Key itself:
// a proxy's own value is more specific than a flag meant for all.
// Overrides makes them from the flags' values.
type Override struct {
	// Key is the key of the file that the override replaces, e.g.
	// "connect_timeout".
	Key string
	// Apply sets the value of a key of the settings.
	Apply func(*Settings)
	// top sets the value of a top-level key ("grace_period").
	top func(*Config)
}

// Flag is a key that the command line sets too: by a flag and its PJ_
// variable, or, for a secret, by a variable alone.
type Flag struct {
	Name  string // the flag's name, without dashes; "" for a variable alone
	Env   string // the variable of a key without a flag
	Usage string
	Key   string // the key in a file: "connect_timeout", "log.format"
	// Var returns the flag's variable in c (for a setting of the proxies,
	// in c.Defaults): a *string, *bool or *time.Duration.
	Var func(c *Config) any
	// Retired marks the flag of a key pj accepts and ignores: hidden from
	// help; whoever sets it adds an Ignored to the configuration.
	Retired bool
}

// Flags lists the keys that the command line sets, in the order of help
// texts.
func Flags() []Flag {
	out := appendFlags(nil, settingKeys, func(c *Config) *Settings { return &c.Defaults })
	return appendFlags(out, topKeys, func(c *Config) *Config { return c })
}

func appendFlags[O any](out []Flag, all []setting[O], owner func(*Config) *O) []Flag {
	for _, k := range all {
		if i := k.info(); i.flag != "" || i.env != "" {
			out = append(out, Flag{Name: i.flag, Env: i.env, Usage: i.usage, Key: i.name,
				Var: func(c *Config) any { return k.pointer(owner(c)) }, Retired: i.retired != ""})
		}
	}
	return out
}

// Overrides returns the overrides of the given keys (as Flag.Key names
// them), with the values they have in from.
func Overrides(from Config, keys ...string) []Override {
	var out []Override
	for _, k := range topKeys {
		if slices.Contains(keys, k.info().name) {
			out = append(out, Override{Key: k.info().name, top: func(c *Config) { k.copy(c, &from) }})
		}
	}
	for _, k := range settingKeys {
		if slices.Contains(keys, k.info().name) {
			out = append(out, Override{Key: k.info().name, Apply: func(s *Settings) { k.copy(s, &from.Defaults) }})
		}
	}
	return out
}

// Load reads, decodes and validates the configuration file at path (see
// Decode), and returns the configuration pj runs, or an error naming every
// problem: a *ValidationError, or the error of reading the file.
func Load(path string, lookupEnv func(string) (string, bool), overrides ...Override) (Config, error) {
	if _, err := fileFormat(path); err != nil {
		return Config{}, err
	}
	data, err := ReadFile(path)
	if err != nil {
		return Config{}, err
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
	f, err := fileFormat(name)
	if err != nil {
		return Config{}, err
	}
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	root, treeProblems, err := f.tree(data)
	if err != nil {
		var se *syntaxError
		if !errors.As(err, &se) {
			se = &syntaxError{msg: err.Error()}
		}
		return Config{}, &ValidationError{Problems: []string{problem{line: se.line, msg: "syntax error: " + se.msg}.format(name)}}
	}
	d := decoder{lookupEnv: lookupEnv, problems: treeProblems, retired: map[string]bool{}}
	dec := d.file(root)
	if d.problems.count() > 0 {
		return Config{}, d.problems.error(name)
	}
	c := dec.resolve(name, overrides)
	for _, ig := range d.ignored {
		c.Ignored = append(c.Ignored, Ignored{Key: ig.key, Where: fmt.Sprintf("%s:%d", name, ig.line)})
	}
	return c, nil
}

// resolve applies inheritance: the built-in values, then the file's, then
// the overrides; for a proxy, its own keys between the file's defaults and
// the overrides.
func (dec *decoded) resolve(file string, overrides []Override) Config {
	c := Default()
	dec.top.applyTo(&c)
	c.File = file
	for _, o := range overrides {
		if o.top != nil {
			o.top(&c)
		}
	}
	c.Defaults = dec.settings(nil, overrides)
	c.Proxies = make([]Proxy, 0, len(dec.proxies))
	for _, fp := range dec.proxies {
		var p Proxy
		fp.own.applyTo(&p)
		p.Source = fmt.Sprintf("%s:%d", file, fp.line)
		p.Settings = dec.settings(&fp.settings, overrides)
		p.Routes = dec.resolveRoutes(file, &fp, overrides)
		c.Proxies = append(c.Proxies, p)
	}
	return c
}

// settings resolves the settings of a proxy that sets own (nil: of the
// defaults). Each is built afresh, so that no two share a list.
func (dec *decoded) settings(own *patch[Settings], overrides []Override) Settings {
	s := Default().Defaults
	dec.defaults.applyTo(&s)
	if own != nil {
		own.applyTo(&s)
	}
	for _, o := range overrides {
		if o.Apply != nil && (own == nil || !own.keys[o.Key]) {
			o.Apply(&s)
		}
	}
	return s
}

// fileFormat returns the format of a file, by its extension.
func fileFormat(name string) (format, error) {
	switch ext := strings.ToLower(filepath.Ext(name)); ext {
	case ".yaml", ".yml":
		// Values begin after a line end, a comma, a bracket, a brace, a
		// colon, a dash or a question mark.
		return format{name: "YAML", separators: "\n,[{:-?", parse: yamlTree}, nil
	case ".toml":
		// Values begin after a line end, a comma, a bracket, a brace or
		// an equals sign; the parts of a dotted key after a dot.
		return format{name: "TOML", separators: "\n,[{=.", parse: tomlTree}, nil
	default:
		what := "no extension"
		if ext != "" {
			what = "the extension " + ext
		}
		return format{}, &ValidationError{Problems: []string{fmt.Sprintf(
			"%s: cannot tell the format from %s: pj reads YAML (.yaml, .yml) and TOML (.toml) files", name, what)}}
	}
}

// A format is a language of configuration files and its parser into a
// tree. Problems that are not syntax errors (a key given twice) are
// returned beside the tree; a syntax error is the error, with no tree.
type format struct {
	name       string // "YAML"
	separators string // the bytes after which a value can begin
	parse      func(data []byte) (*node, problems, error)
}

// tree parses data. One UTF-8 byte order mark at its start, which
// editors on Windows write, is not part of the document. A document with
// more separators than maxSeparators is refused before the parser sees
// it. The parsers report their errors by panicking and recovering inside;
// anything else that escapes one is a bug of the library, which must not
// take pj down during a reload.
func (f format) tree(data []byte) (root *node, ps problems, err error) {
	defer func() {
		if v := recover(); v != nil {
			root, ps, err = nil, problems{}, &syntaxError{msg: fmt.Sprintf("the %s parser failed: %v", f.name, v)}
		}
	}()
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if err := checkSeparators(data, f.separators); err != nil {
		return nil, problems{}, err
	}
	return f.parse(data)
}

// ReadFile reads a configuration file: a regular file (or a link to one)
// of at most MaxFileSize bytes, checked before anything is read. A device
// (a link to /dev/zero) would never end, and a FIFO blocks whoever opens
// it until a writer comes: it is opened without blocking, and refused.
func ReadFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read configuration file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read configuration file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read configuration file %s: not a regular file (%s): pj reads its configuration from a file", path, fileKind(fi.Mode()))
	}
	if fi.Size() > MaxFileSize {
		return nil, fmt.Errorf("read configuration file %s: %d bytes, more than the %d MiB a configuration file may have", path, fi.Size(), MaxFileSize>>20)
	}
	// The file may grow while it is read: read one byte past the limit to
	// tell.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("read configuration file: %w", err)
	case len(data) > MaxFileSize:
		return nil, fmt.Errorf("read configuration file %s: more than the %d MiB a configuration file may have", path, MaxFileSize>>20)
	}
	return data, nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return m.Type().String()
}

// Package cli is pj's command line: flags, environment variables and
// sub-commands, turned into a validated config.Config and run.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/version"
)

// UsageError is a mistake in how pj was invoked: a bad flag, mapping,
// duration or environment variable, or nothing to proxy. It exits with 2.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// ExitCode maps the error Run returned to the process exit status: 0
// success, 2 usage error, 1 anything else.
func ExitCode(err error) int {
	var ue *UsageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		return 2
	default:
		return 1
	}
}

// Option adjusts how Run interacts with its environment; tests use them.
type Option func(*runEnv)

type runEnv struct {
	lookupEnv func(string) (string, bool)
	listening func([]net.Addr)
	reload    <-chan struct{}
	inherited []*os.File
	// upgrade requests an upgrade (SIGUSR2) to exe, run with args.
	upgrade <-chan struct{}
	exe     string
	args    []string
	// child is set when an upgrade started this pj.
	child *upgradeChild
	// logBatch and logBatches size the log queue: batches of logBatch
	// bytes, at most logBatches of them waiting for the writer.
	logBatch, logBatches int
}

// WithLookupEnv replaces os.LookupEnv as the source of PJ_* variables.
func WithLookupEnv(f func(string) (string, bool)) Option {
	return func(e *runEnv) { e.lookupEnv = f }
}

// WithListening registers f to be called with the bound addresses once every
// listener is bound, before connections are accepted.
func WithListening(f func([]net.Addr)) Option {
	return func(e *runEnv) { e.listening = f }
}

// WithReload makes every value received on ch reload the configuration
// file, as SIGHUP does.
func WithReload(ch <-chan struct{}) Option {
	return func(e *runEnv) { e.reload = ch }
}

// WithInherited gives pj listening sockets passed in by a service manager
// (socket activation): each serves the proxy whose listen address it has.
// Run owns the files.
func WithInherited(files []*os.File) Option {
	return func(e *runEnv) { e.inherited = files }
}

// Run runs pj with args (without the program name) until ctx is cancelled,
// then shuts down gracefully. Usage errors are *UsageError; ExitCode maps any
// returned error to an exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, opts ...Option) error {
	env := runEnv{lookupEnv: os.LookupEnv, logBatch: logBatch, logBatches: logBatches}
	for _, o := range opts {
		o(&env)
	}
	root := newRootCmd(ctx, &env, stdout, stderr)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

// flags holds the values of the flags of the root and check commands.
type flags struct {
	proxies    []string // from -p/--proxy
	envProxies []string // from PJ_PROXY, used only when no -p is given
	configFile string   // -c/--config or PJ_CONFIG
	version    bool
	// cfg holds the values of the flags that are settings, bound to them;
	// it starts as config.Default().
	cfg config.Config
	// given lists the keys (as a file names them) that a flag or a PJ_
	// variable set: only those override a configuration file.
	given []string
	// ignored lists the retired keys that a flag or a PJ_ variable set,
	// added to every configuration loaded, so that each load warns.
	ignored []config.Ignored
}

func newRootCmd(ctx context.Context, env *runEnv, stdout, stderr io.Writer) *cobra.Command {
	f := &flags{cfg: config.Default()}
	root := &cobra.Command{
		Use:   "pj [flags]",
		Short: "pj is a TCP (layer 4) reverse proxy",
		Long: `pj listens on TCP ports and relays every connection to a backend, byte for byte.

A mapping is ` + config.MappingSyntax + `:
  0.0.0.0:8787:127.0.0.1:22                  SSH on port 8787
  :8080:10.0.0.1:80,10.0.0.2:80              one listener, two backends (round-robin)
  [::]:8443:[2001:db8::1]:443                IPv6 in brackets, on either side
  127.0.0.1:0:db.internal:5432               an ephemeral port (logged at start-up)

A configuration file (-c, YAML or TOML) says the same and more: named proxies,
defaults every proxy inherits, backends with weights and backups. Flags given
explicitly override the file's defaults; mappings are added to its proxies.
'pj check' validates a configuration without running it.

Every flag can also be given as an environment variable: PJ_ and the flag name
in upper case with _ for - (PJ_CONNECT_TIMEOUT=2s, PJ_CONFIG=/etc/pj.yaml).
PJ_PROXY holds one or more mappings separated by ';' or new lines. A flag wins
over its variable.`,
		Example: `  pj --proxy 0.0.0.0:8787:127.0.0.1:22
  pj -p 0.0.0.0:8787:127.0.0.1:22 -p 0.0.0.0:8080:127.0.0.1:80
  PJ_PROXY="0.0.0.0:8080:b1:80,b2:80,b3:80" pj --log-format json
  pj -c /etc/pj/pj.yaml --watch
  pj check -c /etc/pj/pj.yaml`,
		Args:          noArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.version {
				_, err := io.WriteString(stdout, version.String())
				return err
			}
			if err := f.fromEnv(cmd.Flags(), env.lookupEnv); err != nil {
				return err
			}
			cfg, err := loadConfig(f, env.lookupEnv)
			if err != nil {
				if errors.Is(err, errNothingToProxy) {
					_, _ = fmt.Fprintf(stderr, "Usage: pj --proxy %s [--proxy ...] [flags]\n   or: pj -c FILE [flags]\nRun 'pj --help' for every flag and more examples.\n", config.MappingSyntax)
				}
				return err
			}
			return serve(ctx, f, cfg, env, stderr)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &UsageError{Err: fmt.Errorf("%w (run 'pj --help' for the flags)", err)}
	})

	fs := root.Flags()
	fs.SortFlags = false
	addConfigFlags(fs, f)
	fs.BoolVarP(&f.version, "version", "V", false, "print the version and exit")

	root.AddCommand(newCheckCmd(env, f, stdout), newReloadCmd(env, stdout, stderr), &cobra.Command{
		Use:   "version",
		Short: "Print the version (same as -V)",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := io.WriteString(stdout, version.String())
			return err
		},
	})
	return root
}

// addConfigFlags defines the flags that say what pj runs, shared by pj
// and pj check.
func addConfigFlags(fs *pflag.FlagSet, f *flags) {
	fs.StringVarP(&f.configFile, "config", "c", "", "configuration file, YAML (.yaml, .yml) or TOML (.toml); --proxy mappings are added to its proxies")
	fs.StringArrayVarP(&f.proxies, "proxy", "p", nil, "mapping "+config.MappingSyntax+"; repeatable")
	for _, fl := range config.Flags() {
		if fl.Name == "" {
			continue // a variable alone
		}
		switch p := fl.Var(&f.cfg).(type) {
		case *string:
			fs.StringVar(p, fl.Name, *p, fl.Usage)
		case *time.Duration:
			fs.DurationVar(p, fl.Name, *p, fl.Usage)
		case *bool:
			fs.BoolVar(p, fl.Name, *p, fl.Usage)
		}
		if fl.Retired {
			// Accepted and ignored: a load warns (config.Config.Warnings),
			// once, wherever it is set.
			_ = fs.MarkHidden(fl.Name)
		}
	}
}

// fromEnv completes the flags with the PJ_ variables and records which
// flags were given, on the command line or by a variable.
func (f *flags) fromEnv(fs *pflag.FlagSet, lookupEnv func(string) (string, bool)) error {
	onCommandLine := map[string]bool{}
	fs.Visit(func(fl *pflag.Flag) { onCommandLine[fl.Name] = true })
	if err := applyEnv(fs, lookupEnv); err != nil {
		return err
	}
	if v, ok := lookupEnv(EnvName("proxy")); ok && !fs.Changed("proxy") {
		f.envProxies = splitMappings(v)
	}
	f.given, f.ignored = nil, nil
	for _, fl := range config.Flags() {
		if fl.Name == "" {
			// A secret has a variable but no flag (a flag would show in
			// ps); the variable wins over the file too.
			v, ok := lookupEnv(fl.Env)
			if p, isText := fl.Var(&f.cfg).(*string); ok && isText {
				*p = v
				f.given = append(f.given, fl.Key)
			}
			continue
		}
		switch {
		case !fs.Changed(fl.Name):
		case fl.Retired && onCommandLine[fl.Name]:
			f.ignored = append(f.ignored, config.Ignored{Key: fl.Key, Where: "--" + fl.Name})
		case fl.Retired:
			f.ignored = append(f.ignored, config.Ignored{Key: fl.Key, Where: EnvName(fl.Name)})
		default:
			f.given = append(f.given, fl.Key)
		}
	}
	return nil
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if cmd.HasSubCommands() {
		return usagef("unknown command or argument %q: expected a sub-command (check, reload, version) or flags; mappings go after -p/--proxy", args[0])
	}
	return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args[0])
}

var errNothingToProxy = errors.New("nothing to proxy: give at least one mapping with --proxy (or PJ_PROXY), or a configuration file with -c (or PJ_CONFIG)")

// loadConfig builds the validated configuration pj runs from the flags
// (and their PJ_ variables) and, if one is given, the configuration file;
// lookupEnv expands the file's ${VAR}s. It reads the file anew at every
// call: serving calls it again to reload, and it gives the same result
// for the same file.
//
// Precedence: a flag given explicitly (or by its variable) overrides the
// file: a top-level key (--log-format, --grace-period) the file's value; a
// setting of the proxies (--connect-timeout) the file's defaults, and
// every file proxy that does not set that key itself. Flags left at their
// built-in values never override the file. Mappings (--proxy, or PJ_PROXY
// when no --proxy is given) are added after the file's proxies and inherit
// its defaults.
//
// Errors: a bad flag or mapping, or nothing to run, is a *UsageError; a
// file that cannot be read, or a configuration with problems, is an error
// naming them all (exit status 1).
func loadConfig(f *flags, lookupEnv func(string) (string, bool)) (config.Config, error) {
	if f.cfg.Watch && f.configFile == "" {
		return config.Config{}, usagef("--watch reloads a configuration file when it changes: give one with -c FILE (or PJ_CONFIG)")
	}
	if f.configFile == "" {
		return f.config()
	}
	if err := f.checkFlags(); err != nil {
		return config.Config{}, err
	}
	data, err := config.ReadFile(f.configFile)
	if err != nil {
		return config.Config{}, err
	}
	cfg, err := config.Decode(f.configFile, data, lookupEnv, config.Overrides(f.cfg, f.given...)...)
	if err != nil {
		return config.Config{}, err
	}
	cfg.Ignored = append(cfg.Ignored, f.ignored...)
	mappings, err := f.mappings()
	if err != nil {
		return config.Config{}, err
	}
	for _, p := range mappings {
		p.Settings = cfg.Defaults
		cfg.Proxies = append(cfg.Proxies, p)
	}
	if len(cfg.Proxies) == 0 {
		return config.Config{}, &config.ValidationError{Problems: []string{
			f.configFile + ": no proxies: list at least one under proxies (or add a mapping with --proxy)"}}
	}
	if err := cfg.Validate(); err != nil {
		return config.Config{}, err
	}
	return cfg, nil
}

// checkFlags validates the values of the flags alone, so that a bad one
// is a usage error even beside a configuration file.
func (f *flags) checkFlags() error {
	c := f.cfg
	c.Proxies, c.File = nil, ""
	if err := c.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	return nil
}

// mappings parses the mappings of --proxy, or of PJ_PROXY when no
// --proxy is given.
func (f *flags) mappings() ([]config.Proxy, error) {
	var out []config.Proxy
	for _, m := range f.proxies {
		p, err := config.ParseMapping(m)
		if err != nil {
			return nil, &UsageError{Err: err}
		}
		out = append(out, p)
	}
	for _, m := range f.envProxies {
		p, err := config.ParseMapping(m)
		if err != nil {
			return nil, usagef("PJ_PROXY: %w", err)
		}
		p.Source = "PJ_PROXY " + strings.TrimPrefix(p.Source, "-p ") // shortened, as messages show it
		out = append(out, p)
	}
	return out, nil
}

// config turns flags without a configuration file into a validated
// configuration; every problem is a usage error.
func (f *flags) config() (config.Config, error) {
	cfg := f.cfg
	cfg.Ignored = slices.Clone(f.ignored)
	mappings, err := f.mappings()
	if err != nil {
		return cfg, err
	}
	cfg.Proxies = mappings
	if len(cfg.Proxies) == 0 {
		return cfg, &UsageError{Err: errNothingToProxy}
	}
	for i := range cfg.Proxies {
		cfg.Proxies[i].Settings = cfg.Defaults
	}
	if err := cfg.Validate(); err != nil {
		return cfg, &UsageError{Err: err}
	}
	return cfg, nil
}

// applyEnv gives every flag not set on the command line the value of its
// PJ_ variable, if that is set.
func applyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		if err != nil || fl.Changed || fl.Name == "version" || fl.Name == "help" || fl.Name == "proxy" {
			return
		}
		name := EnvName(fl.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if serr := fl.Value.Set(strings.TrimSpace(v)); serr != nil {
			err = usagef("%s=%q: %w", name, v, serr)
			return
		}
		fl.Changed = true // given, as much as on the command line
	})
	return err
}

// EnvName is the environment variable of a flag: PJ_ and the name in upper
// case with _ for -.
func EnvName(flag string) string {
	return "PJ_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// splitMappings splits PJ_PROXY on ';' and white space (new lines
// included), dropping empty parts: a mapping never contains either.
func splitMappings(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ';' || unicode.IsSpace(r) })
}

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
	"strings"
	"unicode"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/observe"
	"github.com/pj-proxy/pj/internal/server"
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

// ExitCode maps the error Run returned to the process exit status of
// CONTRACT.md section 1: 0 success, 2 usage error, 1 anything else.
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

// Run runs pj with args (without the program name) until ctx is cancelled,
// then shuts down gracefully. Usage errors are *UsageError; ExitCode maps any
// returned error to an exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, opts ...Option) error {
	env := runEnv{lookupEnv: os.LookupEnv}
	for _, o := range opts {
		o(&env)
	}
	root := newRootCmd(ctx, &env, stdout, stderr)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

// flags holds the values of the root command's flags.
type flags struct {
	proxies    []string // from -p/--proxy
	envProxies []string // from PJ_PROXY, used only when no -p is given
	version    bool
	cfg        config.Config
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

Every flag can also be given as an environment variable: PJ_ and the flag name
in upper case with _ for - (PJ_CONNECT_TIMEOUT=2s). PJ_PROXY holds one or more
mappings separated by ';' or new lines. A flag wins over its variable.`,
		Example: `  pj --proxy 0.0.0.0:8787:127.0.0.1:22
  pj -p 0.0.0.0:8787:127.0.0.1:22 -p 0.0.0.0:8080:127.0.0.1:80
  PJ_PROXY="0.0.0.0:8080:b1:80,b2:80,b3:80" pj --log-format json`,
		Args:          noArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.version {
				_, err := io.WriteString(stdout, version.String())
				return err
			}
			if err := applyEnv(cmd.Flags(), env.lookupEnv); err != nil {
				return err
			}
			if v, ok := env.lookupEnv(EnvName("proxy")); ok && !cmd.Flags().Changed("proxy") {
				f.envProxies = splitMappings(v)
			}
			cfg, err := f.config()
			if err != nil {
				if errors.Is(err, errNothingToProxy) {
					_, _ = fmt.Fprintf(stderr, "Usage: pj --proxy %s [--proxy ...] [flags]\nRun 'pj --help' for every flag and more examples.\n", config.MappingSyntax)
				}
				return err
			}
			return serve(ctx, cfg, env, stderr)
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
	fs.StringArrayVarP(&f.proxies, "proxy", "p", nil, "mapping "+config.MappingSyntax+"; repeatable")
	fs.StringVar(&f.cfg.Defaults.Balance, "balance", f.cfg.Defaults.Balance, "how connections are spread over a mapping's backends: round-robin")
	fs.DurationVar(&f.cfg.Defaults.ConnectTimeout, "connect-timeout", f.cfg.Defaults.ConnectTimeout, "time allowed to open a backend connection (all failover tries included)")
	fs.DurationVar(&f.cfg.Defaults.IdleTimeout, "idle-timeout", f.cfg.Defaults.IdleTimeout, "close a connection idle in both directions this long; 0 = never")
	fs.DurationVar(&f.cfg.GracePeriod, "grace-period", f.cfg.GracePeriod, "on SIGTERM/SIGINT, how long established connections may finish")
	fs.StringVar(&f.cfg.Log.Format, "log-format", f.cfg.Log.Format, "log encoding: text or json")
	fs.StringVar(&f.cfg.Log.Level, "log-level", f.cfg.Log.Level, "least severe records logged: debug, info, warn or error")
	fs.BoolVarP(&f.version, "version", "V", false, "print the version and exit")

	root.AddCommand(&cobra.Command{
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

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if cmd.HasSubCommands() {
		return usagef("unknown command or argument %q: expected a sub-command (version) or flags; mappings go after -p/--proxy", args[0])
	}
	return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args[0])
}

var errNothingToProxy = errors.New("nothing to proxy: give at least one mapping with --proxy (or PJ_PROXY)")

// config turns the parsed flags into a validated configuration.
func (f *flags) config() (config.Config, error) {
	cfg := f.cfg
	for _, m := range f.proxies {
		p, err := config.ParseMapping(m)
		if err != nil {
			return cfg, &UsageError{Err: err}
		}
		cfg.Proxies = append(cfg.Proxies, p)
	}
	for _, m := range f.envProxies {
		p, err := config.ParseMapping(m)
		if err != nil {
			return cfg, usagef("PJ_PROXY: %w", err)
		}
		p.Source = "PJ_PROXY " + m
		cfg.Proxies = append(cfg.Proxies, p)
	}
	if len(cfg.Proxies) == 0 {
		return cfg, &UsageError{Err: errNothingToProxy}
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
		}
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

func serve(ctx context.Context, cfg config.Config, env *runEnv, stderr io.Writer) error {
	log, err := observe.NewLogger(stderr, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		return &UsageError{Err: err}
	}
	srv, err := server.Listen(cfg.Proxies, server.Options{Logger: log, GracePeriod: cfg.GracePeriod})
	if err != nil {
		return fmt.Errorf("start-up failed, nothing is listening: %w", err)
	}
	if env.listening != nil {
		env.listening(srv.Addrs())
	}
	return srv.Serve(ctx)
}

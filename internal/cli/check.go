package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pj-proxy/pj/internal/certs"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/proxy"
	"github.com/pj-proxy/pj/internal/route"
)

// newCheckCmd is "pj check": load and validate exactly what pj would run
// with the same flags, variables and file, bind nothing, and print a
// summary (exit 0) or every problem (exit 1).
func newCheckCmd(env *runEnv, f *flags, stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check [flags]",
		Short: "Validate the configuration and print what would run",
		Long: `pj check loads the configuration exactly as pj would — the file given with
-c (or PJ_CONFIG), the flags, the PJ_ variables and the mappings — and validates
it without binding anything. If it is valid, it prints a summary of every proxy
and exits 0; if not, it prints every problem, each with the file, line and key,
and exits 1.`,
		Example: `  pj check -c /etc/pj/pj.yaml
  PJ_CONFIG=/etc/pj/pj.toml pj check --connect-timeout 2s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.fromEnv(cmd.Flags(), env.lookupEnv); err != nil {
				return err
			}
			if f.configFile == "" && len(f.proxies) == 0 && len(f.envProxies) == 0 {
				return usagef("nothing to check: give a configuration file with -c FILE (or PJ_CONFIG), or mappings with --proxy")
			}
			// Loading reads a file and the environment, and binds nothing:
			// a signal (ctx) ends the check at once, whatever it waits for.
			type loaded struct {
				cfg config.Config
				err error
			}
			done := make(chan loaded, 1)
			go func() {
				cfg, err := loadConfig(f, env.lookupEnv)
				done <- loaded{cfg, err}
			}()
			select {
			case l := <-done:
				if l.err != nil {
					return l.err
				}
				problems, warnings := tlsFindings(l.cfg, time.Now())
				for _, w := range l.cfg.Warnings() {
					warnings = append(warnings, "warning: "+w)
				}
				if len(problems) > 0 {
					return &config.ValidationError{Problems: append(problems, warnings...)}
				}
				out := summary(l.cfg)
				for _, w := range warnings {
					out += w + "\n"
				}
				_, err := io.WriteString(stdout, out)
				return err
			case <-cmd.Context().Done():
				return fmt.Errorf("check interrupted: %w", context.Cause(cmd.Context()))
			}
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	addConfigFlags(fs, f)
	return cmd
}

// summary describes a valid configuration in a few lines: a header, then
// two lines per proxy — where it listens and relays, then its policies.
// Policies at pj's built-in values are left out, except the balance
// algorithm and whether health checks run.
func summary(c config.Config) string {
	var b strings.Builder
	from := "the command line"
	if c.File != "" {
		from = c.File
	}
	fmt.Fprintf(&b, "configuration from %s is valid: %s\n", from, plural(len(c.Proxies), "proxy", "proxies"))
	if global := c.Summary(); len(global) > 0 {
		fmt.Fprintf(&b, "%s\n", strings.Join(global, "; "))
	}
	for _, p := range c.Proxies {
		b.WriteString("\n")
		name := p.Listen
		if p.Name != p.Listen {
			name = fmt.Sprintf("%s on %s", p.Name, p.Listen)
		}
		if len(p.Routes) > 0 {
			routesSummary(&b, name, p)
			continue
		}
		fmt.Fprintf(&b, "proxy %s -> %s\n", name, backendList(p.Backends))
		fmt.Fprintf(&b, "  %s\n", strings.Join(p.Summary(), "; "))
	}
	return b.String()
}

// routesSummary describes a proxy with routes: how routes are chosen,
// the listener's settings, then each route, its match, its backends and
// its settings.
func routesSummary(b *strings.Builder, name string, p config.Proxy) {
	how := "by client address alone"
	if t, err := route.NewTable(p.Matches()); err == nil && t.Peeks() {
		how = "by what clients send first, waiting at most " + p.MatchTimeout.String()
	}
	fmt.Fprintf(b, "proxy %s -> %s, chosen %s\n", name, plural(len(p.Routes), "route", "routes"), how)
	if listener := p.Summary(); len(listener) > 0 {
		fmt.Fprintf(b, "  %s\n", strings.Join(listener, "; "))
	}
	for _, r := range p.Routes {
		fmt.Fprintf(b, "  route %s: %s -> %s\n", r.Name, r.Match.Describe(), backendList(r.Backends))
		fmt.Fprintf(b, "    %s\n", strings.Join(r.Summary(), "; "))
	}
}

// backendList writes backends with their weights and backup marks.
func backendList(backends []config.Backend) string {
	out := make([]string, len(backends))
	for i, be := range backends {
		out[i] = be.Address
		var notes []string
		if be.Weight != 1 {
			notes = append(notes, "weight "+strconv.Itoa(be.Weight))
		}
		if be.Backup {
			notes = append(notes, "backup")
		}
		if len(notes) > 0 {
			out[i] += " (" + strings.Join(notes, ", ") + ")"
		}
	}
	return strings.Join(out, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// tlsFindings reads the certificate files of every tls and backend_tls as
// pj would, and says what is wrong: problems make the configuration
// invalid, warnings (an expired certificate, a route's name that no
// certificate covers) are shown with the summary.
func tlsFindings(cfg config.Config, now time.Time) (problems, warnings []string) {
	add := func(where string, fs []certs.Finding) {
		for _, f := range fs {
			if f.Severity == certs.Error {
				problems = append(problems, where+": "+f.Message)
			} else {
				warnings = append(warnings, "warning: "+where+": "+f.Message)
			}
		}
	}
	check := func(where string, s config.Settings, sni []string) {
		if s.TLS != nil {
			add(where, certs.CheckServer(proxy.ServerOptions(s.TLS), sni, now))
		}
		if s.BackendTLS != nil {
			add(where, certs.CheckClient(proxy.ClientOptions(s.BackendTLS), now))
		}
	}
	for _, p := range cfg.Proxies {
		if len(p.Routes) == 0 {
			check("proxy "+p.Name, p.Settings, nil)
			continue
		}
		for _, r := range p.Routes {
			check("proxy "+p.Name+", route "+r.Name, r.Settings, r.Match.SNI)
		}
	}
	return problems, warnings
}

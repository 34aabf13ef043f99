package cli

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pj-proxy/pj/internal/config"
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
			cfg, err := loadConfig(f, env.lookupEnv)
			if err != nil {
				return err
			}
			_, err = io.WriteString(stdout, summary(cfg))
			return err
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
	def := config.Default()
	var global []string
	if c.Log != def.Log {
		global = append(global, fmt.Sprintf("log %s at level %s", c.Log.Format, c.Log.Level))
	}
	if c.GracePeriod != def.GracePeriod {
		global = append(global, "grace period "+durationText(c.GracePeriod))
	}
	if c.MaxConnections != 0 {
		global = append(global, fmt.Sprintf("at most %d connections in all", c.MaxConnections))
	}
	if c.Admin.Listen != "" {
		global = append(global, "admin on "+c.Admin.Listen)
	}
	if len(global) > 0 {
		fmt.Fprintf(&b, "%s\n", strings.Join(global, "; "))
	}
	for _, p := range c.Proxies {
		b.WriteString("\n")
		name := p.Listen
		if p.Name != p.Listen {
			name = fmt.Sprintf("%s on %s", p.Name, p.Listen)
		}
		backends := make([]string, len(p.Backends))
		for i, be := range p.Backends {
			backends[i] = be.Address
			var notes []string
			if be.Weight != 1 {
				notes = append(notes, "weight "+strconv.Itoa(be.Weight))
			}
			if be.Backup {
				notes = append(notes, "backup")
			}
			if len(notes) > 0 {
				backends[i] += " (" + strings.Join(notes, ", ") + ")"
			}
		}
		fmt.Fprintf(&b, "proxy %s -> %s\n", name, strings.Join(backends, ", "))
		fmt.Fprintf(&b, "  %s\n", strings.Join(policies(p, def.Defaults), "; "))
	}
	return b.String()
}

// policies lists a proxy's balance, health checks, and the settings that
// differ from the built-in ones.
func policies(p config.Proxy, def config.Settings) []string {
	s := p.Settings
	out := []string{s.Balance}
	if s.ConnectTimeout != def.ConnectTimeout {
		out = append(out, "connect timeout "+durationText(s.ConnectTimeout))
	}
	if s.IdleTimeout != def.IdleTimeout {
		out = append(out, "idle timeout "+durationText(s.IdleTimeout))
	}
	// CONTRACT.md section 5: checks run for a proxy of several backends,
	// or of one when health_check is set, unless the interval is 0.
	hc := s.HealthCheck
	if hc.Interval > 0 && (len(p.Backends) > 1 || hc.Explicit) {
		check := fmt.Sprintf("health checks every %s (timeout %s, rise %d, fall %d",
			durationText(hc.Interval), durationText(hc.Timeout), hc.Rise, hc.Fall)
		if hc.Send != "" {
			check += fmt.Sprintf(", send %q", hc.Send)
		}
		if hc.Expect != "" {
			check += fmt.Sprintf(", expect %q", hc.Expect)
		}
		if hc.SendProxy {
			check += ", with a PROXY header"
		}
		out = append(out, check+")")
	} else {
		out = append(out, "no health checks")
	}
	if s.DNSRefresh != def.DNSRefresh {
		if s.DNSRefresh == 0 {
			out = append(out, "host names resolved once")
		} else {
			out = append(out, "host names resolved every "+durationText(s.DNSRefresh))
		}
	}
	if s.Resolver != "" {
		out = append(out, "DNS server "+s.Resolver)
	}
	if s.MaxConnections > 0 {
		out = append(out, fmt.Sprintf("at most %d connections", s.MaxConnections))
	}
	if s.MaxConnectionsPerClient > 0 {
		out = append(out, fmt.Sprintf("at most %d connections per client", s.MaxConnectionsPerClient))
	}
	if len(s.Allow) > 0 {
		out = append(out, "allow "+prefixes(s.Allow))
	}
	if len(s.Deny) > 0 {
		out = append(out, "deny "+prefixes(s.Deny))
	}
	if s.RateLimit.PerClient > 0 {
		out = append(out, fmt.Sprintf("at most %s new connections per second per client (burst %d)",
			strconv.FormatFloat(s.RateLimit.PerClient, 'f', -1, 64), s.RateLimit.Burst))
	}
	if s.Bandwidth.PerConnection > 0 {
		out = append(out, fmt.Sprintf("at most %s/s each way per connection", bytesText(s.Bandwidth.PerConnection)))
	}
	if s.ProxyProtocol != "" {
		out = append(out, "PROXY protocol "+s.ProxyProtocol+" to backends")
	}
	if s.AcceptProxyProtocol != nil {
		out = append(out, "PROXY protocol accepted from "+prefixes(s.AcceptProxyProtocol.Trusted))
	}
	return out
}

func prefixes(list []netip.Prefix) string {
	out := make([]string, len(list))
	for i, p := range list {
		out[i] = p.String()
	}
	return strings.Join(out, ", ")
}

// bytesText writes a byte count in the largest binary unit that divides it.
func bytesText(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + " " + u.name
		}
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// durationText writes a duration as a person would: 1m rather than 1m0s.
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pj-proxy/pj/internal/admin"
)

// reloadTimeout bounds a reload asked for with pj reload: the running pj
// resolves backend names (5 s at most) and binds listeners.
const reloadTimeout = 30 * time.Second

// errReloadRefused is returned when the running pj found its file invalid
// (or could not apply it): exit status 1.
var errReloadRefused = errors.New("reload refused")

// newReloadCmd is "pj reload": ask a running pj, through its admin
// listener, to reload its configuration file, or to say what a reload
// would do.
func newReloadCmd(env *runEnv, stdout, stderr io.Writer) *cobra.Command {
	var (
		adminAddr string
		dryRun    bool
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:   "reload [--dry-run]",
		Short: "Reload a running pj's configuration file, or say what a reload would change",
		Long: `pj reload asks a running pj, through its admin listener, to read its
configuration file again and apply it, as SIGHUP does, and prints what changed:
the proxies added, removed and changed, and how many live connections each
change cuts (those of a listener that stops, once the grace period has passed).
With --dry-run it only says what a reload would do; nothing changes.

The admin listener is --admin (or PJ_ADMIN); the token, if the listener needs
one, is read from PJ_ADMIN_TOKEN. Exit status: 0 when the file is valid (and,
without --dry-run, applied), 1 when it is not (its problems are printed and
nothing changes) or pj cannot be reached, 2 on a usage error.`,
		Example: `  pj reload --admin 127.0.0.1:9090 --dry-run
  PJ_ADMIN=127.0.0.1:9090 pj reload
  PJ_ADMIN=10.0.0.5:9090 PJ_ADMIN_TOKEN=s3cret pj reload --dry-run --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if adminAddr == "" {
				adminAddr, _ = env.lookupEnv(EnvName("admin"))
			}
			adminAddr = strings.TrimSpace(adminAddr)
			if adminAddr == "" {
				return usagef("pj reload talks to a running pj through its admin listener: give its address with --admin HOST:PORT (or PJ_ADMIN)")
			}
			target, err := adminURL(adminAddr)
			if err != nil {
				return &UsageError{Err: err}
			}
			token, _ := env.lookupEnv("PJ_ADMIN_TOKEN")
			res, body, err := postReload(cmd.Context(), target, strings.TrimSpace(token), dryRun)
			if err != nil {
				return err
			}
			if asJSON {
				if _, err := stdout.Write(body); err != nil {
					return err
				}
			} else if res.Valid {
				if _, err := io.WriteString(stdout, describePlan(res)); err != nil {
					return err
				}
			}
			if !res.Valid || (!dryRun && !res.Applied) {
				for _, e := range res.Errors {
					_, _ = fmt.Fprintf(stderr, "  %s\n", e)
				}
				if dryRun {
					return fmt.Errorf("%w: the configuration file is not valid; a reload would change nothing", errReloadRefused)
				}
				return fmt.Errorf("%w: nothing changed, the running configuration goes on", errReloadRefused)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&adminAddr, "admin", "", "the running pj's admin listener, HOST:PORT (default: PJ_ADMIN)")
	fs.BoolVar(&dryRun, "dry-run", false, "say what a reload would do; change nothing")
	fs.BoolVar(&asJSON, "json", false, "print the admin API's JSON answer as it is")
	return cmd
}

// adminURL is the reload endpoint of the admin listener at addr. A
// wildcard host (":9090", "0.0.0.0:9090", "[::]:9090") is reached on the
// loopback address.
func adminURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--admin %q: expected HOST:PORT, such as 127.0.0.1:9090: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/api/v1/reload", nil
}

// postReload asks for the reload and decodes the answer. Every failure
// to get one is an error that says what to check.
func postReload(ctx context.Context, target, token string, dryRun bool) (admin.ReloadResult, []byte, error) {
	var res admin.ReloadResult
	if dryRun {
		target += "?dry_run=true"
	}
	ctx, cancel := context.WithTimeout(ctx, reloadTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, nil)
	if err != nil {
		return res, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return res, nil, fmt.Errorf("reach pj's admin listener: %w (is pj running with --admin at that address?)", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return res, nil, fmt.Errorf("read the admin listener's answer: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed,
		http.StatusBadRequest, http.StatusNotImplemented:
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(body, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(body))
		}
		hint := ""
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			hint = " (set PJ_ADMIN_TOKEN to the admin listener's token)"
		}
		return res, nil, fmt.Errorf("the admin listener refused the reload: %s %s%s", resp.Status, e.Error, hint)
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return res, nil, fmt.Errorf("the admin listener's answer (%s) is not a reload result: %w", resp.Status, err)
	}
	return res, body, nil
}

// describePlan prints what a reload did or would do, one line per change.
func describePlan(res admin.ReloadResult) string {
	var b strings.Builder
	switch {
	case res.DryRun && len(res.Changes) == 0:
		b.WriteString("the configuration file is valid; a reload would change nothing\n")
	case res.DryRun:
		b.WriteString("the configuration file is valid; a reload would:\n")
	case len(res.Changes) == 0:
		b.WriteString("reloaded: no changes\n")
	default:
		b.WriteString("reloaded:\n")
	}
	for _, c := range res.Changes {
		var line string
		switch {
		case c.Proxy == "":
			line = fmt.Sprintf("  ~ %s changed", strings.Join(c.Keys, ", "))
		case c.Action == "add":
			line = fmt.Sprintf("  + add proxy %s on %s", c.Proxy, c.Listen)
		case c.Action == "remove":
			line = fmt.Sprintf("  - remove proxy %s on %s", c.Proxy, c.Listen)
		default:
			line = fmt.Sprintf("  ~ change proxy %s: %s", c.Proxy, strings.Join(c.Keys, ", "))
		}
		if c.Proxy != "" && c.Action != "add" {
			line += fmt.Sprintf(" (cuts %s)", connections(c.ConnectionsAffected))
		}
		b.WriteString(line + "\n")
	}
	if len(res.Changes) > 0 {
		fmt.Fprintf(&b, "live connections cut: %d (a listener that stops lets its connections run for the grace period, then cuts those still open)\n",
			res.ConnectionsAffected)
	}
	for _, w := range res.Warnings {
		b.WriteString("warning: " + w + "\n")
	}
	return b.String()
}

func connections(n int64) string {
	if n == 1 {
		return "1 live connection"
	}
	return fmt.Sprintf("%d live connections", n)
}

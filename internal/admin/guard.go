package admin

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/pj-proxy/pj/internal/observe"
)

// The admin listener answers browsers as well as curl and Prometheus, and a
// browser runs pages of every site its user visits. Three guards keep those
// pages out, on every request, before any handler runs:
//
//   - The Host must be an IP address, localhost (or a name under
//     .localhost), or a name the operator listed (admin.hosts). A page
//     that rebinds its own name to 127.0.0.1 (DNS rebinding) is same-origin
//     with whatever answers there, but its requests carry its own name as
//     the Host, so they are refused. An IP address cannot be rebound.
//   - A change (any method but GET, HEAD and OPTIONS) from a browser must
//     come from the admin listener's own origin: net/http's
//     CrossOriginProtection refuses cross-site Sec-Fetch-Site and Origin
//     headers. Clients that send neither (curl, scripts) are not browsers.
//   - Nothing may be framed (frame-ancestors 'none', X-Frame-Options), so
//     a click meant for another page never presses the status page's
//     buttons.

// hostGuard knows the names requests may give as their Host.
type hostGuard struct {
	names   map[string]bool // lower case, no trailing dot
	log     *slog.Logger
	refused observe.Sometimes // a refusal is logged at most once a minute
}

func newHostGuard(names []string, log *slog.Logger) *hostGuard {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &hostGuard{names: map[string]bool{}, log: log, refused: observe.Sometimes{Every: time.Minute}}
	for _, n := range names {
		if n = canonicalHost(n); n != "" {
			g.names[n] = true
		}
	}
	return g
}

// allowed reports whether a request for hostport may be answered.
func (g *hostGuard) allowed(hostport string) bool {
	if hostport == "" {
		return true // HTTP/1.0 without a Host: not a browser
	}
	host := canonicalHost(hostOf(hostport))
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return host == "localhost" || strings.HasSuffix(host, ".localhost") || g.names[host]
}

// hostOf strips the port from a Host header: "[::1]:9090" is "::1",
// "example:9090" is "example".
func hostOf(hostport string) string {
	if strings.HasPrefix(hostport, "[") {
		if i := strings.IndexByte(hostport, ']'); i > 0 {
			return hostport[1:i]
		}
		return hostport
	}
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && strings.Count(hostport, ":") == 1 {
		return hostport[:i]
	}
	return hostport
}

// canonicalHost is a host name as compared: lower case, without the
// trailing dot of a fully qualified name.
func canonicalHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
}

// guard wraps next with the guards above and the headers every answer
// carries.
func guard(next http.Handler, hosts *hostGuard) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hdr := w.Header()
		hdr.Set("X-Frame-Options", "DENY")
		hdr.Set("X-Content-Type-Options", "nosniff")
		hdr.Set("Content-Security-Policy", "frame-ancestors 'none'")
		hdr.Set("Referrer-Policy", "no-referrer")
		if !hosts.allowed(r.Host) {
			if ok, suppressed := hosts.refused.Allow(time.Now()); ok {
				hosts.log.Warn("admin listener: refused a request for a name it does not know (a guard against DNS rebinding); list the name in admin.hosts if it is this listener's",
					"host", shorten(r.Host, 100), "from", r.RemoteAddr, "suppressed", suppressed)
			}
			writeError(w, http.StatusForbidden, fmt.Sprintf(
				"Host %q is not a name of this admin listener: use its IP address or localhost, or list the name in admin.hosts (unknown names are refused to guard against DNS rebinding)",
				shorten(r.Host, 100)))
			return
		}
		if err := cop.Check(r); err != nil {
			writeError(w, http.StatusForbidden,
				"a change sent by a web page of another origin is refused: make it from the status page itself, or from a client that sends no Origin header (curl)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// shorten cuts s to at most max bytes, marking the cut.
func shorten(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

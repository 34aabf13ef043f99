// Package observe turns what happens to connections into log lines (and,
// later, metrics): the access-log record, the slog handlers and the
// process-wide counters.
package observe

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// Status says how a connection ended; it is the [status] of the log line.
type Status string

// Connection statuses.
const (
	StatusOK            Status = "ok"             // both directions ended
	StatusConnectFailed Status = "connect_failed" // no backend could be reached
	StatusNoBackend     Status = "no_backend"     // none was eligible
	StatusTimeout       Status = "timeout"        // closed by the idle timeout
	StatusReset         Status = "reset"          // a side reset the connection
	StatusDenied        Status = "denied"         // refused by an ACL
	StatusRateLimited   Status = "rate_limited"   // over the per-client rate
	StatusLimit         Status = "limit"          // over a connection cap
	StatusKilled        Status = "killed"         // closed through the admin API
	StatusShutdown      Status = "shutdown"       // cut when the grace period ran out
	StatusNoRoute       Status = "no_route"       // no route of the proxy took it
	StatusTLSFailed     Status = "tls_failed"     // the client's TLS handshake failed
	StatusError         Status = "error"          // pj itself failed (a recovered panic)
)

// ConnInfo describes one open connection (or UDP session), for the admin
// API.
type ConnInfo struct {
	ID       uint64
	Proxy    string
	Client   netip.AddrPort
	Listener string
	Route    string // of a proxy with routes, once decided
	Backend  string // "" while no backend has answered
	Started  time.Time
	Up, Down int64 // bytes delivered so far
	// TLS is the TLS version pj negotiated with the client, once it
	// has; SNI the server name of the client's hello, once read.
	TLS, SNI string
}

// ConnMessage is the slog message of every connection record; handlers use it
// to recognise records to render in the access-log layout.
const ConnMessage = "connection"

// Conn is what is known about one finished connection.
type Conn struct {
	ID     uint64
	Proxy  string
	Client string // as text; if empty, ClientAddr is formatted
	// ClientAddr is the client's address, formatted only when a line is
	// written (no string is made for a line the level hides).
	ClientAddr netip.AddrPort
	Listener   string
	Backend    string // "" when none was chosen
	Accepted   time.Time
	Duration   time.Duration
	Up         int64 // bytes client → backend
	Down       int64 // bytes backend → client
	Status     Status
	// Connect is the time from accept until a backend answered; zero
	// when none did.
	Connect time.Duration
	// ClosedBy says which side ended the connection first: "client",
	// "backend" or "pj" (timeouts, shutdown, admin, failures).
	ClosedBy string
	// Relay names the data path used ("splice", "copy"); empty if none ran.
	Relay string
	// Route is the route of a proxy with routes that took the connection;
	// empty for a proxy without routes, and when no route took it.
	Route string
	// TLS is the TLS version pj negotiated with the client ("1.3"); empty
	// when pj did not terminate TLS, or the handshake failed before a
	// version was agreed.
	TLS string
	// SNI is the server name the client asked for in its TLS hello.
	SNI string
	// Err is what ended the connection early, if anything; logged as a field.
	Err error
	// Datagrams marks a UDP session: its line gains datagrams_up= and
	// datagrams_down=, the datagrams relayed each way.
	Datagrams                  bool
	DatagramsUp, DatagramsDown int64
}

// Log writes c as one record at info level, timestamped with the moment the
// connection was accepted.
func Log(ctx context.Context, l *slog.Logger, c *Conn) {
	h := l.Handler()
	if !h.Enabled(ctx, slog.LevelInfo) {
		return
	}
	debug := h.Enabled(ctx, slog.LevelDebug)
	inner := h
	if sw, ok := h.(*Swappable); ok {
		inner = sw.load()
	}
	if th, ok := inner.(*TextHandler); ok && th.group == "" {
		// The text access log is pj's most written line: it is formatted
		// straight from c, by the appendConn that Handle uses for
		// connRecord, without building the record.
		_ = th.writeConn(c, debug) // a log write that fails has nowhere better to be reported
		return
	}
	_ = h.Handle(ctx, connRecord(c, debug)) // likewise
}

// connRecord is the slog record of a connection.
func connRecord(c *Conn, debug bool) slog.Record {
	client := c.Client
	if client == "" {
		client = c.ClientAddr.String()
	}
	backend := c.Backend
	if backend == "" {
		backend = "-"
	}
	// All attributes go in with one AddAttrs: the record keeps five
	// inline and allocates once for the rest.
	var attrs [18]slog.Attr
	a := append(attrs[:0],
		slog.String(KeyClient, client),
		slog.String(KeyListener, c.Listener),
		slog.String(KeyBackend, backend),
		slog.String(KeyStatus, string(c.Status)),
		slog.Duration(KeyDuration, c.Duration),
		slog.Int64(KeyBytesUp, c.Up),
		slog.Int64(KeyBytesDown, c.Down),
		slog.String(KeyProxy, c.Proxy),
	)
	a = appendText(a, KeyRoute, c.Route)
	if c.Datagrams {
		a = append(a, slog.Int64(KeyDatagramsUp, c.DatagramsUp), slog.Int64(KeyDatagramsDown, c.DatagramsDown))
	}
	a = appendText(a, KeyTLS, c.TLS)
	a = appendText(a, KeySNI, c.SNI)
	if c.Connect > 0 {
		a = append(a, slog.Duration(KeyConnect, c.Connect))
	}
	a = appendText(a, KeyClosedBy, c.ClosedBy)
	if c.Err != nil {
		a = append(a, slog.String(KeyError, c.Err.Error()))
	}
	if debug {
		// With --log-level debug an operator can see that splice is used.
		a = appendText(a, KeyRelay, c.Relay)
	}
	r := slog.NewRecord(c.Accepted, slog.LevelInfo, ConnMessage, 0)
	r.AddAttrs(a...)
	return r
}

// appendText adds the attribute key when value is set.
func appendText(a []slog.Attr, key, value string) []slog.Attr {
	if value == "" {
		return a
	}
	return append(a, slog.String(key, value))
}

// Keys of the connection record, as JSON shows them.
const (
	KeyClient    = "client"
	KeyListener  = "listener"
	KeyBackend   = "backend"
	KeyStatus    = "status"
	KeyDuration  = "duration_ms"
	KeyBytesUp   = "bytes_up"
	KeyBytesDown = "bytes_down"
	KeyConnect   = "connect_ms" // "connect=" in text
	KeyClosedBy  = "closed_by"
	KeyProxy     = "proxy"
	KeyError     = "error"
	KeyRelay     = "relay" // at debug level only
	// Datagram counts of a UDP session ("datagrams_up=" in text too).
	KeyDatagramsUp   = "datagrams_up"
	KeyDatagramsDown = "datagrams_down"
	KeyRoute         = "route" // the route that took the connection
	KeyTLS           = "tls"   // the TLS version agreed with the client
	KeySNI           = "sni"   // the server name of the client's TLS hello
)

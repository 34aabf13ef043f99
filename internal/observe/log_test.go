package observe_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/slogtest"
	"time"

	"github.com/pj-proxy/pj/internal/observe"
)

// accepted is the moment of README.md's example access line.
var accepted = time.Date(2026, 11, 26, 0, 42, 20, 123e6, time.UTC)

const acceptedText = "2026-11-26T00:42:20.123Z"

// exampleConn is the connection of README.md's example access line.
func exampleConn() observe.Conn {
	return observe.Conn{
		ID:       7,
		Proxy:    "0.0.0.0:8787",
		Client:   "203.0.113.7:51234",
		Listener: "0.0.0.0:8787",
		Backend:  "127.0.0.1:22",
		Accepted: accepted,
		Duration: 12300 * time.Millisecond,
		Up:       1234,
		Down:     56789,
		Status:   observe.StatusOK,
	}
}

// newLogger is NewLogger writing to a buffer the test reads.
func newLogger(t *testing.T, format, level string) (*slog.Logger, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	l, err := observe.NewLogger(&buf, format, level)
	if err != nil {
		t.Fatalf("NewLogger(%q, %q): %v", format, level, err)
	}
	return l, &buf
}

func TestLogConnText(t *testing.T) {
	const prefix = "[" + acceptedText + "] 203.0.113.7:51234 -> 0.0.0.0:8787 -> "
	tests := []struct {
		name   string
		level  string // default info
		change func(c *observe.Conn)
		want   string
	}{
		{
			name: "README example",
			want: "[2026-11-26T00:42:20.123Z] 203.0.113.7:51234 -> 0.0.0.0:8787 -> 127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789\n",
		},
		{
			name: "no backend chosen",
			change: func(c *observe.Conn) {
				c.Backend, c.Status, c.Duration, c.Up, c.Down = "", observe.StatusNoBackend, 0, 0, 0
			},
			want: prefix + "- [no_backend] duration=0s up=0 down=0\n",
		},
		{
			name:   "proxy named apart from its listener",
			change: func(c *observe.Conn) { c.Proxy = "ssh" },
			want:   prefix + "127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789 proxy=ssh\n",
		},
		{
			name:   "proxy name that needs quotes",
			change: func(c *observe.Conn) { c.Proxy = "my ssh" },
			want:   prefix + `127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789 proxy="my ssh"` + "\n",
		},
		{
			name: "error is quoted",
			change: func(c *observe.Conn) {
				c.Status = observe.StatusReset
				c.Err = errors.New("read tcp 127.0.0.1:22: connection reset by peer")
			},
			want: prefix + `127.0.0.1:22 [reset] duration=12.3s up=1234 down=56789 error="read tcp 127.0.0.1:22: connection reset by peer"` + "\n",
		},
		{
			name: "error with quotes in it",
			change: func(c *observe.Conn) {
				c.Status = observe.StatusError
				c.Err = errors.New(`panic: "boom"`)
			},
			want: prefix + `127.0.0.1:22 [error] duration=12.3s up=1234 down=56789 error="panic: \"boom\""` + "\n",
		},
		{
			name: "connect failed names the last backend, proxy then error",
			change: func(c *observe.Conn) {
				c.Proxy, c.Status, c.Duration, c.Up, c.Down = "ssh", observe.StatusConnectFailed, 5*time.Second, 0, 0
				c.Err = errors.New("connect: connection refused")
			},
			want: prefix + `127.0.0.1:22 [connect_failed] duration=5s up=0 down=0 proxy=ssh error="connect: connection refused"` + "\n",
		},
		{
			name: "routed by server name: route after the proxy, sni after the counts",
			change: func(c *observe.Conn) {
				c.Proxy, c.Route, c.SNI = "edge", "app", "app.example.com"
			},
			want: prefix + "127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789 proxy=edge route=app sni=app.example.com\n",
		},
		{
			name: "no route: no backend, no route, the name read",
			change: func(c *observe.Conn) {
				c.Proxy, c.Backend, c.Status, c.Up, c.Down, c.SNI = "edge", "", observe.StatusNoRoute, 0, 0, "other.example.com"
			},
			want: prefix + "- [no_route] duration=12.3s up=0 down=0 proxy=edge sni=other.example.com\n",
		},
		{
			name: "terminated TLS: version and server name after the proxy",
			change: func(c *observe.Conn) {
				c.Proxy, c.TLS, c.SNI = "web", "1.3", "app.example.com"
			},
			want: prefix + "127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789 proxy=web tls=1.3 sni=app.example.com\n",
		},
		{
			name: "failed handshake: no backend, the reason",
			change: func(c *observe.Conn) {
				c.Backend, c.Status, c.Up, c.Down, c.SNI = "", observe.StatusTLSFailed, 0, 0, "app.example.com"
				c.Err = errors.New("tls: client offered only unsupported versions: [301]")
			},
			want: prefix + `- [tls_failed] duration=12.3s up=0 down=0 sni=app.example.com error="tls: client offered only unsupported versions: [301]"` + "\n",
		},
		{
			name: "ipv6 addresses",
			change: func(c *observe.Conn) {
				c.Client, c.Listener, c.Proxy, c.Backend = "[2001:db8::7]:51234", "[::]:8787", "[::]:8787", "[::1]:22"
			},
			want: "[" + acceptedText + "] [2001:db8::7]:51234 -> [::]:8787 -> [::1]:22 [ok] duration=12.3s up=1234 down=56789\n",
		},
		{
			name:   "accepted time is shown in UTC",
			change: func(c *observe.Conn) { c.Accepted = accepted.In(time.FixedZone("IST", 5*3600+1800)) },
			want:   prefix + "127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789\n",
		},
		{
			name:   "accepted time is cut, not rounded, to the millisecond",
			change: func(c *observe.Conn) { c.Accepted = accepted.Add(999 * time.Microsecond) },
			want:   prefix + "127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789\n",
		},
		{
			name:   "short connection",
			change: func(c *observe.Conn) { c.Duration = 523400 * time.Nanosecond },
			want:   prefix + "127.0.0.1:22 [ok] duration=523µs up=1234 down=56789\n",
		},
		{
			name:   "every status is shown as is",
			change: func(c *observe.Conn) { c.Status = observe.StatusRateLimited },
			want:   prefix + "127.0.0.1:22 [rate_limited] duration=12.3s up=1234 down=56789\n",
		},
		{
			name:   "relay mode hidden at info",
			change: func(c *observe.Conn) { c.Relay = "splice" },
			want:   prefix + "127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789\n",
		},
		{
			name:   "relay mode shown at debug",
			level:  "debug",
			change: func(c *observe.Conn) { c.Relay = "splice" },
			want:   prefix + "127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789 relay=splice\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			level := tt.level
			if level == "" {
				level = "info"
			}
			l, buf := newLogger(t, "text", level)
			c := exampleConn()
			if tt.change != nil {
				tt.change(&c)
			}
			observe.Log(context.Background(), l, &c)
			if got := buf.String(); got != tt.want {
				t.Errorf("Log wrote\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// decodeJSONLines decodes every line of out as one JSON object, keeping
// numbers as json.Number so that their text can be compared.
func decodeJSONLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	if !strings.HasSuffix(out, "\n") {
		t.Fatalf("JSON output %q does not end in a new line", out)
	}
	var objs []map[string]any
	for line := range strings.SplitSeq(strings.TrimSuffix(out, "\n"), "\n") {
		d := json.NewDecoder(strings.NewReader(line))
		d.UseNumber()
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			t.Fatalf("line %q is not a JSON object: %v", line, err)
		}
		if d.More() {
			t.Fatalf("line %q holds more than one JSON value", line)
		}
		objs = append(objs, m)
	}
	return objs
}

func TestLogConnJSON(t *testing.T) {
	base := map[string]any{
		"time":        acceptedText,
		"level":       "INFO",
		"msg":         "connection",
		"client":      "203.0.113.7:51234",
		"listener":    "0.0.0.0:8787",
		"backend":     "127.0.0.1:22",
		"status":      "ok",
		"duration_ms": json.Number("12300"),
		"bytes_up":    json.Number("1234"),
		"bytes_down":  json.Number("56789"),
		"proxy":       "0.0.0.0:8787",
	}
	tests := []struct {
		name   string
		change func(c *observe.Conn)
		want   map[string]any // overrides of base; nil values must be absent
	}{
		{name: "README example"},
		{
			name:   "fractional milliseconds",
			change: func(c *observe.Conn) { c.Duration = 523400 * time.Nanosecond },
			want:   map[string]any{"duration_ms": json.Number("0.523")},
		},
		{
			name: "accepted time in UTC with milliseconds",
			change: func(c *observe.Conn) {
				c.Accepted = accepted.In(time.FixedZone("PST", -8*3600)).Add(456 * time.Microsecond)
			},
		},
		{
			name: "proxy and error",
			change: func(c *observe.Conn) {
				c.Proxy, c.Status, c.Err = "ssh", observe.StatusConnectFailed, errors.New("connect: connection refused")
			},
			want: map[string]any{"proxy": "ssh", "status": "connect_failed", "error": "connect: connection refused"},
		},
		{
			name:   "route and sni",
			change: func(c *observe.Conn) { c.Route, c.SNI = "db", "db.example.com" },
			want:   map[string]any{"route": "db", "sni": "db.example.com"},
		},
		{
			name: "UDP session",
			change: func(c *observe.Conn) {
				c.Listener, c.Proxy = "0.0.0.0:53/udp", "0.0.0.0:53/udp"
				c.Datagrams, c.DatagramsUp, c.DatagramsDown = true, 3, 4
			},
			want: map[string]any{"listener": "0.0.0.0:53/udp", "proxy": "0.0.0.0:53/udp",
				"datagrams_up": json.Number("3"), "datagrams_down": json.Number("4")},
		},
		{
			name:   "tls and sni",
			change: func(c *observe.Conn) { c.TLS, c.SNI = "1.2", "db.example.com" },
			want:   map[string]any{"tls": "1.2", "sni": "db.example.com"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, buf := newLogger(t, "json", "info")
			c := exampleConn()
			if tt.change != nil {
				tt.change(&c)
			}
			observe.Log(context.Background(), l, &c)
			objs := decodeJSONLines(t, buf.String())
			if len(objs) != 1 {
				t.Fatalf("Log wrote %d objects, want 1: %q", len(objs), buf.String())
			}
			want := make(map[string]any, len(base))
			for k, v := range base {
				want[k] = v
			}
			for k, v := range tt.want {
				want[k] = v
			}
			if !reflect.DeepEqual(objs[0], want) {
				t.Errorf("Log wrote\n%v\nwant\n%v", objs[0], want)
			}
		})
	}
}

func TestLogJSONOneObjectPerLine(t *testing.T) {
	l, buf := newLogger(t, "json", "info")
	c := exampleConn()
	observe.Log(context.Background(), l, &c)
	c.Client = "203.0.113.8:1"
	c.Err = errors.New("two\nlines")
	observe.Log(context.Background(), l, &c)
	l.Info("listening", "addr", "0.0.0.0:8787")
	objs := decodeJSONLines(t, buf.String())
	if len(objs) != 3 {
		t.Fatalf("wrote %d lines, want 3: %q", len(objs), buf.String())
	}
	if objs[1]["client"] != "203.0.113.8:1" || objs[1]["error"] != "two\nlines" || objs[2]["msg"] != "listening" {
		t.Errorf("objects = %v", objs)
	}
}

func TestLogLevelFiltering(t *testing.T) {
	tests := []struct {
		format, level string
		wantLines     int
	}{
		{"text", "debug", 1},
		{"text", "info", 1},
		{"text", "warn", 0},
		{"text", "error", 0},
		{"json", "debug", 1},
		{"json", "info", 1},
		{"json", "warn", 0},
		{"json", "error", 0},
	}
	for _, tt := range tests {
		t.Run(tt.format+"/"+tt.level, func(t *testing.T) {
			l, buf := newLogger(t, tt.format, tt.level)
			c := exampleConn()
			observe.Log(context.Background(), l, &c)
			if got := strings.Count(buf.String(), "\n"); got != tt.wantLines {
				t.Errorf("at level %s Log wrote %d lines, want %d: %q", tt.level, got, tt.wantLines, buf.String())
			}
		})
	}
}

func TestNewLoggerLevels(t *testing.T) {
	levels := []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError}
	for _, format := range []string{"text", "json"} {
		for i, name := range []string{"debug", "info", "warn", "error"} {
			t.Run(format+"/"+name, func(t *testing.T) {
				l, buf := newLogger(t, format, name)
				for j, lv := range levels {
					if got, want := l.Enabled(context.Background(), lv), j >= i; got != want {
						t.Errorf("Enabled(%s) = %t, want %t", lv, got, want)
					}
					l.Log(context.Background(), lv, "m")
				}
				if got, want := strings.Count(buf.String(), "\n"), len(levels)-i; got != want {
					t.Errorf("wrote %d lines, want %d: %q", got, want, buf.String())
				}
			})
		}
	}
}

func TestNewLoggerErrors(t *testing.T) {
	tests := []struct {
		format, level string
		want          string
	}{
		{"xml", "info", `log format "xml": expected text or json`},
		{"", "info", `log format "": expected text or json`},
		{"TEXT", "info", `log format "TEXT": expected text or json`},
		{"text", "verbose", `log level "verbose": expected debug, info, warn or error`},
		{"json", "", `log level "": expected debug, info, warn or error`},
		{"text", "warning", `log level "warning"`},
		{"text", "trace", `log level "trace"`},
	}
	for _, tt := range tests {
		t.Run(tt.format+"/"+tt.level, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := observe.NewLogger(&buf, tt.format, tt.level)
			if err == nil {
				t.Fatalf("NewLogger(%q, %q) succeeded, want an error", tt.format, tt.level)
			}
			if l != nil {
				t.Errorf("NewLogger returned a logger with its error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// valuer resolves to another value, to check handlers call Resolve.
type valuer struct{ v string }

func (v valuer) LogValue() slog.Value { return slog.StringValue(v.v) }

// wraps are a handler's WithAttrs and WithGroup calls.
type wraps []func(slog.Handler) slog.Handler

func withAttrs(as ...slog.Attr) func(slog.Handler) slog.Handler {
	return func(h slog.Handler) slog.Handler { return h.WithAttrs(as) }
}

func withGroup(name string) func(slog.Handler) slog.Handler {
	return func(h slog.Handler) slog.Handler { return h.WithGroup(name) }
}

func TestTextHandlerRecords(t *testing.T) {
	tests := []struct {
		name  string
		wrap  wraps // applied in order
		level slog.Level
		msg   string
		attrs []slog.Attr
		want  string // the line after "[time] "
	}{
		{name: "message and key=value", msg: "message", attrs: []slog.Attr{slog.String("key", "value")}, want: "INFO message key=value"},
		{name: "no attributes", msg: "started", want: "INFO started"},
		{name: "message is not quoted", msg: "listening on 0.0.0.0:80", want: "INFO listening on 0.0.0.0:80"},
		// A message may be built from a proxy's name or a backend's
		// reply: it cannot forge a line, nor drive a terminal.
		{name: "a new line in a message is escaped", msg: "backend b of web\n[2026-01-01T00:00:00.000Z] INFO forged is down", want: `INFO backend b of web\n[2026-01-01T00:00:00.000Z] INFO forged is down`},
		{name: "a carriage return in a message is escaped", msg: "a\rb", want: `INFO a\rb`},
		{name: "an escape sequence in a message is escaped", msg: "a\x1b[31mred", want: `INFO a\x1b[31mred`},
		{name: "invalid UTF-8 in a message is escaped", msg: "a\xffb", want: `INFO a\xffb`},
		{name: "a C1 control in a message is escaped", msg: "a\u0085b", want: `INFO a\u0085b`},
		{name: "quotes and letters in a message stay", msg: `say "héllo"`, want: `INFO say "héllo"`},
		{name: "debug", level: slog.LevelDebug, msg: "m", want: "DEBUG m"},
		{name: "warn", level: slog.LevelWarn, msg: "m", want: "WARN m"},
		{name: "error", level: slog.LevelError, msg: "m", want: "ERROR m"},
		{name: "level between names", level: slog.LevelInfo + 2, msg: "m", want: "INFO+2 m"},

		{name: "value with a space", msg: "m", attrs: []slog.Attr{slog.String("k", "a b")}, want: `INFO m k="a b"`},
		{name: "value with quotes", msg: "m", attrs: []slog.Attr{slog.String("k", `say "hi"`)}, want: `INFO m k="say \"hi\""`},
		{name: "empty value", msg: "m", attrs: []slog.Attr{slog.String("k", "")}, want: `INFO m k=""`},
		{name: "value with =", msg: "m", attrs: []slog.Attr{slog.String("k", "a=b")}, want: `INFO m k="a=b"`},
		{name: "value with a new line stays on one line", msg: "m", attrs: []slog.Attr{slog.String("k", "one\ntwo")}, want: `INFO m k="one\ntwo"`},
		{name: "value with a tab", msg: "m", attrs: []slog.Attr{slog.String("k", "a\tb")}, want: `INFO m k="a\tb"`},
		{name: "value with DEL", msg: "m", attrs: []slog.Attr{slog.String("k", "a\x7f")}, want: `INFO m k="a\x7f"`},
		{name: "invalid UTF-8", msg: "m", attrs: []slog.Attr{slog.String("k", "a\xff")}, want: `INFO m k="a\xff"`},
		{name: "non-ASCII letters are not quoted", msg: "m", attrs: []slog.Attr{slog.String("k", "héllo")}, want: "INFO m k=héllo"},
		{name: "punctuation is not quoted", msg: "m", attrs: []slog.Attr{slog.String("k", "127.0.0.1:80,[::1]:80")}, want: "INFO m k=127.0.0.1:80,[::1]:80"},

		{name: "int", msg: "m", attrs: []slog.Attr{slog.Int("n", -42)}, want: "INFO m n=-42"},
		{name: "uint64", msg: "m", attrs: []slog.Attr{slog.Uint64("n", 18446744073709551615)}, want: "INFO m n=18446744073709551615"},
		{name: "float", msg: "m", attrs: []slog.Attr{slog.Float64("f", 1.5)}, want: "INFO m f=1.5"},
		{name: "bool", msg: "m", attrs: []slog.Attr{slog.Bool("b", true)}, want: "INFO m b=true"},
		{name: "duration", msg: "m", attrs: []slog.Attr{slog.Duration("d", 12345678*time.Nanosecond)}, want: "INFO m d=12.35ms"},
		{name: "time in UTC", msg: "m", attrs: []slog.Attr{slog.Time("t", accepted.In(time.FixedZone("X", 3600)))}, want: "INFO m t=" + acceptedText},
		{name: "error value", msg: "m", attrs: []slog.Attr{slog.Any("err", errors.New("dial: refused"))}, want: `INFO m err="dial: refused"`},
		{name: "LogValuer is resolved", msg: "m", attrs: []slog.Attr{slog.Any("k", valuer{"replaced"})}, want: "INFO m k=replaced"},
		{name: "empty attribute is dropped", msg: "m", attrs: []slog.Attr{slog.Int("a", 1), {}, slog.Int("b", 2)}, want: "INFO m a=1 b=2"},

		{name: "group", msg: "m", attrs: []slog.Attr{slog.Group("req", slog.String("id", "7"), slog.Int("n", 2))}, want: "INFO m req.id=7 req.n=2"},
		{name: "nested group", msg: "m", attrs: []slog.Attr{slog.Group("a", slog.Group("b", slog.Int("c", 1)))}, want: "INFO m a.b.c=1"},
		{name: "empty group is dropped", msg: "m", attrs: []slog.Attr{slog.Int("a", 1), slog.Group("g"), slog.Int("b", 2)}, want: "INFO m a=1 b=2"},
		{name: "group without a key is inlined", msg: "m", attrs: []slog.Attr{slog.Group("", slog.Int("x", 1))}, want: "INFO m x=1"},
		{name: "LogValuer in a group is resolved", msg: "m", attrs: []slog.Attr{slog.Group("g", slog.Any("k", valuer{"v"}))}, want: "INFO m g.k=v"},

		{name: "WithAttrs come first", wrap: wraps{withAttrs(slog.Int("a", 1), slog.String("s", "x y"))}, msg: "m", attrs: []slog.Attr{slog.Int("b", 2)}, want: `INFO m a=1 s="x y" b=2`},
		{name: "WithAttrs twice", wrap: wraps{withAttrs(slog.Int("a", 1)), withAttrs(slog.Int("c", 3))}, msg: "m", attrs: []slog.Attr{slog.Int("b", 2)}, want: "INFO m a=1 c=3 b=2"},
		{name: "WithAttrs resolves", wrap: wraps{withAttrs(slog.Any("k", valuer{"replaced"}))}, msg: "m", want: "INFO m k=replaced"},
		{name: "WithGroup prefixes record keys", wrap: wraps{withGroup("g")}, msg: "m", attrs: []slog.Attr{slog.String("k", "v")}, want: "INFO m g.k=v"},
		{name: "WithGroup twice", wrap: wraps{withGroup("g"), withGroup("h")}, msg: "m", attrs: []slog.Attr{slog.String("k", "v")}, want: "INFO m g.h.k=v"},
		{name: "WithGroup then group attribute", wrap: wraps{withGroup("g")}, msg: "m", attrs: []slog.Attr{slog.Group("req", slog.Int("id", 7))}, want: "INFO m g.req.id=7"},
		{name: "WithAttrs before WithGroup are not in the group", wrap: wraps{withAttrs(slog.Int("a", 1)), withGroup("g")}, msg: "m", attrs: []slog.Attr{slog.String("k", "v")}, want: "INFO m a=1 g.k=v"},
		{name: "WithAttrs after WithGroup are in the group", wrap: wraps{withGroup("g"), withAttrs(slog.Int("a", 1))}, msg: "m", attrs: []slog.Attr{slog.String("k", "v")}, want: "INFO m g.a=1 g.k=v"},
		{name: "WithGroup with an empty name does nothing", wrap: wraps{withGroup("")}, msg: "m", attrs: []slog.Attr{slog.String("k", "v")}, want: "INFO m k=v"},
		{name: "a group with nothing in it shows nothing", wrap: wraps{withAttrs(slog.Int("a", 1)), withGroup("g")}, msg: "m", want: "INFO m a=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			var h slog.Handler = observe.NewTextHandler(&buf, slog.LevelDebug)
			for _, w := range tt.wrap {
				h = w(h)
			}
			r := slog.NewRecord(accepted, tt.level, tt.msg, 0)
			r.AddAttrs(tt.attrs...)
			if err := h.Handle(context.Background(), r); err != nil {
				t.Fatalf("Handle: %v", err)
			}
			want := "[" + acceptedText + "] " + tt.want + "\n"
			if got := buf.String(); got != want {
				t.Errorf("Handle wrote\n%q\nwant\n%q", got, want)
			}
		})
	}
}

// TestNewLoggerTextIsTextHandler checks the "text" format of NewLogger is
// the handler the table above tests, through the slog.Logger API.
func TestNewLoggerTextIsTextHandler(t *testing.T) {
	l, buf := newLogger(t, "text", "info")
	if _, ok := l.Handler().(*observe.TextHandler); !ok {
		t.Fatalf("NewLogger(text) handler is %T, want *observe.TextHandler", l.Handler())
	}
	l.With("proxy", "web").WithGroup("backend").Info("down", "address", "10.0.0.1:80", "reason", "connection refused")
	line := buf.String()
	_, rest, ok := strings.Cut(line, "] ")
	if !strings.HasPrefix(line, "[") || !ok {
		t.Fatalf("line %q does not start with [time]", line)
	}
	if want := `INFO down proxy=web backend.address=10.0.0.1:80 backend.reason="connection refused"` + "\n"; rest != want {
		t.Errorf("line after the time = %q, want %q", rest, want)
	}
	// The time is now, to the millisecond, in UTC.
	ts, err := time.Parse("2006-01-02T15:04:05.000Z", line[1:strings.IndexByte(line, ']')])
	if err != nil {
		t.Fatalf("time in %q: %v", line, err)
	}
	if d := time.Since(ts); d < -time.Second || d > time.Minute {
		t.Errorf("time %s is not now", ts)
	}
}

func TestTextHandlerWithAttrsDoesNotLeak(t *testing.T) {
	var buf bytes.Buffer
	parent := observe.NewTextHandler(&buf, slog.LevelInfo).WithAttrs([]slog.Attr{slog.Int("a", 1)})
	// Two children of one parent must not see each other's attributes,
	// however the parent's buffer was grown.
	c1 := parent.WithAttrs([]slog.Attr{slog.Int("b", 2)})
	c2 := parent.WithAttrs([]slog.Attr{slog.Int("c", 3)})
	for _, h := range []slog.Handler{c1, c2, parent} {
		if err := h.Handle(context.Background(), slog.NewRecord(accepted, slog.LevelInfo, "m", 0)); err != nil {
			t.Fatal(err)
		}
	}
	want := "[" + acceptedText + "] INFO m a=1 b=2\n" +
		"[" + acceptedText + "] INFO m a=1 c=3\n" +
		"[" + acceptedText + "] INFO m a=1\n"
	if got := buf.String(); got != want {
		t.Errorf("wrote\n%s\nwant\n%s", got, want)
	}
}

// TestLogConnTextKeepsWithAttrs checks a connection line keeps the
// attributes of a logger made with With, as the JSON format does.
func TestLogConnTextKeepsWithAttrs(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			l, buf := newLogger(t, format, "info")
			c := exampleConn()
			observe.Log(context.Background(), l.With("node", "edge-1"), &c)
			line := buf.String()
			want := " node=edge-1"
			if format == "json" {
				want = `"node":"edge-1"`
			}
			if !strings.Contains(line, want) {
				t.Errorf("connection line %q lost the logger's attribute %s", line, want)
			}
			if format == "text" && !strings.HasPrefix(line, "["+acceptedText+"] 203.0.113.7:51234 -> 0.0.0.0:8787 -> 127.0.0.1:22 [ok] ") {
				t.Errorf("connection line %q is not in the access-log layout", line)
			}
		})
	}
}

// TestTextHandlerZeroTime: slog.Handler's contract says a zero Record.Time
// is to be ignored, not printed as year 1.
func TestTextHandlerZeroTime(t *testing.T) {
	var buf bytes.Buffer
	h := observe.NewTextHandler(&buf, slog.LevelInfo)
	r := slog.NewRecord(time.Time{}, slog.LevelInfo, "m", 0)
	r.AddAttrs(slog.String("k", "v"))
	if err := h.Handle(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); strings.Contains(got, "0001-01-01") || !strings.Contains(got, "INFO m k=v") {
		t.Errorf("record with a zero time wrote %q, want no time in it", got)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestTextHandlerReturnsWriteError(t *testing.T) {
	disk := errors.New("disk full")
	h := observe.NewTextHandler(failingWriter{disk}, slog.LevelInfo)
	err := h.Handle(context.Background(), slog.NewRecord(accepted, slog.LevelInfo, "m", 0))
	if !errors.Is(err, disk) {
		t.Errorf("Handle = %v, want the writer's error", err)
	}
}

// TestTextHandlerConcurrent writes from many goroutines through one handler
// and a derived one into a bytes.Buffer, which is not safe for concurrent
// use: lines must come out whole, and -race must stay quiet.
func TestTextHandlerConcurrent(t *testing.T) {
	const goroutines, each = 8, 200
	var buf bytes.Buffer
	l := slog.New(observe.NewTextHandler(&buf, slog.LevelInfo))
	child := l.With("child", true)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				lg := l
				if i%2 == 1 {
					lg = child
				}
				c := exampleConn()
				c.ID, c.Up = uint64(g), int64(i)
				observe.Log(context.Background(), lg, &c)
				lg.Info("tick", "g", g, "i", i)
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 2*goroutines*each {
		t.Fatalf("wrote %d lines, want %d", len(lines), 2*goroutines*each)
	}
	for _, line := range lines {
		if !strings.HasPrefix(line, "[") || (!strings.Contains(line, " [ok] duration=12.3s ") && !strings.Contains(line, " INFO tick ")) {
			t.Fatalf("torn line %q", line)
		}
	}
}

func TestAppendDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{1, "0s"},
		{523 * time.Microsecond, "523µs"},
		{523400 * time.Nanosecond, "523µs"},
		{523600 * time.Nanosecond, "524µs"},
		{999 * time.Microsecond, "999µs"},
		{time.Millisecond, "1ms"},
		{12345678 * time.Nanosecond, "12.35ms"},
		{999996 * time.Microsecond, "1s"},
		{time.Second, "1s"},
		{12300 * time.Millisecond, "12.3s"},
		{12345600 * time.Microsecond, "12.346s"},
		{59999600 * time.Microsecond, "1m0s"},
		{90 * time.Second, "1m30s"},
		{89500 * time.Millisecond, "1m30s"},
		{time.Hour + 2*time.Minute + 3400*time.Millisecond, "1h2m3s"},
		{-1500 * time.Nanosecond, "-2µs"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(int64(tt.d)), func(t *testing.T) {
			if got := string(observe.AppendDuration(nil, tt.d)); got != tt.want {
				t.Errorf("AppendDuration(%d) = %q, want %q", tt.d, got, tt.want)
			}
		})
	}
	if got := string(observe.AppendDuration([]byte("duration="), 90*time.Second)); got != "duration=1m30s" {
		t.Errorf("AppendDuration did not append: %q", got)
	}
}

// parseTextLine reads a TextHandler line back into the map slogtest wants:
// "[time] LEVEL msg k=v g.k="v w"" → time, level, msg, k and g: {k}; a line
// without "[time] " has no time key. It assumes messages without spaces,
// which is all slogtest logs.
func parseTextLine(line string) (map[string]any, error) {
	m := map[string]any{}
	rest, timed := strings.CutPrefix(line, "[")
	if timed {
		ts, after, ok := strings.Cut(rest, "] ")
		if !ok {
			return nil, fmt.Errorf("line %q: no end to [time]", line)
		}
		m[slog.TimeKey], rest = ts, after
	}
	var level, msg string
	level, rest, _ = strings.Cut(rest, " ")
	msg, rest, _ = strings.Cut(rest, " ")
	m[slog.LevelKey], m[slog.MessageKey] = level, msg
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			return nil, fmt.Errorf("line %q: %q is not key=value", line, rest)
		}
		var val string
		if strings.HasPrefix(after, `"`) {
			q, err := strconv.QuotedPrefix(after)
			if err != nil {
				return nil, fmt.Errorf("line %q: bad quoting in %q: %w", line, after, err)
			}
			val, _ = strconv.Unquote(q) // QuotedPrefix vouched for it
			rest = strings.TrimPrefix(after[len(q):], " ")
		} else {
			val, rest, _ = strings.Cut(after, " ")
		}
		groups := strings.Split(key, ".")
		into := m
		for _, g := range groups[:len(groups)-1] {
			sub, ok := into[g].(map[string]any)
			if !ok {
				sub = map[string]any{}
				into[g] = sub
			}
			into = sub
		}
		into[groups[len(groups)-1]] = val
	}
	return m, nil
}

func TestTextHandlerSlogtest(t *testing.T) {
	var buf *bytes.Buffer
	newHandler := func(*testing.T) slog.Handler {
		buf = new(bytes.Buffer)
		return observe.NewTextHandler(buf, slog.LevelInfo)
	}
	result := func(t *testing.T) map[string]any {
		out := buf.String()
		if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
			t.Fatalf("want one line, got %q", out)
		}
		m, err := parseTextLine(strings.TrimSuffix(out, "\n"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	slogtest.Run(t, newHandler, result)
}

func TestParseTextLine(t *testing.T) {
	got, err := parseTextLine(`[` + acceptedText + `] INFO msg a=1 G.b="x y" G.H.c=""`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"time": acceptedText, "level": "INFO", "msg": "msg", "a": "1",
		"G": map[string]any{"b": "x y", "H": map[string]any{"c": ""}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseTextLine = %v, want %v", got, want)
	}
	got, err = parseTextLine("WARN m")
	if want := map[string]any{"level": "WARN", "msg": "m"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("parseTextLine without a time = %v, %v; want %v", got, err, want)
	}
}

func TestTextLogEscapesTheFieldsItDoesNotQuote(t *testing.T) {
	// The access line's fixed fields are addresses, written as they are:
	// one that came with a control character (a name from DNS) is escaped
	// rather than allowed to break the line.
	l, buf := newLogger(t, "text", "info")
	c := exampleConn()
	c.Listener = "web\n[2026-01-01T00:00:00.000Z] INFO forged:80"
	c.Backend = "b\x1b[2J:22"
	c.Client = "c\r:1"
	observe.Log(context.Background(), l, &c)
	got := buf.String()
	if strings.Count(got, "\n") != 1 {
		t.Fatalf("the access line is not one line: %q", got)
	}
	for _, want := range []string{`web\n[2026-01-01T00:00:00.000Z] INFO forged:80`, `b\x1b[2J:22`, `c\r:1`} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
}

package observe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// NewLogger returns the logger pj writes everything through: format "text"
// (the access-log layout of README.md) or "json", records below level
// dropped.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: expected debug, info, warn or error", level)
	}
	switch format {
	case "text":
		return slog.New(NewTextHandler(w, lv)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv, ReplaceAttr: jsonAttr})), nil
	default:
		return nil, fmt.Errorf("log format %q: expected text or json", format)
	}
}

// jsonAttr writes times as RFC 3339 UTC with milliseconds and the connection
// duration as fractional milliseconds, the units README.md documents.
func jsonAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch {
	case a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime:
		return slog.String(slog.TimeKey, string(appendTime(nil, a.Value.Time())))
	case (a.Key == KeyDuration || a.Key == KeyConnect) && a.Value.Kind() == slog.KindDuration:
		return slog.Float64(a.Key, durationMillis(a.Value.Duration()))
	}
	return a
}

func durationMillis(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

// TextHandler renders records for people. A connection record becomes the
// access-log line
//
//	[2026-11-26T00:42:20.123Z] 203.0.113.7:51234 -> 0.0.0.0:8787 -> 127.0.0.1:22 [ok] duration=12.3s up=1234 down=56789
//
// and any other record "[time] LEVEL message key=value ...".
type TextHandler struct {
	level slog.Leveler
	out   *lockedWriter
	attrs []byte // pre-rendered attributes from WithAttrs
	group string // key prefix from WithGroup, ending in "."
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewTextHandler returns a TextHandler writing one line per record to w.
func NewTextHandler(w io.Writer, level slog.Leveler) *TextHandler {
	return &TextHandler{level: level, out: &lockedWriter{w: w}}
}

// Enabled reports whether records at l are written.
func (h *TextHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// WithAttrs returns a handler that adds attrs to every record.
func (h *TextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	h2 := *h
	h2.attrs = append([]byte(nil), h.attrs...)
	for _, a := range attrs {
		h2.attrs = appendAttr(h2.attrs, h.group, a)
	}
	return &h2
}

// WithGroup returns a handler that qualifies later keys with name.
func (h *TextHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.group = h.group + name + "."
	return &h2
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// Handle writes r as one line.
func (h *TextHandler) Handle(_ context.Context, r slog.Record) error {
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	if !r.Time.IsZero() {
		b = append(b, '[')
		b = appendTime(b, r.Time)
		b = append(b, "] "...)
	}
	if r.Message == ConnMessage && h.group == "" {
		c, debug, extra := connOf(r)
		b = appendConn(b, &c, debug)
		for _, a := range extra {
			b = appendAttr(b, "", a)
		}
		b = append(b, h.attrs...)
	} else {
		b = append(b, r.Level.String()...)
		b = append(b, ' ')
		b = appendEscaped(b, r.Message)
		b = append(b, h.attrs...)
		r.Attrs(func(a slog.Attr) bool {
			b = appendAttr(b, h.group, a)
			return true
		})
	}
	return h.write(bp, b)
}

// writeConn writes the access-log line of c, the same bytes Handle writes
// for the record Log would build, without building it.
func (h *TextHandler) writeConn(c *Conn, debug bool) error {
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, '[')
	b = appendTime(b, c.Accepted)
	b = append(b, "] "...)
	b = appendConn(b, c, debug)
	b = append(b, h.attrs...)
	return h.write(bp, b)
}

// write writes the line b, from the pooled buffer bp, and ends it.
func (h *TextHandler) write(bp *[]byte, b []byte) error {
	b = append(b, '\n')
	h.out.mu.Lock()
	_, err := h.out.w.Write(b)
	h.out.mu.Unlock()
	if cap(b) <= 64<<10 { // a huge record (a stack trace) is not worth keeping
		*bp = b
		bufPool.Put(bp)
	}
	return err
}

// appendConn writes the access line of c after its timestamp: the fixed
// layout, then the fields that are set, as key=value.
func appendConn(b []byte, c *Conn, debug bool) []byte {
	if c.Client != "" {
		b = appendEscaped(b, c.Client)
	} else {
		b = c.ClientAddr.AppendTo(b)
	}
	b = append(b, " -> "...)
	b = appendEscaped(b, c.Listener)
	b = append(b, " -> "...)
	if c.Backend == "" {
		b = append(b, '-')
	} else {
		b = appendEscaped(b, c.Backend)
	}
	b = append(b, " ["...)
	b = append(b, c.Status...)
	b = append(b, "] duration="...)
	b = AppendDuration(b, c.Duration)
	b = append(b, " up="...)
	b = strconv.AppendInt(b, c.Up, 10)
	b = append(b, " down="...)
	b = strconv.AppendInt(b, c.Down, 10)
	if c.Proxy != c.Listener {
		b = appendField(b, KeyProxy, c.Proxy)
	}
	b = appendField(b, KeyRoute, c.Route)
	if c.Datagrams {
		b = append(b, " datagrams_up="...)
		b = strconv.AppendInt(b, c.DatagramsUp, 10)
		b = append(b, " datagrams_down="...)
		b = strconv.AppendInt(b, c.DatagramsDown, 10)
	}
	b = appendField(b, KeyTLS, c.TLS)
	b = appendField(b, KeySNI, c.SNI)
	if c.Connect > 0 {
		b = append(b, " connect="...)
		b = AppendDuration(b, c.Connect)
	}
	b = appendField(b, KeyClosedBy, c.ClosedBy)
	if c.Err != nil {
		b = append(b, " error="...)
		b = appendString(b, c.Err.Error())
	}
	if debug {
		b = appendField(b, KeyRelay, c.Relay)
	}
	return b
}

// appendField writes " key=value" when value is set.
func appendField(b []byte, key, value string) []byte {
	if value == "" {
		return b
	}
	b = append(b, ' ')
	b = append(b, key...)
	b = append(b, '=')
	return appendString(b, value)
}

// connOf reads back the connection of a record connRecord made; debug is
// whether it was made for debug level, and extra are the attributes that
// are not a connection's.
func connOf(r slog.Record) (c Conn, debug bool, extra []slog.Attr) {
	r.Attrs(func(a slog.Attr) bool {
		switch v := a.Value; a.Key {
		case KeyClient:
			c.Client = v.String()
		case KeyListener:
			c.Listener = v.String()
		case KeyBackend:
			if c.Backend = v.String(); c.Backend == "-" {
				c.Backend = ""
			}
		case KeyStatus:
			c.Status = Status(v.String())
		case KeyDuration:
			c.Duration = v.Duration()
		case KeyBytesUp:
			c.Up = v.Int64()
		case KeyBytesDown:
			c.Down = v.Int64()
		case KeyProxy:
			c.Proxy = v.String()
		case KeyRoute:
			c.Route = v.String()
		case KeySNI:
			c.SNI = v.String()
		case KeyDatagramsUp:
			c.Datagrams, c.DatagramsUp = true, v.Int64()
		case KeyDatagramsDown:
			c.Datagrams, c.DatagramsDown = true, v.Int64()
		case KeyTLS:
			c.TLS = v.String()
		case KeyConnect:
			c.Connect = v.Duration()
		case KeyClosedBy:
			c.ClosedBy = v.String()
		case KeyError:
			c.Err = errors.New(v.String())
		case KeyRelay:
			c.Relay, debug = v.String(), true
		default:
			extra = append(extra, a)
		}
		return true
	})
	return c, debug, extra
}

// appendTime writes t as RFC 3339 in UTC with milliseconds.
func appendTime(b []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
}

// AppendDuration writes d with a precision that suits its size: 523µs,
// 12.35ms, 12.346s, 1m30s.
func AppendDuration(b []byte, d time.Duration) []byte {
	switch {
	case d < time.Millisecond:
		d = d.Round(time.Microsecond)
	case d < time.Second:
		d = d.Round(10 * time.Microsecond)
	case d < time.Minute:
		d = d.Round(time.Millisecond)
	default:
		d = d.Round(time.Second)
	}
	return append(b, d.String()...)
}

func appendAttr(b []byte, prefix string, a slog.Attr) []byte {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return b
	}
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, ga := range a.Value.Group() {
			b = appendAttr(b, prefix, ga)
		}
		return b
	}
	b = append(b, ' ')
	b = append(b, prefix...)
	b = append(b, a.Key...)
	b = append(b, '=')
	switch a.Value.Kind() {
	case slog.KindString:
		b = appendString(b, a.Value.String())
	case slog.KindDuration:
		b = AppendDuration(b, a.Value.Duration())
	case slog.KindTime:
		b = appendTime(b, a.Value.Time())
	case slog.KindInt64:
		b = strconv.AppendInt(b, a.Value.Int64(), 10)
	default:
		b = appendString(b, a.Value.String())
	}
	return b
}

// appendEscaped writes s, which is not quoted (a message, an address of
// the access line), with Go's escapes for what would break the line or
// drive a terminal: control characters (\n, \r, \x1b, \u0085) and
// invalid UTF-8 (\xff). Texts that need none, nearly all, are copied as
// they are.
func appendEscaped(b []byte, s string) []byte {
	i := 0
	for i < len(s) && s[i] >= ' ' && s[i] < utf8.RuneSelf && s[i] != 0x7f {
		i++
	}
	if i == len(s) {
		return append(b, s...)
	}
	b = append(b, s[:i]...)
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\x`...)
			b = append(b, "0123456789abcdef"[s[i]>>4], "0123456789abcdef"[s[i]&15])
		case unicode.IsControl(r):
			q := strconv.QuoteRune(r) // '\n', '\x1b', '\u0085'
			b = append(b, q[1:len(q)-1]...)
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}

// appendString quotes s when it would not read back as one value.
func appendString(b []byte, s string) []byte {
	if needsQuote(s) {
		return strconv.AppendQuote(b, s)
	}
	return append(b, s...)
}

func needsQuote(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c <= ' ' || c == '"' || c == '=' || c == 0x7f {
				return true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError {
			return true
		}
		i += size
	}
	return false
}

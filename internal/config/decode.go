package config

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A configuration file is decoded from the tree of tree.go with the keys
// declared in settings.go. Every key is known: an unknown key, a value of
// the wrong type or a bad value becomes a problem naming the line and the
// key path, and decoding goes on, so that every problem of a file is
// reported at once.

// problem is one thing wrong with a file.
type problem struct {
	line int      // 0 when unknown
	path string   // the key path, e.g. proxies[1].connect_timeout; "" for the file
	ref  *pathRef // the key path when path is not spelled out yet
	msg  string
}

// format writes the problem as FILE:LINE: PATH: MESSAGE, at most
// maxProblemText bytes of it.
func (p problem) format(file string) string {
	loc := file
	if p.line > 0 {
		loc += ":" + strconv.Itoa(p.line)
	}
	path := p.path
	if path == "" && p.ref != nil {
		path = p.ref.String()
	}
	if path == "" {
		return shorten(escapeControls(loc+": "+p.msg), maxProblemText)
	}
	return shorten(escapeControls(loc+": "+path+": "+p.msg), maxProblemText)
}

// joinPath names key inside parent: defaults.health_check. A key that is
// not a plain name (only a typo can make one) is quoted.
func joinPath(parent, key string) string {
	key = shorten(key, maxKeyText)
	plain := key != ""
	for _, r := range key {
		if !(r == '_' || r == '-' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')) {
			plain = false
			break
		}
	}
	switch {
	case !plain:
		return parent + "[" + strconv.Quote(key) + "]"
	case parent == "":
		return key
	}
	return parent + "." + key
}

// indexPath names item i (from 0) of the list parent: proxies[0].
func indexPath(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

// fileProxy is a proxy as the file wrote it, before inheritance.
type fileProxy struct {
	line     int
	own      patch[Proxy]    // name, listen, backends
	settings patch[Settings] // the settings it sets itself
	routes   []fileRoute
}

// decoded is what decoding a file yields, ready to be resolved into a
// Config.
type decoded struct {
	top      patch[Config]
	defaults patch[Settings]
	proxies  []fileProxy
}

type decoder struct {
	lookupEnv func(string) (string, bool)
	problems  problems
	ignored   []ignoredAt     // the retired keys read, in order
	retired   map[string]bool // the names of retired keys: accepted, never offered
}

// ignoredAt is a retired key read from a file, and its line.
type ignoredAt struct {
	key  string
	line int
}

func (d *decoder) problemf(line int, path, format string, args ...any) {
	if d.problems.full(line) {
		d.problems.more++
		return
	}
	d.problems.add(problem{line: line, path: path, msg: fmt.Sprintf(format, shortArgs(args)...)})
}

// shortArgs shortens the texts a message repeats from the file: values,
// and errors that quote them.
func shortArgs(args []any) []any {
	for i, a := range args {
		switch v := a.(type) {
		case string:
			args[i] = shorten(v, maxArgText)
		case error:
			if len(v.Error()) > maxArgText {
				args[i] = shorten(v.Error(), maxArgText)
			}
		}
	}
	return args
}

// handlers decode the keys of one kind of object; each gets the value and
// its key path.
type handlers map[string]func(v *node, path string)

// object decodes the keys of n with their handlers and reports the others.
// hint, if not nil, explains a key that belongs somewhere else.
func (d *decoder) object(n *node, path string, hs handlers, hint func(key string) string) bool {
	if n.kind != kindMap {
		d.typeError(n, path, "an object")
		return false
	}
	for i := range n.fields {
		f := &n.fields[i]
		fpath := joinPath(path, f.key)
		if h, ok := hs[f.key]; ok {
			h(f.value, fpath)
			continue
		}
		d.unknownKey(f, fpath, hs, hint)
	}
	return true
}

func (d *decoder) unknownKey(f *field, path string, hs handlers, hint func(string) string) {
	if d.problems.full(f.line) {
		d.problems.more++ // past the problems reported: no need to say more
		return
	}
	if hint != nil {
		if h := hint(f.key); h != "" {
			d.problemf(f.line, path, "unknown key (%s)", h)
			return
		}
	}
	valid := make([]string, 0, len(hs))
	for k := range hs {
		if !d.retired[k] {
			valid = append(valid, k)
		}
	}
	if s := suggest(f.key, valid); s != "" {
		d.problemf(f.line, path, "unknown key (did you mean %s?)", s)
		return
	}
	sort.Strings(valid)
	d.problemf(f.line, path, "unknown key (valid here: %s)", keyList(valid))
}

// keyList is pj's own list of keys in a message: not shortened as the
// file's values are (a Stringer, not a string, to shortArgs).
type keyList []string

func (l keyList) String() string { return strings.Join(l, ", ") }

func (d *decoder) typeError(n *node, path, want string) {
	d.problemf(n.line, path, "expected %s, got %s", want, n.kind)
}

// text reads a string value, with ${VAR} expanded. expanded says whether
// a variable was used, for the typed readers: "${MAX_CONNS}" may stand for
// a number.
func (d *decoder) text(n *node, path, want string) (s string, expanded, ok bool) {
	if n.kind != kindString {
		d.typeError(n, path, want)
		return "", false, false
	}
	s, expanded, err := expand(n.text, d.lookupEnv)
	if err != nil {
		d.problemf(n.line, path, "%v", err)
		return "", false, false
	}
	return s, expanded, true
}

func (d *decoder) str(n *node, path string) (string, bool) {
	s, _, ok := d.text(n, path, "a string")
	return s, ok
}

// scalar reads the text of a number or boolean; a string is accepted only
// when it came from a ${VAR}, because environment variables are strings.
func (d *decoder) scalar(n *node, path string, k kind, want string) (string, bool) {
	switch {
	case n.kind == k:
		return n.text, true
	case n.kind == kindString:
		s, expanded, ok := d.text(n, path, want)
		if !ok {
			return "", false
		}
		if !expanded {
			hint := ""
			if _, err := strconv.ParseFloat(s, 64); err == nil || s == "true" || s == "false" {
				hint = " (write it without quotes)"
			}
			d.problemf(n.line, path, "expected %s, got a string%s", want, hint)
			return "", false
		}
		return strings.TrimSpace(s), true
	}
	d.typeError(n, path, want)
	return "", false
}

// integer reads a whole number that fits an int32.
func (d *decoder) integer(n *node, path string) (int, bool) {
	if n.kind == kindFloat {
		d.problemf(n.line, path, "expected a whole number, got %s", n.text)
		return 0, false
	}
	s, ok := d.scalar(n, path, kindInt, "a whole number")
	if !ok {
		return 0, false
	}
	v, err := parseInt(s)
	switch {
	case err != nil:
		d.problemf(n.line, path, "%v", err)
		return 0, false
	case v < -1<<31 || v > 1<<31-1:
		d.problemf(n.line, path, "%d is too large", v)
		return 0, false
	}
	return int(v), true
}

// number reads a number that may have a fraction.
func (d *decoder) number(n *node, path string) (float64, bool) {
	k := n.kind
	if k != kindInt && k != kindFloat {
		k = kindFloat
	}
	s, ok := d.scalar(n, path, k, "a number")
	if !ok {
		return 0, false
	}
	f, err := parseFloat(s)
	if err != nil {
		d.problemf(n.line, path, "%v", err)
		return 0, false
	}
	return f, true
}

func (d *decoder) boolean(n *node, path string) (bool, bool) {
	s, ok := d.scalar(n, path, kindBool, "true or false")
	if !ok {
		return false, false
	}
	switch s {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	d.problemf(n.line, path, "%q is not true or false", s)
	return false, false
}

func (d *decoder) duration(n *node, path string) (time.Duration, bool) {
	const want = `a duration string such as "5s"`
	if n.kind != kindString {
		d.typeError(n, path, want)
		return 0, false
	}
	s, _, ok := d.text(n, path, want)
	if !ok {
		return 0, false
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		d.problemf(n.line, path, "%q is not a duration (write e.g. 500ms, 5s, 1m30s)", s)
		return 0, false
	}
	return v, true
}

// strAs reads a string and turns it into the value kept with as, which
// says why it refuses one ("" when it does not).
func (d *decoder) strAs(n *node, path string, as func(s string) (v, why string)) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	v, why := as(s)
	if why != "" {
		d.problemf(n.line, path, "%s", why)
		return "", false
	}
	return v, true
}

// enum reads one of values; what names the kind of value in messages.
func (d *decoder) enum(n *node, path, what string, values []string, foldCase bool) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	for _, v := range values {
		if s == v || (foldCase && strings.EqualFold(s, v)) {
			return v, true
		}
	}
	if sug := suggest(s, values); sug != "" {
		d.problemf(n.line, path, "%q is not a %s (did you mean %s?)", s, what, sug)
	} else {
		d.problemf(n.line, path, "%q is not a %s; expected %s", s, what, orList(values))
	}
	return "", false
}

// orList writes "a, b or c".
func orList(values []string) string {
	if len(values) < 2 {
		return strings.Join(values, "")
	}
	return strings.Join(values[:len(values)-1], ", ") + " or " + values[len(values)-1]
}

func (d *decoder) size(n *node, path string) (int64, bool) {
	const want = `a size such as "10MiB" or a whole number of bytes`
	var (
		v   int64
		err error
	)
	switch n.kind {
	case kindInt:
		v, err = parseInt(n.text)
	case kindString:
		s, _, ok := d.text(n, path, want)
		if !ok {
			return 0, false
		}
		v, err = parseSize(s)
	default:
		d.typeError(n, path, want)
		return 0, false
	}
	if err != nil {
		d.problemf(n.line, path, "%v", err)
		return 0, false
	}
	return v, true
}

func (d *decoder) prefixes(n *node, path string) ([]netip.Prefix, bool) {
	return readList(d, n, path, `a list of address ranges such as ["10.0.0.0/8"]`, parsePrefix)
}

// readList reads a list of strings, each made a T by parse, whose error
// completes "KEY[i]: ". want says what the list is, for a value that is
// not one.
func readList[T any](d *decoder, n *node, path, want string, parse func(string) (T, error)) ([]T, bool) {
	if n.kind != kindList {
		d.typeError(n, path, want)
		return nil, false
	}
	out := make([]T, 0, len(n.items))
	ok := true
	for i, item := range n.items {
		ipath := indexPath(path, i)
		s, sok := d.str(item, ipath)
		if !sok {
			ok = false
			continue
		}
		v, err := parse(s)
		if err != nil {
			d.problemf(item.line, ipath, "%v", err)
			ok = false
			continue
		}
		out = append(out, v)
	}
	return out, ok
}

// address reads HOST:PORT. A listen address may have an empty host (every
// interface) and port 0 (ephemeral); a backend needs both.
// srvOK admits an SRV name (backends only).
func (d *decoder) address(n *node, path string, listen, srvOK bool) (string, bool) {
	return d.strAs(n, path, func(s string) (string, string) {
		example := "10.0.0.1:80"
		if listen {
			example = "0.0.0.0:8080"
		}
		if srvOK && IsSRV(s) {
			return s, "" // an SRV name: its records give the ports
		}
		if srvOK {
			example += ", or an SRV name such as _http._tcp.web.example"
		}
		host, port, err := SplitHostPort(s)
		switch {
		case err != nil:
			return "", fmt.Sprintf("%s (expected HOST:PORT, e.g. %s)", unwrapAddress(err), example)
		case !listen && host == "":
			return "", fmt.Sprintf("%q has no host (expected HOST:PORT, e.g. %s)", s, example)
		case !listen && port == 0:
			return "", fmt.Sprintf("%q: port 0 is not a port one can connect to", s)
		}
		return JoinHostPort(host, port), ""
	})
}

// file decodes the whole file.
func (d *decoder) file(root *node) decoded {
	var out decoded
	if root.kind != kindMap {
		top := append(keyNames(topKeys), "defaults", "proxies")
		d.problemf(root.line, "", "expected an object of keys (%s) at the top of the file, got %s", strings.Join(top, ", "), root.kind)
		return out
	}
	hs := keyHandlers(d, topKeys, "", &out.top)
	hs["defaults"] = func(v *node, path string) {
		d.object(v, path, keyHandlers(d, settingKeys, "", &out.defaults), func(key string) string {
			if slices.Contains(keyNames(proxyKeys), key) {
				return key + " is set in each proxy, not in defaults"
			}
			return ""
		})
	}
	hs["proxies"] = func(v *node, path string) {
		if v.kind != kindList {
			d.typeError(v, path, "a list of proxies")
			return
		}
		for i, item := range v.items {
			if p, ok := d.proxy(item, indexPath(path, i)); ok {
				out.proxies = append(out.proxies, p)
			}
		}
	}
	d.object(root, "", hs, func(key string) string {
		switch {
		case key == "proxy":
			return "did you mean proxies?"
		case slices.Contains(keyNames(proxyKeys), key):
			return key + " belongs to a proxy, in the list under proxies"
		case slices.Contains(keyNames(settingKeys), key):
			return key + " goes under defaults (for every proxy) or in a proxy"
		}
		return ""
	})
	return out
}

// proxy decodes one item of the proxies list.
func (d *decoder) proxy(n *node, path string) (fileProxy, bool) {
	fp := fileProxy{line: n.line}
	hs := keyHandlers(d, settingKeys, "", &fp.settings)
	maps.Copy(hs, keyHandlers(d, proxyKeys, "", &fp.own))
	hs["routes"] = func(v *node, path string) { fp.routes = d.routes(v, path) }
	ok := d.object(n, path, hs, func(key string) string {
		if slices.Contains(keyNames(topKeys), key) {
			return key + " is a top-level key, not a proxy's"
		}
		if key == "address" {
			return "a proxy has a listen address and a list of backends"
		}
		return ""
	})
	if !ok {
		return fp, false
	}
	if n.get("listen") == nil {
		d.problemf(n.line, path, "listen is missing (the address to accept connections on, e.g. listen: 0.0.0.0:8080)")
	}
	switch {
	case n.get("backends") == nil && n.get("routes") == nil:
		d.problemf(n.line, path, "backends is missing (the list of HOST:PORT to relay to, or routes to choose among)")
	case n.get("backends") != nil && n.get("routes") != nil:
		d.problemf(n.line, path, "lists both backends and routes; a proxy with routes lists backends in each route")
	}
	return fp, true
}

// backends decodes a proxy's list of backends.
func (d *decoder) backends(n *node, path string) ([]Backend, bool) {
	if n.kind != kindList {
		d.typeError(n, path, "a list of backends")
		return nil, false
	}
	out := make([]Backend, 0, len(n.items))
	for i, item := range n.items {
		if b, ok := d.backend(item, indexPath(path, i)); ok {
			out = append(out, b)
		}
	}
	return out, true
}

// backend decodes one backend: "HOST:PORT" or {address, weight, backup}.
func (d *decoder) backend(n *node, path string) (Backend, bool) {
	b := Backend{Weight: 1}
	switch n.kind {
	case kindString:
		addr, ok := d.address(n, path, false, true)
		b.Address = addr
		return b, ok
	case kindMap:
	default:
		d.typeError(n, path, `"HOST:PORT" or an object {address, weight, backup}`)
		return b, false
	}
	before := d.problems.count()
	var p patch[Backend]
	d.object(n, path, keyHandlers(d, backendKeys, "", &p), nil)
	if n.get("address") == nil {
		d.problemf(n.line, path, "address is missing (the backend's HOST:PORT)")
	}
	p.applyTo(&b)
	return b, d.problems.count() == before
}

// certificates decodes tls.certificates: a list of {cert, key}.
func (d *decoder) certificates(n *node, path string) ([]Certificate, bool) {
	if n.kind != kindList {
		d.typeError(n, path, "a list of certificates such as [{cert: app.pem, key: app.key}]")
		return nil, false
	}
	out := make([]Certificate, 0, len(n.items))
	ok := true
	for i, item := range n.items {
		ipath := indexPath(path, i)
		if item.kind != kindMap {
			d.typeError(item, ipath, "an object {cert, key}")
			ok = false
			continue
		}
		var c Certificate
		if !d.object(item, ipath, handlers{
			"cert": func(v *node, p string) { c.Cert, _ = d.str(v, p) },
			"key":  func(v *node, p string) { c.Key, _ = d.str(v, p) },
		}, nil) {
			ok = false
			continue
		}
		if c.Cert == "" || c.Key == "" {
			d.problemf(item.line, ipath, "a certificate needs both cert (the PEM chain) and key (its private key)")
			ok = false
			continue
		}
		out = append(out, c)
	}
	return out, ok
}

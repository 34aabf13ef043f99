package config

import (
	"reflect"
	"strings"
)

// A key of the configuration file is declared once, as a key[O, T]: where
// its value lives in an owner O (Config or Settings), how the value is
// read and which values are accepted (a value[T]), and how the command
// line, pj check and reload speak of it. Decoding, validation,
// inheritance, flags, summaries and change lists are all driven by the
// tables of declarations in settings.go; docs/DESIGN.md says how to add
// a key.

// value says how the values of a key are read from a file, which of them
// the key accepts, and how one is written in a message.
type value[T any] struct {
	// read takes the value from its node, reporting problems of type and
	// syntax. nil marks an object, whose own keys are declared apart.
	read func(d *decoder, n *node, path string) (T, bool)
	// check says why v is not accepted ("must be positive"), or "".
	check func(v T) string
	// text writes v in a message; nil leaves the value out.
	text func(v T) string
	// clone copies what v shares (a list), so that no two owners share it.
	clone func(v T) T
}

// keyInfo is what a key says about itself, whatever its type.
type keyInfo struct {
	name  string // its path in the file: "health_check.interval"
	flag  string // the command-line flag that sets it too, if any
	usage string // the flag's help
	env   string // for a key without a flag: the variable that sets it
	zero  string // what 0 means ("0 means no cap"), told with a range problem
	// listener marks a setting that acts before a route is chosen (at
	// accept, or while choosing): a route cannot set it.
	listener bool
	// only is the one transport the setting applies to (TCP or UDP), ""
	// for both; onlyWhy is said, too, to a proxy of the other that sets it.
	only, onlyWhy string
	// retired, if not "", marks a key pj accepts and ignores, and says
	// why (see retired).
	retired string
}

// label names the key in a problem of Validate, which may come from the
// command line: as the flag does ("connect timeout"), or as the file
// does ("health_check interval").
func (k *keyInfo) label() string {
	if k.flag != "" {
		return strings.ReplaceAll(k.flag, "-", " ")
	}
	return strings.ReplaceAll(k.name, ".", " ")
}

// wrongTransport is the problem of a proxy that sets the key while its
// transport is the other one.
func (k *keyInfo) wrongTransport() string {
	if k.only == UDP {
		return "applies to UDP proxies only (a listen address ending in /udp)"
	}
	msg := "applies to TCP proxies only; a UDP proxy relays datagrams as they are"
	if k.onlyWhy != "" {
		msg += " (" + k.onlyWhy + ")"
	}
	return msg
}

// parent is the path of the object the key is in, "" at the top.
func (k *keyInfo) parent() string {
	i := strings.LastIndexByte(k.name, '.')
	if i < 0 {
		return ""
	}
	return k.name[:i]
}

// setting is a key of owner O, whatever the type of its value.
type setting[O any] interface {
	info() *keyInfo
	// isObject reports whether the key holds keys rather than a value.
	isObject() bool
	// decode reads the key's node into p, with the keys inside it if it
	// is an object (of all, the table it is declared in).
	decode(d *decoder, n *node, path string, p *patch[O], all []setting[O])
	// problem says what is wrong with the key's value in o, or "".
	problem(o *O) string
	differs(a, b *O) bool
	// describe is pj check's phrase for the key's value in o, or "" when
	// the value is the built-in one or says nothing worth showing.
	describe(o, builtIn *O) string
	// copy sets the key's value in dst to that of src.
	copy(dst, src *O)
	// pointer returns where the value lives in o, as an any.
	pointer(o *O) any
}

// key is the declaration of one key.
type key[O, T any] struct {
	keyInfo
	// field returns where the value lives in an owner; nil when the
	// object holding it is absent (an optional object is a pointer).
	field func(*O) *T
	value value[T]
	// show writes the value for pj check; nil shows nothing.
	show func(v T) string
	// always shows the value even when it is the built-in one.
	always bool
	// whenSet is what writing the key in a file sets, before its value
	// (or its keys, for an object) is applied.
	whenSet func(*O)
}

// def declares a key whose value is read by v.
func def[O, T any](name string, field func(*O) *T, v value[T]) *key[O, T] {
	return &key[O, T]{keyInfo: keyInfo{name: name}, field: field, value: v}
}

// retired declares a key that pj no longer acts on: a file, a flag or a
// variable may still set it, so that a configuration written for an older
// pj loads, and each load warns (Config.Warnings) with why. Its value is
// read by v, so a value an older pj refused is refused still, and kept
// nowhere: each use of the key gets a value of its own, which no
// comparison, summary or override sees.
func retired[O, T any](name string, v value[T], why string) *key[O, T] {
	k := def(name, func(*O) *T { return new(T) }, v)
	k.retired = why
	return k
}

// object declares a key whose value is an object of keys declared after it
// ("health_check", then "health_check.interval").
func object[O, T any](name string, field func(*O) *T) *key[O, T] {
	return &key[O, T]{keyInfo: keyInfo{name: name}, field: field}
}

// optional declares an object whose presence turns a feature on: its
// value is a pointer, nil while the object is absent, which writing the
// object creates and its keys fill in.
func optional[O, T any](name string, field func(*O) **T) *key[O, *T] {
	return object(name, field).onSet(func(o *O) {
		if f := field(o); f != nil && *f == nil {
			*f = new(T)
		}
	})
}

// withFlag gives the key a command-line flag (and so a PJ_ variable).
func (k *key[O, T]) withFlag(name, usage string) *key[O, T] {
	k.flag, k.usage = name, usage
	return k
}

// withEnv gives a key without a flag a variable that sets it (a secret,
// which a flag would show in ps).
func (k *key[O, T]) withEnv(name string) *key[O, T] {
	k.env = name
	return k
}

// shown makes pj check show the value when it is not the built-in one.
func (k *key[O, T]) shown(show func(T) string) *key[O, T] {
	k.show = show
	return k
}

// alwaysShown makes pj check show the value even when it is the built-in one.
func (k *key[O, T]) alwaysShown(show func(T) string) *key[O, T] {
	k.show, k.always = show, true
	return k
}

// zeroMeans says what the value 0 does, for the message of a value out
// of range: "must not be negative (0 means no cap)".
func (k *key[O, T]) zeroMeans(what string) *key[O, T] {
	k.zero = what
	return k
}

// forListener marks a setting that acts before a route is chosen, which
// a route cannot set.
func (k *key[O, T]) forListener() *key[O, T] {
	k.listener = true
	return k
}

// onlyFor says the setting applies to proxies of one transport (TCP or
// UDP); why, if not "", says more to a proxy of the other that sets it.
func (k *key[O, T]) onlyFor(network, why string) *key[O, T] {
	k.only, k.onlyWhy = network, why
	return k
}

// rule adds a check of the whole value: for an object, a rule between its
// keys.
func (k *key[O, T]) rule(check func(T) string) *key[O, T] {
	k.value.check = check
	return k
}

// onSet declares what writing the key at all sets.
func (k *key[O, T]) onSet(f func(*O)) *key[O, T] {
	k.whenSet = f
	return k
}

func (k *key[O, T]) info() *keyInfo { return &k.keyInfo }

func (k *key[O, T]) isObject() bool { return k.value.read == nil }

func (k *key[O, T]) decode(d *decoder, n *node, path string, p *patch[O], all []setting[O]) {
	if k.whenSet != nil {
		p.set(k.name, k.whenSet)
	}
	if k.isObject() {
		d.object(n, path, keyHandlers(d, all, k.name, p), nil)
		return
	}
	v, ok := k.value.read(d, n, path)
	if !ok {
		return
	}
	if why := k.why(v); why != "" {
		if k.value.text != nil {
			why = k.value.text(v) + " " + why
		}
		d.problemf(n.line, path, "%s", why)
		return
	}
	if k.retired != "" {
		// Said once the file is read; the value itself goes nowhere.
		d.ignored = append(d.ignored, ignoredAt{key: k.name, line: n.line})
	}
	p.set(k.name, func(o *O) { k.store(o, v) })
}

func (k *key[O, T]) why(v T) string {
	if k.value.check == nil {
		return ""
	}
	why := k.value.check(v)
	if why != "" && k.zero != "" {
		why += " (" + k.zero + ")"
	}
	return why
}

func (k *key[O, T]) store(o *O, v T) {
	f := k.field(o)
	if f == nil {
		return
	}
	if k.value.clone != nil {
		v = k.value.clone(v)
	}
	*f = v
}

func (k *key[O, T]) problem(o *O) string {
	f := k.field(o)
	if f == nil {
		return ""
	}
	why := k.why(*f)
	switch {
	case why == "":
		return ""
	case k.value.text == nil:
		return k.label() + ": " + why
	}
	return k.label() + " " + k.value.text(*f) + ": " + why
}

func (k *key[O, T]) differs(a, b *O) bool {
	fa, fb := k.field(a), k.field(b)
	if fa == nil || fb == nil {
		return (fa == nil) != (fb == nil)
	}
	return !reflect.DeepEqual(*fa, *fb)
}

func (k *key[O, T]) describe(o, builtIn *O) string {
	f := k.field(o)
	if k.show == nil || f == nil || (!k.always && !k.differs(o, builtIn)) {
		return ""
	}
	return k.show(*f)
}

func (k *key[O, T]) copy(dst, src *O) {
	if f := k.field(src); f != nil {
		k.store(dst, *f)
	}
}

func (k *key[O, T]) pointer(o *O) any { return k.field(o) }

// keyHandlers returns the decoders of the keys of all directly inside the
// object at path parent ("" for the owner itself), recording into p.
func keyHandlers[O any](d *decoder, all []setting[O], parent string, p *patch[O]) handlers {
	hs := handlers{}
	for _, k := range all {
		if k.info().parent() != parent {
			continue
		}
		name := strings.TrimPrefix(k.info().name[len(parent):], ".")
		hs[name] = func(v *node, path string) { k.decode(d, v, path, p, all) }
		if k.info().retired != "" {
			d.retired[name] = true
		}
	}
	return hs
}

// infos lists what the keys of all say about themselves.
func infos[O any](all []setting[O]) []*keyInfo {
	out := make([]*keyInfo, len(all))
	for i, k := range all {
		out[i] = k.info()
	}
	return out
}

// keyNames lists the names of the keys of all directly inside the owner.
func keyNames[O any](all []setting[O]) []string {
	var out []string
	for _, k := range all {
		if k.info().parent() == "" {
			out = append(out, k.info().name)
		}
	}
	return out
}

// patch is what one object of a file (the top, defaults, or a proxy)
// sets, as functions that apply it, and the keys it wrote. Keeping the
// keys, rather than looking for zero values, is what lets a proxy set
// idle_timeout: 0s against defaults of 1m.
type patch[O any] struct {
	keys  map[string]bool // "balance", "health_check", "health_check.interval"
	apply []func(*O)
}

func (p *patch[O]) set(key string, f func(*O)) {
	if p.keys == nil {
		p.keys = map[string]bool{}
	}
	p.keys[key] = true
	p.apply = append(p.apply, f)
}

func (p *patch[O]) applyTo(o *O) {
	for _, f := range p.apply {
		f(o)
	}
}

// keyProblems checks every key of o. A value equal to that of like (the
// defaults, for a proxy) is not reported: it was reported once, there.
func keyProblems[O any](all []setting[O], o, like *O) []string {
	var out []string
	for _, k := range all {
		if msg := k.problem(o); msg != "" && (like == nil || k.differs(o, like)) {
			out = append(out, msg)
		}
	}
	return out
}

// changed names the keys directly inside the owner whose values differ
// between a and b.
func changed[O any](all []setting[O], a, b *O) []string {
	var out []string
	for _, k := range all {
		if k.info().parent() == "" && k.differs(a, b) {
			out = append(out, k.info().name)
		}
	}
	return out
}

// summary lists pj check's phrases for o, in the order of the keys.
func summary[O any](all []setting[O], o, builtIn *O) []string {
	var out []string
	for _, k := range all {
		if s := k.describe(o, builtIn); s != "" {
			out = append(out, s)
		}
	}
	return out
}

package config

import (
	"errors"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// tomlTree parses a TOML document into a tree, with go-toml's AST parser:
// it keeps the byte range of every key and value, which become lines.
// The parser checks syntax only; the rules about tables (a table defined
// twice, a key set twice, an inline table extended) are checked here.
func tomlTree(data []byte) (*node, problems, error) {
	b := tomlBuilder{data: data, lines: lineStarts(data), meta: map[*node]*tomlTable{}}
	root := b.table(1, nil)
	cur := root
	p := unstable.Parser{}
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue:
			b.keyValue(cur, e)
		case unstable.Table, unstable.ArrayTable:
			cur = b.header(root, e)
		}
		if b.tooBig != "" {
			return nil, problems{}, &syntaxError{line: b.lineOf(e.Raw), msg: b.tooBig}
		}
	}
	if err := p.Error(); err != nil {
		return nil, problems{}, b.syntaxError(err)
	}
	return root, b.problems, nil
}

// tomlTable is what TOML's rules need to know about a table.
type tomlTable struct {
	path    *pathRef
	header  bool           // defined by a [header]
	dotted  bool           // created by a dotted key (a.b = 1)
	inline  bool           // an inline table { ... }: complete as written
	implied bool           // created as the parent of a [header] or [[header]]
	array   bool           // a list made of [[header]] tables, which [[header]] extends
	fields  map[string]int // the index of each key in the table's fields
}

type tomlBuilder struct {
	data     []byte
	lines    []int
	meta     map[*node]*tomlTable
	nodes    int
	tooBig   string // why building stopped: the tree is too large or too deep
	problems problems
}

// tooDeep and tooLarge are the messages of a tree past maxDepth or
// maxNodes.
const (
	tooDeep  = "the document is nested more than 64 levels deep (keys, tables, arrays and inline tables together)"
	tooLarge = "the document is too large: more than 100000 values"
)

// count counts a new node at path, and reports whether the tree may
// still grow.
func (b *tomlBuilder) count(path *pathRef) bool {
	b.nodes++
	switch {
	case b.tooBig != "":
	case path.level() > maxDepth:
		b.tooBig = tooDeep
	case b.nodes > maxNodes:
		b.tooBig = tooLarge
	}
	return b.tooBig == ""
}

func (b *tomlBuilder) table(line int, path *pathRef) *node {
	b.count(path)
	n := &node{kind: kindMap, line: line}
	b.meta[n] = &tomlTable{path: path}
	return n
}

// get returns the field of table t with key k, or nil. A table may have
// tens of thousands of keys: they are looked up in a map, not one by one.
func (b *tomlBuilder) get(t *node, k string) *field {
	m := b.meta[t]
	if m.fields == nil {
		return t.get(k) // not indexed (yet): it has no keys
	}
	if i, ok := m.fields[k]; ok {
		return &t.fields[i]
	}
	return nil
}

// add adds a field to table t.
func (b *tomlBuilder) add(t *node, f field) {
	m := b.meta[t]
	if m.fields == nil {
		m.fields = map[string]int{}
	}
	m.fields[f.key] = len(t.fields)
	t.fields = append(t.fields, f)
}

func (b *tomlBuilder) problemf(line int, path *pathRef, format string, args ...any) {
	b.problems.addf(line, path, format, args...)
}

// keys returns the parts of a (possibly dotted) key and the line of each,
// or nil if the key has more parts than the tree may be deep.
func (b *tomlBuilder) keys(e *unstable.Node) (parts []string, lines []int) {
	it := e.Key()
	for it.Next() {
		if len(parts) == maxDepth {
			b.tooBig = tooDeep
			return nil, nil
		}
		k := it.Node()
		parts = append(parts, string(k.Data))
		lines = append(lines, b.lineOf(k.Raw))
	}
	return parts, lines
}

// header handles [a.b] and [[a.b]], returning the table that the following
// key/values go into. After a problem that is a detached table, so that the
// keys under a bad header are neither lost silently nor reported twice.
func (b *tomlBuilder) header(root *node, e *unstable.Node) *node {
	parts, lines := b.keys(e)
	if parts == nil {
		return b.table(0, nil) // too deep: tomlTree stops
	}
	line := lines[0]
	name := strings.Join(parts, ".") // as the header wrote it
	t := root
	for i, k := range parts[:len(parts)-1] {
		path := b.meta[t].path.child(k)
		f := b.get(t, k)
		if f == nil {
			sub := b.table(line, path)
			b.meta[sub].implied = true
			b.add(t, field{key: k, line: lines[i], value: sub})
			t = sub
			continue
		}
		next := b.descend(f, path, line)
		if next == nil {
			return b.table(line, nil)
		}
		t = next
	}
	k := parts[len(parts)-1]
	path := b.meta[t].path.child(k)
	f := b.get(t, k)
	if e.Kind == unstable.ArrayTable {
		if f == nil {
			b.count(path)
			list := &node{kind: kindList, line: line}
			b.meta[list] = &tomlTable{path: path, array: true}
			b.add(t, field{key: k, line: line, value: list})
			f = &t.fields[len(t.fields)-1]
		}
		if m := b.meta[f.value]; f.value.kind != kindList || m == nil || !m.array {
			b.problemf(line, path, "[[%s]] adds a table to a list, but %s is already set on line %d", name, k, f.line)
			return b.table(line, nil)
		}
		item := b.table(line, path.item(len(f.value.items)))
		b.meta[item].header = true
		f.value.items = append(f.value.items, item)
		return item
	}
	if f == nil {
		sub := b.table(line, path)
		b.meta[sub].header = true
		b.add(t, field{key: k, line: line, value: sub})
		return sub
	}
	if m := b.meta[f.value]; f.value.kind == kindMap && m != nil && m.implied && !m.header {
		m.header = true
		return f.value
	}
	b.problemf(line, path, "[%s] is defined twice (first on line %d)", name, f.line)
	return b.table(line, nil)
}

// descend steps into the table a key of a header names: a table, or the
// last table of a [[list]]. It reports and returns nil for anything else.
func (b *tomlBuilder) descend(f *field, path *pathRef, line int) *node {
	m := b.meta[f.value]
	switch {
	case m == nil:
	case f.value.kind == kindMap && !m.inline:
		return f.value
	case f.value.kind == kindList && m.array:
		return f.value.items[len(f.value.items)-1]
	}
	b.problemf(line, path, "is already set on line %d and cannot be extended by a [table] header", f.line)
	return nil
}

// keyValue adds a key/value expression (or an inline table's member) to t.
func (b *tomlBuilder) keyValue(t *node, e *unstable.Node) {
	parts, lines := b.keys(e)
	if parts == nil {
		return // too deep: tomlTree stops
	}
	for i, k := range parts[:len(parts)-1] {
		path := b.meta[t].path.child(k)
		f := b.get(t, k)
		if f == nil {
			sub := b.table(lines[i], path)
			b.meta[sub].dotted = true
			b.add(t, field{key: k, line: lines[i], value: sub})
			t = sub
			continue
		}
		if m := b.meta[f.value]; f.value.kind != kindMap || m == nil || !m.dotted {
			b.problemf(lines[i], path, "is already set on line %d and cannot be extended with a dotted key", f.line)
			return
		}
		t = f.value
	}
	k, line := parts[len(parts)-1], lines[len(lines)-1]
	path := b.meta[t].path.child(k)
	if f := b.get(t, k); f != nil {
		b.problemf(line, path, "set twice (first on line %d)", f.line)
		return
	}
	b.add(t, field{key: k, line: line, value: b.value(e.Value(), path, line)})
}

// value converts a TOML value; line is the line of its key, for the values
// (arrays) that have no position of their own. Past the tree's bounds it
// stops converting (tomlTree then gives up).
func (b *tomlBuilder) value(v *unstable.Node, path *pathRef, line int) *node {
	if v.Raw.Length > 0 {
		line = b.lineOf(v.Raw)
	}
	if v.Kind == unstable.InlineTable {
		t := b.table(line, path)
		it := v.Children()
		for it.Next() && b.tooBig == "" {
			b.keyValue(t, it.Node())
		}
		b.markInline(t)
		return t
	}
	if !b.count(path) {
		return &node{kind: kindNull, line: line}
	}
	n := &node{line: line, text: string(v.Data)}
	switch v.Kind {
	case unstable.String:
		n.kind = kindString
	case unstable.Integer:
		n.kind = kindInt
	case unstable.Float:
		n.kind = kindFloat
	case unstable.Bool:
		n.kind = kindBool
	case unstable.Array:
		n.kind, n.text = kindList, ""
		it := v.Children()
		for it.Next() && b.tooBig == "" {
			n.items = append(n.items, b.value(it.Node(), path.item(len(n.items)), line))
		}
	default: // dates and times
		n.kind = kindTime
	}
	return n
}

// markInline makes an inline table and the tables its dotted keys created
// complete: no later key or header may add to them.
func (b *tomlBuilder) markInline(t *node) {
	b.meta[t].inline = true
	b.meta[t].dotted = false
	for _, f := range t.fields {
		if m := b.meta[f.value]; m != nil && f.value.kind == kindMap {
			b.markInline(f.value)
		}
	}
}

func (b *tomlBuilder) syntaxError(err error) error {
	var perr *unstable.ParserError
	if !errors.As(err, &perr) {
		return &syntaxError{msg: err.Error()}
	}
	line := 0
	if perr.Highlight != nil {
		// The highlight is a slice of the input: its offset is how much
		// shorter its capacity is.
		if off := cap(b.data) - cap(perr.Highlight); off >= 0 && off <= len(b.data) {
			line = b.lineAt(off)
		}
	}
	return &syntaxError{line: line, msg: perr.Message}
}

func (b *tomlBuilder) lineOf(r unstable.Range) int { return b.lineAt(int(r.Offset)) }

// lineAt turns a byte offset into a 1-based line.
func (b *tomlBuilder) lineAt(off int) int {
	return sort.Search(len(b.lines), func(i int) bool { return b.lines[i] > off })
}

// lineStarts lists the offset of the first byte of every line.
func lineStarts(data []byte) []int {
	starts := []int{0}
	for i, c := range data {
		if c == '\n' {
			starts = append(starts, i+1)
		}
	}
	return starts
}

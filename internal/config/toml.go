package config

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// tomlTree parses a TOML document into a tree, with go-toml's AST parser:
// it keeps the byte range of every key and value, which become lines.
// The parser checks syntax only; the rules about tables (a table defined
// twice, a key set twice, an inline table extended) are checked here.
func tomlTree(data []byte) (root *node, problems []problem, err error) {
	defer func() {
		if v := recover(); v != nil {
			root, problems, err = nil, nil, &syntaxError{msg: fmt.Sprintf("the TOML parser failed: %v", v)}
		}
	}()
	b := tomlBuilder{data: data, lines: lineStarts(data), meta: map[*node]*tomlTable{}}
	root = b.table(1, "")
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
		if b.nodes > maxNodes {
			return nil, nil, &syntaxError{line: b.lineOf(e.Raw), msg: tooBigMessage}
		}
	}
	if err := p.Error(); err != nil {
		return nil, nil, b.syntaxError(err)
	}
	return root, b.problems, nil
}

// tomlTable is what TOML's rules need to know about a table.
type tomlTable struct {
	path    string
	header  bool // defined by a [header]
	dotted  bool // created by a dotted key (a.b = 1)
	inline  bool // an inline table { ... }: complete as written
	implied bool // created as the parent of a [header] or [[header]]
	array   bool // a list made of [[header]] tables, which [[header]] extends
}

type tomlBuilder struct {
	data     []byte
	lines    []int
	meta     map[*node]*tomlTable
	nodes    int
	problems []problem
}

func (b *tomlBuilder) table(line int, path string) *node {
	b.nodes++
	n := &node{kind: kindMap, line: line}
	b.meta[n] = &tomlTable{path: path}
	return n
}

func (b *tomlBuilder) problemf(line int, path, format string, args ...any) {
	b.problems = append(b.problems, problem{line: line, path: path, msg: fmt.Sprintf(format, args...)})
}

// keys returns the parts of a (possibly dotted) key and the line of each.
func (b *tomlBuilder) keys(e *unstable.Node) (parts []string, lines []int) {
	it := e.Key()
	for it.Next() {
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
	line := lines[0]
	name := strings.Join(parts, ".") // as the header wrote it
	t := root
	for i, k := range parts[:len(parts)-1] {
		path := b.meta[t].path
		f := t.get(k)
		if f == nil {
			sub := b.table(line, joinPath(path, k))
			b.meta[sub].implied = true
			t.fields = append(t.fields, field{key: k, line: lines[i], value: sub})
			t = sub
			continue
		}
		next := b.descend(f, joinPath(path, k), line)
		if next == nil {
			return b.table(line, "")
		}
		t = next
	}
	k := parts[len(parts)-1]
	path := joinPath(b.meta[t].path, k)
	f := t.get(k)
	if e.Kind == unstable.ArrayTable {
		if f == nil {
			list := &node{kind: kindList, line: line}
			b.meta[list] = &tomlTable{path: path, array: true}
			t.fields = append(t.fields, field{key: k, line: line, value: list})
			f = &t.fields[len(t.fields)-1]
		}
		if m := b.meta[f.value]; f.value.kind != kindList || m == nil || !m.array {
			b.problemf(line, path, "[[%s]] adds a table to a list, but %s is already set on line %d", name, k, f.line)
			return b.table(line, "")
		}
		item := b.table(line, indexPath(path, len(f.value.items)))
		b.meta[item].header = true
		f.value.items = append(f.value.items, item)
		return item
	}
	if f == nil {
		sub := b.table(line, path)
		b.meta[sub].header = true
		t.fields = append(t.fields, field{key: k, line: line, value: sub})
		return sub
	}
	if m := b.meta[f.value]; f.value.kind == kindMap && m != nil && m.implied && !m.header {
		m.header = true
		return f.value
	}
	b.problemf(line, path, "[%s] is defined twice (first on line %d)", name, f.line)
	return b.table(line, "")
}

// descend steps into the table a key of a header names: a table, or the
// last table of a [[list]]. It reports and returns nil for anything else.
func (b *tomlBuilder) descend(f *field, path string, line int) *node {
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
	for i, k := range parts[:len(parts)-1] {
		path := joinPath(b.meta[t].path, k)
		f := t.get(k)
		if f == nil {
			sub := b.table(lines[i], path)
			b.meta[sub].dotted = true
			t.fields = append(t.fields, field{key: k, line: lines[i], value: sub})
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
	path := joinPath(b.meta[t].path, k)
	if f := t.get(k); f != nil {
		b.problemf(line, path, "set twice (first on line %d)", f.line)
		return
	}
	t.fields = append(t.fields, field{key: k, line: line, value: b.value(e.Value(), path, line)})
}

// value converts a TOML value; line is the line of its key, for the values
// (arrays) that have no position of their own.
func (b *tomlBuilder) value(v *unstable.Node, path string, line int) *node {
	b.nodes++
	if v.Raw.Length > 0 {
		line = b.lineOf(v.Raw)
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
		for it.Next() {
			n.items = append(n.items, b.value(it.Node(), indexPath(path, len(n.items)), line))
		}
	case unstable.InlineTable:
		t := b.table(line, path)
		it := v.Children()
		for it.Next() {
			b.keyValue(t, it.Node())
		}
		b.markInline(t)
		return t
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

package config

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// A configuration file is first turned into a tree of nodes, whatever its
// format; the schema is then decoded from the tree once (decode.go). That
// is how YAML and TOML files give the same values and the same error
// messages, with the same line numbers: neither format's own decoder ever
// sees the schema.

// kind is the type of a node's value, as the file wrote it.
type kind uint8

const (
	kindMap kind = iota
	kindList
	kindString
	kindInt
	kindFloat
	kindBool
	kindNull // YAML's null, ~ or nothing; TOML has none
	kindTime // a date or time, which no key of the schema takes
)

// String names the kind as error messages do: "got a number".
func (k kind) String() string {
	switch k {
	case kindMap:
		return "an object"
	case kindList:
		return "a list"
	case kindString:
		return "a string"
	case kindInt, kindFloat:
		return "a number"
	case kindBool:
		return "a boolean"
	case kindNull:
		return "nothing (null)"
	case kindTime:
		return "a date"
	}
	return fmt.Sprintf("kind %d", k)
}

// node is one value of a configuration file.
type node struct {
	kind kind
	line int // 1-based line where the value is written

	// text is a scalar's value: a string unquoted and unescaped, a number
	// or a boolean as written.
	text string

	fields []field // kindMap, in file order; keys are unique
	items  []*node // kindList
}

// field is one key of an object and its value.
type field struct {
	key   string
	line  int // the line of the key
	value *node
}

// get returns the field of an object with key, or nil.
func (n *node) get(key string) *field {
	for i := range n.fields {
		if n.fields[i].key == key {
			return &n.fields[i]
		}
	}
	return nil
}

// maxNodes bounds the size of a tree, so that a small file cannot make pj
// build an enormous one (YAML aliases can repeat a subtree many times over:
// "billion laughs").
const maxNodes = 100_000

// maxDepth bounds how deeply values nest; the schema needs 5 levels.
const maxDepth = 64

// syntaxError is a problem of the file's syntax, found before any key is
// looked at. line is 0 when the parser did not say where.
type syntaxError struct {
	line int
	msg  string
}

func (e *syntaxError) Error() string { return e.msg }

// maxSeparators bounds the bytes of a file that can begin a new value —
// line ends, commas, brackets, braces, colons, dashes, equals signs and
// dots — counted before a parser sees the file. The YAML and TOML
// libraries build a syntax tree of the whole document first, at some
// hundred bytes a value: a 16 MiB file of "1,1,1,..." would cost
// gigabytes before maxNodes could refuse it. A configuration of
// thousands of proxies has a fraction of this.
const maxSeparators = 150_000

// checkSeparators refuses data with more than maxSeparators of the bytes
// in seps.
func checkSeparators(data []byte, seps string) error {
	var isSep [256]bool
	for i := 0; i < len(seps); i++ {
		isSep[seps[i]] = true
	}
	n := 0
	for _, c := range data {
		if isSep[c] {
			if n++; n > maxSeparators {
				return &syntaxError{msg: fmt.Sprintf(
					"the document is too large: more than %d lines and separators, far more than a configuration needs", maxSeparators)}
			}
		}
	}
	return nil
}

// pathRef names a value of the tree in messages: its parent and its key,
// or its index in a list. A path is spelled out only for a problem that
// is reported, so that a deep tree of long keys costs no memory per value
// (a full path string per value would cost the sum of the lengths of all
// the keys above it). nil is the top of the file.
type pathRef struct {
	parent *pathRef
	key    string
	index  int // of a list item; -1 for a key
	depth  int // 1 for a key of the top object
}

func (p *pathRef) child(key string) *pathRef {
	return &pathRef{parent: p, key: key, index: -1, depth: p.level() + 1}
}

func (p *pathRef) item(i int) *pathRef {
	return &pathRef{parent: p, index: i, depth: p.level() + 1}
}

func (p *pathRef) level() int {
	if p == nil {
		return 0
	}
	return p.depth
}

// maxPathParts bounds the parts of a path a message shows: the first
// ones and the last ones, with "…" between.
const maxPathParts = 12

// String spells the path out as joinPath and indexPath do, each key
// shortened, and a deep path cut in the middle.
func (p *pathRef) String() string {
	var parts []*pathRef
	for q := p; q != nil; q = q.parent {
		parts = append(parts, q)
	}
	s := ""
	for i := len(parts) - 1; i >= 0; i-- {
		q, nth := parts[i], len(parts)-1-i
		if len(parts) > maxPathParts && nth == maxPathParts/2 {
			s += ".…"
			i = maxPathParts / 2 // on to the last ones
			continue
		}
		if q.index >= 0 {
			s = indexPath(s, q.index)
		} else {
			s = joinPath(s, q.key)
		}
	}
	return s
}

// Texts of the file that messages repeat are shortened: a key to
// maxKeyText bytes, a value (or any text a message is built from) to
// maxArgText, a whole problem to maxProblemText.
const (
	maxKeyText     = 40
	maxArgText     = 300
	maxProblemText = 1000
)

// escapeControls writes the control characters of a message (which may
// repeat a key of the file, or a header's name, as written) with Go's
// escapes, so that a message is one line however it is printed.
func escapeControls(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r) // '\n', '\x1b', '\u0085'
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// shorten cuts s to at most max bytes (at a character boundary), saying
// how long it was.
func shorten(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:cut], len(s))
}

// problems collects what is wrong with a file, keeping what will be
// reported: the first MaxProblems by line, and a count of the others. A
// file of a million mistakes costs a count, not a million messages.
type problems struct {
	list   []problem
	more   int
	cutoff int // after a trim, the last line kept; problems past it are only counted
}

// full reports whether a problem on line would only be counted: then the
// caller need not build its message.
func (ps *problems) full(line int) bool { return ps.cutoff > 0 && line > ps.cutoff }

func (ps *problems) add(p problem) {
	if ps.full(p.line) {
		ps.more++
		return
	}
	ps.list = append(ps.list, p)
	if len(ps.list) >= 4*MaxProblems {
		ps.trim()
	}
}

// addf adds a problem of the value at ref, on line.
func (ps *problems) addf(line int, ref *pathRef, format string, args ...any) {
	if ps.full(line) {
		ps.more++
		return
	}
	ps.add(problem{line: line, ref: ref, msg: fmt.Sprintf(format, shortArgs(args)...)})
}

func (ps *problems) count() int { return len(ps.list) + ps.more }

// trim keeps the first MaxProblems by line (in the order found, for the
// same line).
func (ps *problems) trim() {
	sort.SliceStable(ps.list, func(i, j int) bool { return ps.list[i].line < ps.list[j].line })
	if len(ps.list) > MaxProblems {
		ps.more += len(ps.list) - MaxProblems
		ps.list = slices.Clip(ps.list[:MaxProblems])
		ps.cutoff = ps.list[MaxProblems-1].line
	}
}

// error reports the problems of file.
func (ps *problems) error(file string) *ValidationError {
	ps.trim()
	out := make([]string, len(ps.list))
	for i, p := range ps.list {
		out[i] = p.format(file)
	}
	return &ValidationError{Problems: out, More: ps.more}
}

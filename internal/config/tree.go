package config

import "fmt"

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

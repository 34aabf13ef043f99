package config

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// yamlTree parses a YAML document into a tree (format.tree says what it
// returns).
func yamlTree(data []byte) (*node, problems, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		return &node{kind: kindMap, line: 1}, problems{}, nil // an empty file
	case err != nil:
		return nil, problems{}, yamlSyntaxError(err, data)
	}
	var second yaml.Node
	switch err := dec.Decode(&second); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, problems{}, yamlSyntaxError(err, data)
	default:
		return nil, problems{}, &syntaxError{line: second.Line, msg: "a second YAML document (after ---): a configuration file holds one"}
	}

	c := yamlConverter{active: map[*yaml.Node]bool{}}
	top := &doc
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return &node{kind: kindMap, line: 1}, problems{}, nil
		}
		top = doc.Content[0]
	}
	root := c.convert(top, nil, 0)
	if root.kind == kindNull { // a file of comments, or "~"
		root = &node{kind: kindMap, line: root.line}
	}
	if c.tooBig != "" {
		return nil, problems{}, &syntaxError{line: top.Line, msg: c.tooBig}
	}
	return root, c.problems, nil
}

// tooLargeYAML is tooLarge, with why a small YAML file can be one.
const tooLargeYAML = tooLarge + " (YAML aliases repeat what they refer to)"

// yamlErrorLine matches the position the YAML parser puts in its messages.
var yamlErrorLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlParserProblems are the messages of the YAML parser (not of its
// scanner). For those, the library reports the line counting from 0: that
// of the construct being parsed, or of the problem when that construct
// starts on the first line (go.yaml.in/yaml/v3 decode.go, parser.fail).
var yamlParserProblems = []string{
	"did not find expected ',' or ']'", "did not find expected ',' or '}'", "did not find expected '-' indicator",
	"did not find expected <document start>", "did not find expected <stream-start>", "did not find expected key",
	"did not find expected node content", "found duplicate %TAG directive", "found duplicate %YAML directive",
	"found incompatible YAML document", "found undefined tag handle",
}

// yamlAnchorProblem matches the errors about anchors, which say no line:
// the line is found from the name.
var yamlAnchorProblem = regexp.MustCompile(`^yaml: (unknown anchor '(.*)' referenced|anchor '(.*)' value contains itself)$`)

func yamlSyntaxError(err error, data []byte) error {
	msg := err.Error()
	if m := yamlErrorLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		if slices.Contains(yamlParserProblems, m[2]) {
			line++
		}
		return &syntaxError{line: line, msg: m[2]}
	}
	if m := yamlAnchorProblem.FindStringSubmatch(msg); m != nil {
		ref := "*" + m[2]
		if m[2] == "" {
			ref = "&" + m[3]
		}
		line := 0
		if i := bytes.Index(data, []byte(ref)); i >= 0 {
			line = bytes.Count(data[:i], []byte("\n")) + 1
		}
		return &syntaxError{line: line, msg: m[1]}
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	if !strings.HasPrefix(msg, "document contains") && !strings.HasPrefix(msg, "exceeded max depth") && !strings.Contains(msg, "!!") {
		// The parser and the scanner leave the line out when it is the
		// first (line 0, counting from 0).
		return &syntaxError{line: 1, msg: msg}
	}
	return &syntaxError{msg: msg}
}

type yamlConverter struct {
	nodes    int
	tooBig   string              // why converting stopped: the tree is too large or too deep
	active   map[*yaml.Node]bool // the collections being converted: an alias to one is a cycle
	problems problems
}

// convert turns a YAML node into a tree node; path names it in messages,
// and depth counts the nodes above it, aliases and merges included.
func (c *yamlConverter) convert(y *yaml.Node, path *pathRef, depth int) *node {
	c.nodes++
	switch {
	case c.tooBig != "":
	case depth > maxDepth:
		c.tooBig = tooDeep
	case c.nodes > maxNodes:
		c.tooBig = tooLargeYAML
	}
	if c.tooBig != "" {
		return &node{kind: kindNull, line: y.Line}
	}
	switch y.Kind {
	case yaml.AliasNode:
		if y.Alias == nil {
			return &node{kind: kindNull, line: y.Line}
		}
		if c.active[y.Alias] {
			c.problems.addf(y.Line, path, "the alias *%s is inside the value it refers to", y.Value)
			return &node{kind: kindNull, line: y.Line}
		}
		n := c.convert(y.Alias, path, depth+1)
		n.line = y.Line // where the value is used, not where it was anchored
		return n
	case yaml.SequenceNode:
		c.active[y] = true
		defer delete(c.active, y)
		n := &node{kind: kindList, line: y.Line, items: make([]*node, 0, min(len(y.Content), maxNodes))}
		for i, item := range y.Content {
			if c.tooBig != "" {
				break
			}
			n.items = append(n.items, c.convert(item, path.item(i), depth+1))
		}
		return n
	case yaml.MappingNode:
		c.active[y] = true
		defer delete(c.active, y)
		return c.mapping(y, path, depth)
	case yaml.DocumentNode:
		if len(y.Content) == 0 {
			return &node{kind: kindNull, line: y.Line}
		}
		return c.convert(y.Content[0], path, depth+1)
	}
	n := &node{line: y.Line, text: y.Value}
	switch y.ShortTag() {
	case "!!int":
		n.kind = kindInt
	case "!!float":
		n.kind = kindFloat
	case "!!bool":
		n.kind = kindBool
		n.text = strings.ToLower(y.Value) // YAML also knows True and TRUE
	case "!!null":
		n.kind = kindNull
	case "!!timestamp":
		n.kind = kindTime
	default: // !!str, !!binary, and tags of the user's own
		n.kind = kindString
	}
	return n
}

// mapping converts a YAML mapping. Keys given twice are problems; "<<"
// merges other mappings in (YAML 1.1 merge keys, common with anchors):
// their keys apply where the mapping does not set its own.
func (c *yamlConverter) mapping(y *yaml.Node, path *pathRef, depth int) *node {
	n := &node{kind: kindMap, line: y.Line}
	seen := make(map[string]int, len(y.Content)/2)
	var merges []*yaml.Node
	for i := 0; i+1 < len(y.Content) && c.tooBig == ""; i += 2 {
		k, v := y.Content[i], y.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			c.problems.addf(k.Line, path, "a key must be a plain name, not %s", yamlKindName(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			c.problems.addf(k.Line, path.child(k.Value), "set twice (first on line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		n.fields = append(n.fields, field{key: k.Value, line: k.Line, value: c.convert(v, path.child(k.Value), depth+1)})
	}
	for _, m := range merges {
		sources := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			sources = m.Content
		}
		for _, src := range sources {
			merged := c.convert(src, path, depth+1)
			if merged.kind != kindMap {
				if c.tooBig == "" {
					c.problems.addf(src.Line, path.child("<<"), "expected an object (or a list of them) to merge, got %s", merged.kind)
				}
				continue
			}
			for _, f := range merged.fields {
				if _, set := seen[f.key]; !set {
					seen[f.key] = f.line
					n.fields = append(n.fields, f)
				}
			}
		}
	}
	return n
}

func yamlKindName(y *yaml.Node) string {
	switch y.Kind {
	case yaml.MappingNode:
		return "an object"
	case yaml.SequenceNode:
		return "a list"
	}
	return "a complex value"
}

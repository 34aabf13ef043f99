// Command funclen lists the functions longer than a limit in the Go files
// below the directories it is given, and exits 1 if it found any. A long
// function hides the steps it is made of: `make test` runs it on internal/.
//
//	go run ./scripts/funclen -max 80 internal
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	max := flag.Int("max", 80, "the most lines a function may have, from its func line to its closing brace")
	top := flag.Int("top", 0, "also print the `n` longest functions, however long")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "funclen: name the directories to check, e.g. internal")
		os.Exit(2)
	}
	var all []fn
	for _, dir := range flag.Args() {
		fns, err := scan(dir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "funclen: %v\n", err)
			os.Exit(2)
		}
		all = append(all, fns...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].lines > all[j].lines })
	for i := 0; i < *top && i < len(all); i++ {
		fmt.Printf("%4d %s %s\n", all[i].lines, all[i].pos, all[i].name)
	}
	long := 0
	for _, f := range all {
		if f.lines > *max {
			long++
			fmt.Fprintf(os.Stderr, "%s: %s is %d lines long (at most %d): split it into named steps\n", f.pos, f.name, f.lines, *max)
		}
	}
	if long > 0 {
		os.Exit(1)
	}
}

// fn is one function declaration and its length in lines.
type fn struct {
	name  string
	pos   token.Position
	lines int
}

// scan measures every function and method declared in the Go files below
// dir. Test files are left out: a test's table is data, not steps.
func scan(dir string) ([]fn, error) {
	fset := token.NewFileSet()
	var out []fn
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			start, end := fset.Position(fd.Pos()), fset.Position(fd.End())
			out = append(out, fn{name: funcName(fd), pos: start, lines: end.Line - start.Line + 1})
		}
		return nil
	})
	return out, err
}

// funcName is fd's name as a reader looks for it: Recv.Name for a method.
func funcName(fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	t := fd.Recv.List[0].Type
	if s, ok := t.(*ast.StarExpr); ok {
		t = s.X
	}
	switch x := t.(type) {
	case *ast.Ident:
		return x.Name + "." + fd.Name.Name
	case *ast.IndexExpr:
		if id, ok := x.X.(*ast.Ident); ok {
			return id.Name + "." + fd.Name.Name
		}
	case *ast.IndexListExpr:
		if id, ok := x.X.(*ast.Ident); ok {
			return id.Name + "." + fd.Name.Name
		}
	}
	return fd.Name.Name
}

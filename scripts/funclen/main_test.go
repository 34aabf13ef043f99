package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// body returns n statements, one a line, for a function of n+2 lines.
func body(n int) string {
	return strings.Repeat("\t_ = 0\n", n)
}

func TestScan(t *testing.T) {
	files := map[string]string{
		"a.go": "package a\n\nfunc short() {\n" + body(3) + "}\n\n" +
			"type T struct{}\n\nfunc (t *T) Method() {\n" + body(1) + "}\n\n" +
			"type G[K any, V any] struct{}\n\nfunc (g G[K, V]) Pair() {\n" + body(78) + "}\n\n" +
			"type H[K any] struct{}\n\nfunc (h *H[K]) One() {}\n\n" +
			"//go:linkname nobody runtime.nanotime\nfunc nobody() int64\n",
		"sub/b.go":      "package sub\n\nfunc long() {\n" + body(79) + "}\n",
		"sub/b_test.go": "package sub\n\nfunc longTest() {\n" + body(200) + "}\n",
		"notes.txt":     "func ignored() {}\n",
	}
	dir := t.TempDir()
	for name, text := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fns, err := scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, f := range fns {
		got[f.name] = f.lines
	}
	want := map[string]int{"short": 5, "T.Method": 3, "G.Pair": 80, "H.One": 1, "long": 81}
	for name, lines := range want {
		t.Run(name, func(t *testing.T) {
			if got[name] != lines {
				t.Errorf("%s: %d lines, want %d (all: %v)", name, got[name], lines, got)
			}
		})
	}
	if len(got) != len(want) {
		t.Errorf("scan found %v, want exactly %v: test files, files that are not Go and bodiless declarations are left out", got, want)
	}
}

func TestScanReportsAFileThatDoesNotParse(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.go"), []byte("package bad\n\nfunc {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := scan(dir); err == nil || !strings.Contains(err.Error(), "bad.go") {
		t.Fatalf("scan of a broken file: err = %v, want one naming bad.go", err)
	}
}

func TestScanReportsAMissingDirectory(t *testing.T) {
	if _, err := scan(filepath.Join(t.TempDir(), "nowhere")); err == nil {
		t.Fatal("scan of a missing directory returned no error")
	}
}

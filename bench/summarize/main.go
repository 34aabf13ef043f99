// Command summarize turns the JSON lines of bench/run.sh into one markdown
// table: for each mode, figure and target, the median over the runs, the
// spread (min–max), and the ratio of the median to direct's and to
// HAProxy's. Failed and skipped runs are shown, not dropped.
//
//	summarize [-title TEXT] [raw.jsonl]    (standard input without a file)
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "summarize: %v\n", err)
		os.Exit(1)
	}
}

// Run reads the raw lines from the file named in args, or stdin, and
// writes the table to stdout.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("summarize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	in := stdin
	name := "standard input"
	if fs.NArg() > 1 {
		return fmt.Errorf("want at most one file, got %d", fs.NArg())
	}
	if fs.NArg() == 1 {
		name = fs.Arg(0)
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	runs, err := readRuns(in)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if len(runs) == 0 {
		return fmt.Errorf("%s: no result lines", name)
	}
	return writeTable(stdout, runs)
}

package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// statLine builds a /proc/PID/stat line: 52 fields like a 6.x kernel's,
// with the given comm, ppid and times.
func statLine(pid int, comm string, ppid int, utime, stime, cutime, cstime int64) string {
	f := make([]string, 52)
	for i := range f {
		f[i] = "0"
	}
	f[0] = strconv.Itoa(pid)
	f[1] = "(" + comm + ")"
	f[2] = "S"
	f[3] = strconv.Itoa(ppid)
	f[13] = strconv.FormatInt(utime, 10)
	f[14] = strconv.FormatInt(stime, 10)
	f[15] = strconv.FormatInt(cutime, 10)
	f[16] = strconv.FormatInt(cstime, 10)
	return strings.Join(f, " ") + "\n"
}

// TestParseStat parses the lines statLine makes for awkward command
// names, and refuses malformed lines.
func TestParseStat(t *testing.T) {
	tests := []struct {
		name, comm string
		bad        bool
		line       string // with bad: the line to refuse
	}{
		{name: "plain", comm: "haproxy"},
		{name: "space", comm: "nginx: worker"},
		{name: "parentheses", comm: "(sd-pam)"},
		{name: "close paren then fields-like text", comm: "a) S 1 2 3 (b"},
		{name: "only a close paren", comm: ")"},
		{name: "empty name", comm: ""},
		{name: "empty line", bad: true, line: ""},
		{name: "no parentheses around the name", bad: true, line: "1234 pj S 1"},
		{name: "too few fields", bad: true, line: "1234 (pj) S 1 2 3"},
		{name: "a pid that is not a number", bad: true, line: "x (pj) S 1 1234 1234 0 -1 4194560 1130 0 0 0 57 31 2 3"},
		{name: "a utime that is not a number", bad: true, line: "1234 (pj) S 1 1234 1234 0 -1 4194560 1130 0 0 0 5x 31 2 3"},
		{name: "a ppid that is not a number", bad: true, line: "1234 (pj) S y 1234 1234 0 -1 4194560 1130 0 0 0 57 31 2 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.bad {
				if s, err := parseStat(tt.line); err == nil {
					t.Fatalf("parseStat(%q) = %+v, want an error", tt.line, s)
				}
				return
			}
			s, err := parseStat(statLine(4242, tt.comm, 17, 11, 22, 33, 44))
			if err != nil {
				t.Fatal(err)
			}
			want := procStat{pid: 4242, ppid: 17, comm: tt.comm, state: "S", utime: 11, stime: 22, cutime: 33, cstime: 44}
			if s != want {
				t.Errorf("got %+v, want %+v", s, want)
			}
			if s.ticks() != 110 {
				t.Errorf("ticks = %d, want 110", s.ticks())
			}
		})
	}
}

func TestParseStatRealKernelLine(t *testing.T) {
	// A line as Linux 6.1 writes it for a Go program.
	line := "1234 (pj) S 1 1234 1234 0 -1 4194560 1130 0 0 0 57 31 2 3 20 0 6 0 12345 1245184 2000 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
	s, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if s.pid != 1234 || s.ppid != 1 || s.utime != 57 || s.stime != 31 || s.cutime != 2 || s.cstime != 3 {
		t.Errorf("got %+v", s)
	}
}

// fakeProc builds a proc file system of three process trees: 100 is an
// nginx master with two workers (one named with a space and parentheses);
// 200 is socat with a child and a grandchild; 300 is an unrelated process
// whose child 301 must never count. Each has a stat line, entries under
// fd/ and an smaps_rollup.
func fakeProc(t *testing.T) procFS {
	t.Helper()
	procs := []struct {
		pid  int
		stat string
		fds  int
		pss  int64
	}{
		{1, statLine(1, "init", 0, 1000, 1000, 0, 0), 3, 10},
		{100, statLine(100, "nginx", 1, 5, 5, 7, 3), 7, 1000},
		{101, statLine(101, "nginx: worker (a)", 100, 40, 60, 0, 0), 9, 234},
		{102, statLine(102, ") S 100 (", 100, 1, 2, 0, 0), 2, 66},
		{200, statLine(200, "socat", 1, 10, 0, 50, 50), 5, 500},
		{201, statLine(201, "socat", 200, 3, 3, 1, 1), 5, 50},
		{202, statLine(202, "socat", 201, 2, 2, 0, 0), 5, 50},
		{300, statLine(300, "other", 1, 500, 500, 0, 0), 100, 99999},
		{301, statLine(301, "other", 300, 500, 500, 0, 0), 100, 99999},
	}
	root := t.TempDir()
	for _, p := range procs {
		dir := filepath.Join(root, strconv.Itoa(p.pid))
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(p.stat), 0o644); err != nil {
			t.Fatal(err)
		}
		for i := range p.fds {
			if err := os.WriteFile(filepath.Join(dir, "fd", strconv.Itoa(i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		rollup := "00400000-7ffd000 ---p 00000000 00:00 0 [rollup]\nRss:  9999 kB\nPss:  " +
			strconv.FormatInt(p.pss, 10) + " kB\nPss_Anon: 1 kB\n"
		if err := os.WriteFile(filepath.Join(dir, "smaps_rollup"), []byte(rollup), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Entries that are not processes are ignored.
	if err := os.WriteFile(filepath.Join(root, "uptime"), []byte("1 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return procFS{root: root}
}

func TestTreeTicks(t *testing.T) {
	all, err := fakeProc(t).readAll()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		roots []int
		want  int64
	}{
		{"nginx master and workers", []int{100}, 5 + 5 + 7 + 3 + 40 + 60 + 1 + 2},
		{"socat, reaped and live children", []int{200}, 10 + 50 + 50 + 3 + 3 + 1 + 1 + 2 + 2},
		{"two roots", []int{100, 200}, 123 + 122},
		{"a root given twice counts once", []int{200, 200}, 122},
		{"a child given as a root counts once", []int{200, 201}, 122},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := treeTicks(all, tt.roots)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("treeTicks(%v) = %d, want %d", tt.roots, got, tt.want)
			}
		})
	}
	if _, err := treeTicks(all, []int{999}); err == nil || !strings.Contains(err.Error(), "999") {
		t.Errorf("a missing root: err = %v, want one naming 999", err)
	}
}

// TestTreeTicksChildReaped checks the accounting across a child's death:
// what the child used before it was reaped is not lost and not counted
// twice once its parent has added it to cutime/cstime.
func TestTreeTicksChildReaped(t *testing.T) {
	before := map[int]procStat{
		1:  {pid: 1},
		10: {pid: 10, ppid: 1, utime: 5, cutime: 100},
		11: {pid: 11, ppid: 10, utime: 30, stime: 10, cutime: 4},
	}
	// Child 11 used 20 more ticks, exited and was reaped: the kernel
	// added its utime+stime+cutime+cstime (30+20+10+4) to 10's cutime.
	after := map[int]procStat{
		1:  {pid: 1},
		10: {pid: 10, ppid: 1, utime: 6, cutime: 100 + 64},
	}
	b, err := treeTicks(before, []int{10})
	if err != nil {
		t.Fatal(err)
	}
	a, err := treeTicks(after, []int{10})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a-b, int64(1+20); got != want {
		t.Errorf("CPU used between the readings = %d ticks, want %d", got, want)
	}
}

func TestMeasure(t *testing.T) {
	p := fakeProc(t)
	tests := []struct {
		name     string
		fds, pss bool
		want     usage
	}{
		{"descriptors and memory", true, true, usage{ticks: 123, procs: 3, fds: 7 + 9 + 2, pssKiB: 1000 + 234 + 66}},
		{"CPU only", false, false, usage{ticks: 123, procs: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := p.measure([]int{100}, tt.fds, tt.pss)
			if err != nil {
				t.Fatal(err)
			}
			if u != tt.want {
				t.Errorf("measure = %+v, want %+v", u, tt.want)
			}
		})
	}
}

func TestMeasureSelf(t *testing.T) {
	p := procFS{root: "/proc"}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc here")
	}
	u, err := p.measure([]int{os.Getpid()}, true, true)
	if err != nil {
		t.Fatal(err)
	}
	if u.procs < 1 || u.fds < 3 || u.pssKiB <= 0 || u.ticks < 0 {
		t.Errorf("measure of this test process = %+v, want at least 1 process, 3 descriptors, some memory", u)
	}
	if hz := clockTicks("/proc"); hz <= 0 {
		t.Errorf("clockTicks = %d", hz)
	}
}

func TestParsePss(t *testing.T) {
	got, err := parsePss(strings.NewReader("5560bd3e9000-7ffe ---p 00000000 00:00 0 [rollup]\nRss:   8200 kB\nPss:   4321 kB\n"), 1)
	if err != nil || got != 4321 {
		t.Errorf("parsePss = %d, %v; want 4321", got, err)
	}
	for _, text := range []string{"Rss: 1 kB\n", "Pss: x kB\n", "Pss: 12 MB\n", ""} {
		if _, err := parsePss(strings.NewReader(text), 1); err == nil {
			t.Errorf("parsePss(%q) succeeded, want an error", text)
		}
	}
}

func TestParseAuxv(t *testing.T) {
	var data []byte
	for _, pair := range [][2]uint64{{6, 4096}, {atClkTck, 250}, {0, 0}, {atClkTck, 1}} {
		var b [16]byte
		putNative(b[:], pair[0], pair[1])
		data = append(data, b[:]...)
	}
	if hz, ok := parseAuxv(data, atClkTck); !ok || hz != 250 {
		t.Errorf("parseAuxv = %d, %v; want 250", hz, ok)
	}
	if _, ok := parseAuxv(data, 99); ok {
		t.Error("found a key that is not there (or read past the terminator)")
	}
	if _, ok := parseAuxv(data[:20], 6); !ok {
		t.Error("did not find the first key of a truncated vector")
	}
}

func putNative(b []byte, typ, val uint64) {
	binary.NativeEndian.PutUint64(b, typ)
	binary.NativeEndian.PutUint64(b[8:], val)
}

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name      string
		text      string
		busy, irq int64
		wantErr   bool
	}{
		{"two cores", "cpu  100 5 50 9000 7 3 20 1 0 0\ncpu0 50 2 25 4500 3 1 10 0 0 0\n", 179, 23, false},
		{"no steal column", "cpu  1 2 3 4 5 6 7\n", 0, 0, true},
		{"not the cpu line", "intr 1 2 3 4 5 6 7 8 9\n", 0, 0, true},
		{"a bad number", "cpu  1 2 x 4 5 6 7 8 0 0\n", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			busy, irq, err := parseProcStat(tt.text)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if !tt.wantErr && (busy != tt.busy || irq != tt.irq) {
				t.Fatalf("busy, irq = %d, %d; want %d, %d", busy, irq, tt.busy, tt.irq)
			}
		})
	}
}

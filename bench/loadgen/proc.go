package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// procStat is the part of /proc/PID/stat the benchmark needs. The times are
// in clock ticks (USER_HZ); see proc(5).
type procStat struct {
	pid, ppid int
	comm      string
	state     string // R, S, D, Z (zombie: exited, not yet reaped), ...
	// utime and stime are the process's own CPU time, all threads
	// together; cutime and cstime that of the children it has reaped
	// (waited for), including what those had reaped in turn.
	utime, stime, cutime, cstime int64
}

// ticks is the CPU time the process and its reaped descendants have used.
func (s procStat) ticks() int64 { return s.utime + s.stime + s.cutime + s.cstime }

// parseStat parses the text of /proc/PID/stat. The command name (field 2)
// is in parentheses and may itself hold spaces and parentheses ("(sd-pam)",
// "a) b (c"), so the fields are counted from the last ')', which the kernel
// guarantees closes the name; splitting the whole line on spaces would shift
// every later field.
func parseStat(text string) (procStat, error) {
	open := strings.IndexByte(text, '(')
	end := strings.LastIndexByte(text, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("parse /proc stat %q: no (comm)", clip(text, 60))
	}
	var s procStat
	pid, err := strconv.Atoi(strings.TrimSpace(text[:open]))
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat %q: pid: %w", clip(text, 60), err)
	}
	s.pid = pid
	s.comm = text[open+1 : end]
	// rest[0] is field 3 (state), so field N of proc(5) is rest[N-3].
	rest := strings.Fields(text[end+1:])
	const cstimeField = 17
	if len(rest) < cstimeField-2 {
		return procStat{}, fmt.Errorf("parse /proc stat of %d: %d fields after the name, want at least %d", pid, len(rest), cstimeField-2)
	}
	fields := []struct {
		n   int
		dst *int64
	}{{14, &s.utime}, {15, &s.stime}, {16, &s.cutime}, {17, &s.cstime}}
	for _, f := range fields {
		v, err := strconv.ParseInt(rest[f.n-3], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("parse /proc stat of %d: field %d: %w", pid, f.n, err)
		}
		*f.dst = v
	}
	ppid, err := strconv.Atoi(rest[4-3])
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat of %d: ppid: %w", pid, err)
	}
	s.ppid = ppid
	s.state = rest[0]
	return s, nil
}

// procFS reads process accounting from a proc file system mounted at root
// ("/proc"; tests point it at a directory they built).
type procFS struct{ root string }

// readAll reads the stat of every process. A process that exits while the
// directory is scanned is skipped: it was not there.
func (p procFS) readAll() (map[int]procStat, error) {
	entries, err := os.ReadDir(p.root)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	all := make(map[int]procStat, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		data, err := os.ReadFile(filepath.Join(p.root, e.Name(), "stat"))
		if err != nil {
			if gone(err) {
				continue
			}
			return nil, fmt.Errorf("read stat of process %d: %w", pid, err)
		}
		s, err := parseStat(string(data))
		if err != nil {
			return nil, err
		}
		all[pid] = s
	}
	return all, nil
}

// gone reports whether err means the process vanished under our feet:
// ENOENT once it is reaped, ESRCH while it is being torn down.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

// tree returns roots and all their descendants found through the ppid links
// of all, roots first. A root that is not in all is an error: the target
// process has gone.
func tree(all map[int]procStat, roots []int) ([]int, error) {
	children := make(map[int][]int)
	for pid, s := range all {
		children[s.ppid] = append(children[s.ppid], pid)
	}
	seen := make(map[int]bool)
	var out []int
	for _, r := range roots {
		if _, ok := all[r]; !ok {
			return nil, fmt.Errorf("process %d is gone", r)
		}
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	// Breadth first; every pid is visited once, so this ends even if a
	// ppid loop were ever read from a racing /proc.
	for i := 0; i < len(out); i++ {
		for _, c := range children[out[i]] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// treeTicks is the CPU time, in clock ticks, of the process trees under
// roots: utime+stime of every live process in the trees, plus cutime+cstime
// of each. The latter holds the children a process has already reaped (socat
// reaps a child per connection): the kernel adds a child's own and reaped
// time to its parent's cutime/cstime when the parent waits for it, so adding
// them for every live member counts each dead descendant exactly once. The
// difference of two calls is then the trees' CPU use in between, as long as
// the roots live.
func treeTicks(all map[int]procStat, roots []int) (int64, error) {
	pids, err := tree(all, roots)
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, pid := range pids {
		sum += all[pid].ticks()
	}
	return sum, nil
}

// pssKiB reads the proportional set size of a process, in KiB, from
// smaps_rollup: shared pages are split among the processes that map them,
// so nginx's workers or socat's children are not charged the whole of
// their shared libraries each.
func (p procFS) pssKiB(pid int) (int64, error) {
	f, err := os.Open(filepath.Join(p.root, strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return 0, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	defer f.Close()
	return parsePss(f, pid)
}

// parsePss finds the "Pss:  123 kB" line of an smaps_rollup text.
func parsePss(r io.Reader, pid int) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "Pss:") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			return 0, fmt.Errorf("memory of process %d: malformed line %q", pid, line)
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("memory of process %d: %q: %w", pid, line, err)
		}
		return v, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("memory of process %d: %w", pid, err)
	}
	return 0, fmt.Errorf("memory of process %d: no Pss line in smaps_rollup", pid)
}

// fdCount counts the open descriptors of a process.
func (p procFS) fdCount(pid int) (int, error) {
	entries, err := os.ReadDir(filepath.Join(p.root, strconv.Itoa(pid), "fd"))
	if err != nil {
		return 0, fmt.Errorf("count descriptors of process %d: %w", pid, err)
	}
	return len(entries), nil
}

// usage is one reading of a target's process trees.
type usage struct {
	ticks  int64 // CPU, clock ticks; see treeTicks
	procs  int   // live processes in the trees
	fds    int   // open descriptors, summed over the processes
	pssKiB int64 // proportional set size, summed
}

// measure reads the trees under roots: always the CPU, the descriptors if
// fds, the memory if pss (reading those for socat's thousands of children
// takes a while). A descendant that exits between the scan and the read is
// skipped.
func (p procFS) measure(roots []int, fds, pss bool) (usage, error) {
	all, err := p.readAll()
	if err != nil {
		return usage{}, err
	}
	pids, err := tree(all, roots)
	if err != nil {
		return usage{}, err
	}
	u := usage{procs: len(pids)}
	for _, pid := range pids {
		u.ticks += all[pid].ticks()
		if fds {
			n, err := p.fdCount(pid)
			if err != nil && !gone(err) {
				return usage{}, err
			}
			u.fds += n
		}
		if pss {
			kib, err := p.pssKiB(pid)
			if err != nil && !gone(err) {
				return usage{}, err
			}
			u.pssKiB += kib
		}
	}
	return u, nil
}

// atClkTck is the auxiliary vector entry holding USER_HZ (see getauxval(3)).
const atClkTck = 17

// clockTicks returns USER_HZ, the unit of the times in /proc/PID/stat, as
// the kernel passed it to this process in the auxiliary vector; 100 (what
// Linux uses on every common architecture) if it cannot be read.
func clockTicks(procRoot string) int64 {
	data, err := os.ReadFile(filepath.Join(procRoot, "self", "auxv"))
	if err != nil {
		return 100
	}
	if hz, ok := parseAuxv(data, atClkTck); ok && hz > 0 {
		return int64(hz)
	}
	return 100
}

// parseAuxv finds key in an auxiliary vector of native-endian 64-bit
// (type, value) pairs ending with type 0.
func parseAuxv(data []byte, key uint64) (uint64, bool) {
	for len(data) >= 16 {
		typ := binary.NativeEndian.Uint64(data)
		val := binary.NativeEndian.Uint64(data[8:])
		if typ == 0 {
			break
		}
		if typ == key {
			return val, true
		}
		data = data[16:]
	}
	return 0, false
}

// clip shortens s for an error message.
func clip(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// run is one JSON line of loadgen (or of run.sh, for a run that could not
// happen).
type run struct {
	target, mode string
	// figures holds the numeric values; a null (n/a) is absent.
	figures map[string]float64
	err     string // the run failed
	skipped string // the target was not run at all
	warning string // the run completed, but something looked wrong
}

// readRuns parses one JSON object per line; blank lines are skipped.
func readRuns(r io.Reader) ([]run, error) {
	var runs []run
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		rn := run{figures: make(map[string]float64)}
		texts := map[string]*string{"target": &rn.target, "mode": &rn.mode, "error": &rn.err, "skipped": &rn.skipped, "warning": &rn.warning}
		for k, v := range m {
			switch v := v.(type) {
			case float64:
				rn.figures[k] = v
			case string:
				if p, ok := texts[k]; ok {
					*p = v
				}
			}
		}
		if rn.target == "" || rn.mode == "" {
			return nil, fmt.Errorf("line %d: no target or mode", n)
		}
		runs = append(runs, rn)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return runs, nil
}

// figure is one of a mode's results.
type figure struct {
	key   string
	label string
	// better is "↑" (higher is better), "↓" (lower is better) or ""
	// (information, neither).
	better string
}

const (
	higher = "↑"
	lower  = "↓"
)

// figuresOf lists, in table order, the figures of a mode.
func figuresOf(mode string) []figure {
	lat := []figure{
		{"p50_us", "p50 µs", lower},
		{"p99_us", "p99 µs", lower},
		{"p999_us", "p99.9 µs", lower},
		{"rps", "requests/s", higher},
		{"cpu_us_per_req", "target CPU µs/request", lower},
	}
	bulk := []figure{
		{"gbps", "Gbit/s", higher},
		{"cpu_s_per_gib", "target CPU s/GiB", lower},
		{"run_cpu_s_per_gib", "run CPU s/GiB", lower},
		{"machine_cpu_s_per_gib", "machine CPU s/GiB", lower},
	}
	// cycles are the figures of a cycling mode: its rate, the times and
	// failures of its cycles, and the target's CPU per 1000.
	cycles := func(rate, cpu figure) []figure {
		return []figure{rate, {"p50_us", "p50 µs", lower}, {"p99_us", "p99 µs", lower}, {"errors", "errors", lower}, cpu}
	}
	switch mode {
	case "up", "down":
		return bulk
	case "lat1", "latC", "udp-lat":
		return lat
	case "conn", "connpaced", "sni":
		return cycles(figure{"cps", "connections/s", higher}, figure{"cpu_s_per_1k_conn", "target CPU s/1000 conns", lower})
	case "tlsfull", "tlsresume":
		return cycles(figure{"hps", "handshakes/s", higher}, figure{"cpu_s_per_1k_hs", "target CPU s/1000 handshakes", lower})
	case "tlsbulk":
		return bulk[:2]
	case "idle":
		return []figure{
			{"kib_per_conn", "KiB/conn", lower},
			{"fds_per_conn", "fds/conn", lower},
			{"held", "conns held", higher},
		}
	}
	if isUDP(mode) {
		return []figure{
			{"dgrams_per_s", "datagrams/s", higher},
			{"cpu_s_per_mdgram", "target CPU s/M datagrams", lower},
			{"loss_pct", "loss %", lower},
		}
	}
	return nil
}

// modeOrder is the order modes appear in the table; others follow in the
// order first seen.
var modeOrder = []string{"up", "down", "lat1", "latC", "conn", "connpaced", "sni", "idle", "tlsfull", "tlsresume", "tlsbulk",
	"udp-64-1", "udp-64-1000", "udp-1400-1", "udp-1400-1000", "udp-lat"}

// orders returns the modes and targets present, modes in modeOrder and
// targets in the order first seen (run.sh's TARGETS).
func orders(runs []run) (modes, targets []string) {
	for _, r := range runs {
		if !slices.Contains(targets, r.target) {
			targets = append(targets, r.target)
		}
		if !slices.Contains(modes, r.mode) {
			modes = append(modes, r.mode)
		}
	}
	slices.SortStableFunc(modes, func(a, b string) int {
		return rank(a) - rank(b)
	})
	return modes, targets
}

func rank(mode string) int {
	if i := slices.Index(modeOrder, mode); i >= 0 {
		return i
	}
	return len(modeOrder)
}

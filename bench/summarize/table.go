package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The reference targets of the ratio columns: direct and HAProxy for
// TCP; direct and nginx for UDP, which HAProxy does not proxy.
const (
	refDirect  = "direct"
	refHAProxy = "haproxy"
	refNginx   = "nginx"
)

// stats are a figure's values over the runs of one mode and target.
type stats struct {
	n                int
	median, min, max float64
}

// describe computes the median (mean of the middle two for an even count),
// min and max; ok is false when there are no values.
func describe(vals []float64) (stats, bool) {
	if len(vals) == 0 {
		return stats{}, false
	}
	s := slices.Clone(vals)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return stats{n: n, median: med, min: s[0], max: s[n-1]}, true
}

// ratio is a/b, or false when it means nothing (no reference, or a zero
// one: direct's error count, say).
func ratio(a, b float64) (float64, bool) {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return 0, false
	}
	return a / b, true
}

// group is the runs of one mode against one target.
type group struct {
	runs []run
}

func (g group) values(key string) []float64 {
	var v []float64
	for _, r := range g.runs {
		if r.err != "" || r.skipped != "" {
			continue
		}
		if x, ok := r.figures[key]; ok {
			v = append(v, x)
		}
	}
	return v
}

// counts returns how many runs completed and how many were tried.
func (g group) counts() (ok, tried int) {
	for _, r := range g.runs {
		if r.skipped != "" {
			continue
		}
		tried++
		if r.err == "" {
			ok++
		}
	}
	return ok, tried
}

// notes gathers the distinct failures, skips and warnings of the group.
func (g group) notes() string {
	var out []string
	add := func(s string) {
		s = strings.ReplaceAll(strings.TrimSpace(s), "|", "/")
		s = strings.ReplaceAll(s, "\n", " ")
		if len(s) > 160 {
			s = s[:157] + "..."
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, r := range g.runs {
		switch {
		case r.skipped != "":
			add("skipped: " + r.skipped)
		case r.err != "":
			add("FAILED: " + r.err)
		case r.warning != "":
			add("warning: " + r.warning)
		}
	}
	return strings.Join(out, "; ")
}

// writeTable writes the TCP table and, if there are UDP runs, the UDP
// table: a row per mode, figure and target.
func writeTable(w io.Writer, runs []run) error {
	var tcp, tlsRuns, udp []run
	for _, r := range runs {
		switch {
		case isUDP(r.mode):
			udp = append(udp, r)
		case isTLS(r.mode):
			tlsRuns = append(tlsRuns, r)
		default:
			tcp = append(tcp, r)
		}
	}
	// One table per kind, each with the peer it is read against: the
	// TLS terminators against HAProxy's (haproxy-tls).
	wrote := false
	for _, t := range []struct {
		runs []run
		ref  string
	}{{tcp, refHAProxy}, {tlsRuns, refHAProxy + "-tls"}, {udp, refNginx}} {
		if len(t.runs) == 0 {
			continue
		}
		if wrote {
			if _, err := io.WriteString(w, "\n"); err != nil {
				return err
			}
		}
		if err := writeOne(w, t.runs, t.ref); err != nil {
			return err
		}
		wrote = true
	}
	return nil
}

func isTLS(mode string) bool { return strings.HasPrefix(mode, "tls") }

func isUDP(mode string) bool { return strings.HasPrefix(mode, "udp-") }

// writeOne writes one table, with ratios to direct and to ref.
func writeOne(w io.Writer, runs []run, ref string) error {
	modes, targets := orders(runs)
	groups := make(map[[2]string]*group)
	for _, r := range runs {
		k := [2]string{r.mode, r.target}
		if groups[k] == nil {
			groups[k] = &group{}
		}
		groups[k].runs = append(groups[k].runs, r)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "| mode | figure | target | runs ok | median | min–max | vs direct | vs %s | notes |\n", ref)
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---|\n")
	for _, mode := range modes {
		figs := figuresOf(mode)
		if len(figs) == 0 {
			return fmt.Errorf("unknown mode %q in the results", mode)
		}
		for fi, f := range figs {
			refOf := func(target string) (stats, bool) {
				g := groups[[2]string{mode, target}]
				if g == nil {
					return stats{}, false
				}
				return describe(g.values(f.key))
			}
			dir, dirOK := refOf(refDirect)
			// A mode with a reference of its own doing the same job
			// (haproxy-sni for sni) compares with it.
			modeRef := ref
			if groups[[2]string{mode, ref + "-" + mode}] != nil {
				modeRef = ref + "-" + mode
			}
			hap, hapOK := refOf(modeRef)
			for _, target := range targets {
				g := groups[[2]string{mode, target}]
				if g == nil {
					continue
				}
				ok, tried := g.counts()
				runsCell := fmt.Sprintf("%d/%d", ok, tried)
				if tried == 0 {
					runsCell = "skipped"
				}
				med, minmax, vsD, vsH := "—", "—", "—", "—"
				if s, has := describe(g.values(f.key)); has {
					med = num(s.median)
					minmax = num(s.min) + "–" + num(s.max)
					if f.better != "" { // a ratio of information means nothing
						vsD = ratioCell(s.median, dir, dirOK)
						vsH = ratioCell(s.median, hap, hapOK)
					}
				} else if ok > 0 {
					med = "n/a"
				}
				notes := ""
				if fi == 0 {
					notes = g.notes()
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
					mode, strings.TrimSpace(f.label+" "+f.better), target, runsCell, med, minmax, vsD, vsH, notes)
			}
		}
	}
	b.WriteString("\n↑ higher is better, ↓ lower is better. median and min–max over the runs that completed; " +
		"vs direct and vs " + ref + " are this median divided by theirs (by " + ref + "-MODE's, for a mode that has one). n/a: not applicable " +
		"(direct has no process of its own to measure); —: no completed run.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func ratioCell(v float64, ref stats, ok bool) string {
	if !ok {
		return "n/a"
	}
	r, ok := ratio(v, ref.median)
	if !ok {
		return "n/a"
	}
	return strconv.FormatFloat(r, 'f', 2, 64) + "×"
}

// num formats a figure with three or so significant digits.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

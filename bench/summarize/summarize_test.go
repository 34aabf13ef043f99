package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDescribe(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want stats
	}{
		{"one", []float64{7}, stats{1, 7, 7, 7}},
		{"odd, unsorted", []float64{9, 1, 5}, stats{3, 5, 1, 9}},
		{"even: mean of the middle two", []float64{4, 1, 10, 2}, stats{4, 3, 1, 10}},
		{"equal values", []float64{2, 2}, stats{2, 2, 2, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.in...)
			got, ok := describe(tt.in)
			if !ok || got != tt.want {
				t.Errorf("describe(%v) = %+v, %v; want %+v", tt.in, got, ok, tt.want)
			}
			for i := range in {
				if in[i] != tt.in[i] {
					t.Fatal("describe reordered its input")
				}
			}
		})
	}
	if _, ok := describe(nil); ok {
		t.Error("describe(nil) reported values")
	}
}

func TestRatio(t *testing.T) {
	if r, ok := ratio(3, 2); !ok || r != 1.5 {
		t.Errorf("ratio(3, 2) = %v, %v", r, ok)
	}
	if _, ok := ratio(3, 0); ok {
		t.Error("ratio to zero reported a value")
	}
	if got := ratioCell(5, stats{median: 10}, true); got != "0.50×" {
		t.Errorf("ratioCell = %q", got)
	}
	if got := ratioCell(5, stats{}, false); got != "n/a" {
		t.Errorf("ratioCell without a reference = %q", got)
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{
		0: "0", 1234.56: "1235", 123.4: "123", 45.67: "45.7", 2.345: "2.35",
		0.5: "0.5", 0.012345: "0.0123", -3.5: "-3.50",
	} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}

// The raw lines of a small run: pj failed once and succeeded twice,
// socat was skipped, nginx failed every time.
const raw = `
{"target":"direct","mode":"up","rep":1,"gbps":40,"cpu_s_per_gib":null}
{"target":"haproxy","mode":"up","rep":1,"gbps":20,"cpu_s_per_gib":0.5}
{"target":"pj","mode":"up","rep":1,"gbps":10,"cpu_s_per_gib":1}
{"target":"nginx","mode":"up","rep":1,"error":"up against nginx: connection refused"}
{"target":"socat","mode":"up","skipped":"socat is not installed: apt-get install -y socat"}
{"target":"direct","mode":"up","rep":2,"gbps":50,"cpu_s_per_gib":null}
{"target":"haproxy","mode":"up","rep":2,"gbps":20,"cpu_s_per_gib":0.5}
{"target":"pj","mode":"up","rep":2,"error":"up against pj: integrity: byte 5 | differs"}
{"target":"nginx","mode":"up","rep":2,"error":"up against nginx: connection refused"}
{"target":"direct","mode":"up","rep":3,"gbps":60,"cpu_s_per_gib":null}
{"target":"haproxy","mode":"up","rep":3,"gbps":20,"cpu_s_per_gib":0.5}
{"target":"pj","mode":"up","rep":3,"gbps":30,"cpu_s_per_gib":3}
{"target":"pj","mode":"idle","rep":1,"held":2990,"kib_per_conn":10,"fds_per_conn":2,"warning":"only 2990 of 3000 connections were still open"}
`

// row returns the table's row for mode, figure label and target.
func row(t *testing.T, table, mode, label, target string) []string {
	t.Helper()
	for line := range strings.SplitSeq(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 10 {
			continue
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if cells[1] == mode && strings.HasPrefix(cells[2], label) && cells[3] == target {
			return cells[1:10]
		}
	}
	t.Fatalf("no row %s / %s / %s in\n%s", mode, label, target, table)
	return nil
}

func TestTable(t *testing.T) {
	var out bytes.Buffer
	if err := Run(nil, strings.NewReader(raw), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	tests := []struct {
		mode, label, target string
		want                []string // runs ok, median, min–max, vs direct, vs haproxy
	}{
		{"up", "Gbit/s", "direct", []string{"3/3", "50.0", "40.0–60.0", "1.00×", "2.50×"}},
		{"up", "Gbit/s", "haproxy", []string{"3/3", "20.0", "20.0–20.0", "0.40×", "1.00×"}},
		{"up", "Gbit/s", "pj", []string{"2/3", "20.0", "10.0–30.0", "0.40×", "1.00×"}},
		{"up", "target CPU", "direct", []string{"3/3", "n/a", "—", "—", "—"}},
		{"up", "target CPU", "pj", []string{"2/3", "2.00", "1.00–3.00", "n/a", "4.00×"}},
		{"up", "Gbit/s", "nginx", []string{"0/2", "—", "—", "—", "—"}},
		{"up", "Gbit/s", "socat", []string{"skipped", "—", "—", "—", "—"}},
		{"idle", "KiB/conn", "pj", []string{"1/1", "10.0", "10.0–10.0", "n/a", "n/a"}},
	}
	for _, tt := range tests {
		cells := row(t, table, tt.mode, tt.label, tt.target)
		if got := cells[3:8]; strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("%s / %s / %s: got %q, want %q", tt.mode, tt.label, tt.target, got, tt.want)
		}
	}
	// Failures, skips and warnings are in the notes of the first figure.
	for target, want := range map[string]string{
		"nginx": "FAILED: up against nginx: connection refused",
		"socat": "skipped: socat is not installed: apt-get install -y socat",
		"pj":    "FAILED: up against pj: integrity: byte 5 / differs",
	} {
		if got := row(t, table, "up", "Gbit/s", target)[8]; got != want {
			t.Errorf("notes of %s = %q, want %q", target, got, want)
		}
	}
	if got := row(t, table, "idle", "KiB/conn", "pj")[8]; !strings.Contains(got, "warning: only 2990") {
		t.Errorf("idle notes = %q, want the warning", got)
	}
	// up before idle, as in run.sh; one header.
	if strings.Index(table, "| up |") > strings.Index(table, "| idle |") {
		t.Error("modes out of order")
	}
	if strings.Count(table, "| mode |") != 1 {
		t.Error("want exactly one table")
	}
}

// TestUDPTable: UDP modes get a table of their own, whose ratios are to
// direct and to nginx (HAProxy does not proxy UDP).
func TestUDPTable(t *testing.T) {
	lines := raw + `
{"target":"direct","mode":"udp-64-1","dgrams_per_s":400000,"cpu_s_per_mdgram":null,"loss_pct":0}
{"target":"pj","mode":"udp-64-1","dgrams_per_s":300000,"cpu_s_per_mdgram":1.5,"loss_pct":0}
{"target":"pj","mode":"udp-64-1","dgrams_per_s":200000,"cpu_s_per_mdgram":2.5,"loss_pct":0.5}
{"target":"nginx","mode":"udp-64-1","dgrams_per_s":100000,"cpu_s_per_mdgram":4,"loss_pct":0}
{"target":"pj","mode":"udp-lat","p50_us":20,"p99_us":40,"p999_us":90,"rps":30000,"cpu_us_per_req":5}
`
	var out bytes.Buffer
	if err := Run(nil, strings.NewReader(lines), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	if strings.Count(table, "| mode |") != 2 || !strings.Contains(table, "| vs direct | vs nginx |") {
		t.Fatalf("want a TCP table and a UDP table with ratios to nginx:\n%s", table)
	}
	for _, tt := range []struct {
		mode, label, target string
		want                []string
	}{
		{"udp-64-1", "datagrams/s", "pj", []string{"2/2", "250000", "200000–300000", "0.62×", "2.50×"}},
		{"udp-64-1", "target CPU s/M", "pj", []string{"2/2", "2.00", "1.50–2.50", "n/a", "0.50×"}},
		{"udp-lat", "p99 µs", "pj", []string{"1/1", "40.0", "40.0–40.0", "n/a", "n/a"}},
	} {
		cells := row(t, table, tt.mode, tt.label, tt.target)
		if got := cells[3:8]; strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("%s / %s / %s: got %q, want %q", tt.mode, tt.label, tt.target, got, tt.want)
		}
	}
	if strings.Index(table, "| idle |") > strings.Index(table, "| udp-64-1 |") {
		t.Error("the UDP table comes after the TCP one")
	}
}

func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, []byte("{\"target\":\"x\",\"mode\":\"up\"}\nnot json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"missing file": {filepath.Join(dir, "none")},
		"bad line":     {bad},
		"two files":    {bad, bad},
		"unknown flag": {"-x"},
		"no lines":     {os.DevNull},
	} {
		if err := Run(args, strings.NewReader(""), io.Discard, io.Discard); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	err := Run(nil, strings.NewReader(`{"target":"a","mode":"warp"}`), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "warp") {
		t.Errorf("unknown mode: err = %v", err)
	}
}

// TestSNIRows: the sni mode has conn's figures, and its "vs haproxy" is to
// haproxy-sni, HAProxy doing the same routing.
func TestSNIRows(t *testing.T) {
	lines := raw + `
{"target":"direct","mode":"sni","cps":12000,"p50_us":300,"p99_us":900,"errors":0,"cpu_s_per_1k_conn":null}
{"target":"pj-sni","mode":"sni","cps":9000,"p50_us":700,"p99_us":1800,"errors":0,"cpu_s_per_1k_conn":0.08}
{"target":"haproxy-sni","mode":"sni","cps":10000,"p50_us":650,"p99_us":1700,"errors":0,"cpu_s_per_1k_conn":0.1}
{"target":"nginx-sni","mode":"sni","cps":9500,"p50_us":690,"p99_us":1750,"errors":0,"cpu_s_per_1k_conn":0.09}
`
	var out bytes.Buffer
	if err := Run(nil, strings.NewReader(lines), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	for _, tt := range []struct {
		label, target string
		want          []string // median, vs direct, vs haproxy-sni
	}{
		{"connections/s", "pj-sni", []string{"9000", "0.75×", "0.90×"}},
		{"target CPU s/1000 conns", "pj-sni", []string{"0.08", "n/a", "0.80×"}},
		{"target CPU s/1000 conns", "nginx-sni", []string{"0.09", "n/a", "0.90×"}},
	} {
		cells := row(t, table, "sni", tt.label, tt.target)
		if got := []string{cells[4], cells[6], cells[7]}; strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("sni / %s / %s: got %q, want %q", tt.label, tt.target, got, tt.want)
		}
	}
	// Modes in run.sh's order: sni's rows before idle's.
	if strings.Index(table, "| sni |") > strings.Index(table, "| idle |") {
		t.Error("sni after idle")
	}
}

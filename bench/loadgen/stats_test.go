package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// upTo returns 1µs, 2µs, ... nµs.
func upTo(n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = time.Duration(i+1) * time.Microsecond
	}
	return s
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		n, perMille int
		want        time.Duration // in µs
	}{
		{0, 500, 0},
		{1, 500, 1},
		{1, 999, 1},
		{2, 500, 1},
		{10, 500, 5},
		{10, 990, 10},
		{100, 500, 50},
		{100, 990, 99}, // exact: 0.99*100 in float64 would risk 100
		{100, 999, 100},
		{1000, 999, 999},
		{1001, 500, 501},
		{100000, 999, 99900},
		{7, 0, 1}, // rank 0 is clamped to the smallest
		{7, 1000, 7},
	}
	for _, tt := range tests {
		got := percentile(upTo(tt.n), tt.perMille)
		if want := tt.want * time.Microsecond; got != want {
			t.Errorf("percentile(1..%d µs, %d‰) = %v, want %v", tt.n, tt.perMille, got, want)
		}
	}
}

func TestSummariseSortsFirst(t *testing.T) {
	s := upTo(1000)
	// Reverse them: summarise must not rely on the order they came in.
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
	l := summarise(s)
	if l.p50 != 500 || l.p99 != 990 || l.p999 != 999 {
		t.Errorf("summarise = %+v, want p50 500, p99 990, p999 999 µs", l)
	}
}

func TestResultLine(t *testing.T) {
	r := newResult()
	r.set("target", "direct")
	r.set("mode", "up")
	r.set("gbps", 12.3456789)
	r.setCPU("cpu_s_per_gib", 1.5, false)
	r.set("bytes", int64(1<<40))
	r.set("tiny", 0.000123456789)
	r.set("nan", 0.0/zero())
	r.set("mode", "down") // a second set keeps the first position
	var b bytes.Buffer
	if err := r.writeLine(&b); err != nil {
		t.Fatal(err)
	}
	want := `{"target":"direct","mode":"down","gbps":12.3457,"cpu_s_per_gib":null,"bytes":1099511627776,"tiny":0.000123457,"nan":null}` + "\n"
	if b.String() != want {
		t.Errorf("line:\n got %s want %s", b.String(), want)
	}
	if strings.Count(b.String(), "\n") != 1 {
		t.Error("not exactly one line")
	}
}

// zero defeats constant folding of 0/0.
func zero() float64 { return 0 }

func TestPattern(t *testing.T) {
	p := newPattern()
	q := newPattern()
	if !bytes.Equal(p.buf, q.buf) {
		t.Fatal("two patterns differ: the generator and the backend would disagree")
	}
	// The chunk across the wrap equals the stream's bytes there.
	off := int64(3*patternPeriod - 100)
	got := p.at(off, 300)
	for i := range got {
		if want := p.buf[(off+int64(i))%patternPeriod]; got[i] != want {
			t.Fatalf("byte %d of the chunk at %d = %d, want %d", i, off, got[i], want)
		}
	}
	if i := p.mismatch(off, got); i != -1 {
		t.Errorf("mismatch of the right bytes = %d, want -1", i)
	}
	bad := bytes.Clone(got)
	bad[123] ^= 1
	if i := p.mismatch(off, bad); i != 123 {
		t.Errorf("mismatch = %d, want 123", i)
	}
	// A stream shifted by one byte does not match.
	if i := p.mismatch(off+1, got); i < 0 {
		t.Error("a shifted stream matched the pattern")
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, a := range []string{"127.0.0.1:80", "127.1.2.3:0", "[::1]:9", "localhost:1"} {
		if err := loopbackOnly(a); err != nil {
			t.Errorf("loopbackOnly(%q) = %v", a, err)
		}
	}
	for _, a := range []string{"10.0.0.1:80", "0.0.0.0:80", "[::]:80", "example.com:80", "127.0.0.1"} {
		if err := loopbackOnly(a); err == nil {
			t.Errorf("loopbackOnly(%q) accepted", a)
		}
	}
}

func TestParsePIDs(t *testing.T) {
	got, err := parsePIDs(" 12, 34,")
	if err != nil || len(got) != 2 || got[0] != 12 || got[1] != 34 {
		t.Errorf("parsePIDs = %v, %v", got, err)
	}
	if got, err := parsePIDs(""); err != nil || got != nil {
		t.Errorf("parsePIDs(\"\") = %v, %v; want none", got, err)
	}
	for _, s := range []string{"x", "0", "-3", "1,,b"} {
		if _, err := parsePIDs(s); err == nil {
			t.Errorf("parsePIDs(%q) accepted", s)
		}
	}
}

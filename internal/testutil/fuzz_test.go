package testutil

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB that keeps the failures it is told of.
type recorder struct {
	testing.TB
	failures []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

var sink []byte

func TestWithin(t *testing.T) {
	spin := func(d time.Duration) func() {
		return func() {
			for start := threadCPU(); threadCPU()-start < d; {
			}
		}
	}
	for _, tc := range []struct {
		name string
		f    func()
		want string // in the failure; "" for none
	}{
		{"cheap", func() {}, ""},
		{"over the CPU budget", spin(150 * time.Millisecond), "of CPU"},
		{"waiting costs no CPU", func() { time.Sleep(150 * time.Millisecond) }, ""},
		{"over the memory budget", func() { sink = make([]byte, 8<<20) }, "allocated 8 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			within(r, tc.f, 100*time.Millisecond, 4<<20, time.Minute)
			got := strings.Join(r.failures, "; ")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("failures %q, want %q", got, tc.want)
			}
		})
	}
}

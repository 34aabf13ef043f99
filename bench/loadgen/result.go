package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"
)

// result is one run's JSON line. Keys keep the order they were set in, so
// the raw file reads like the table: who, what, then the figures.
type result struct {
	keys []string
	vals map[string]any
}

func newResult() *result { return &result{vals: make(map[string]any)} }

// set records key; a nil value is written as null, meaning "not applicable"
// (the CPU of the direct target, which has no process of its own).
func (r *result) set(key string, v any) {
	if _, ok := r.vals[key]; !ok {
		r.keys = append(r.keys, key)
	}
	if f, ok := v.(float64); ok {
		v = round(f)
	}
	r.vals[key] = v
}

// setCPU records a CPU figure, or null when the target has no process.
func (r *result) setCPU(key string, v float64, measured bool) {
	if !measured {
		r.set(key, nil)
		return
	}
	r.set(key, v)
}

// setWindow records the measured window's length and the target's CPU
// seconds in it.
func (r *result) setWindow(cfg *runConfig, w window) {
	r.set("elapsed_s", w.seconds())
	r.setCPU("cpu_s", w.cpu, cfg.measured())
}

// setLatency records round trips: their percentiles, how many a second,
// and the target's CPU per request.
func (r *result) setLatency(cfg *runConfig, samples []time.Duration, w window) {
	l := summarise(samples)
	n := float64(len(samples))
	r.set("p50_us", l.p50)
	r.set("p99_us", l.p99)
	r.set("p999_us", l.p999)
	r.set("rps", n/w.seconds())
	r.setCPU("cpu_us_per_req", w.cpu*1e6/n, cfg.measured())
	r.set("requests", len(samples))
}

// round keeps six significant digits: enough for any figure here, and the
// lines stay short. NaN and infinities (a division by a zero count) are not
// JSON; they become null.
func round(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	if f == 0 {
		return 0.0
	}
	digits := 6 - int(math.Ceil(math.Log10(math.Abs(f))))
	if digits < 0 {
		digits = 0
	}
	scale := math.Pow(10, float64(digits))
	return math.Round(f*scale) / scale
}

// writeLine writes the result as one line of JSON.
func (r *result) writeLine(w io.Writer) error {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range r.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, err := json.Marshal(k)
		if err != nil {
			return fmt.Errorf("encode result key %q: %w", k, err)
		}
		vb, err := json.Marshal(r.vals[k])
		if err != nil {
			return fmt.Errorf("encode result %q: %w", k, err)
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	b.WriteString("}\n")
	_, err := w.Write(b.Bytes())
	return err
}

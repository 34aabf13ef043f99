package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startBackend runs the backend on a loopback port until the test ends.
func startBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	b := &backend{pat: newPattern(), connLife: time.Minute}
	go func() { done <- b.serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("backend: %v", err)
		}
	})
	return ln.Addr().String()
}

// tamper is called with each chunk a test relay forwards: toBackend tells
// the direction, off the chunk's offset in it. It returns what to forward.
type tamper func(toBackend bool, off int64, b []byte) []byte

// startRelay runs a tiny TCP relay to backend that passes every chunk
// through fn: a stand-in for a proxy that damages the stream.
func startRelay(t *testing.T, backend string, fn tamper) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pump := func(dst, src *net.TCPConn, toBackend bool) {
		buf := make([]byte, 32<<10)
		var off int64
		for {
			n, err := src.Read(buf)
			if n > 0 {
				out := fn(toBackend, off, buf[:n])
				off += int64(n)
				if _, werr := dst.Write(out); werr != nil {
					return
				}
			}
			if err != nil {
				dst.CloseWrite()
				return
			}
		}
	}
	return serveForwards(t, ln, backend,
		func(c, b net.Conn) { pump(b.(*net.TCPConn), c.(*net.TCPConn), true) },
		func(c, b net.Conn) { pump(c.(*net.TCPConn), b.(*net.TCPConn), false) })
}

// serveForwards accepts clients on ln until the test ends, connects each
// to backend and runs up and down (each given the client, then the
// backend) for the two directions. It returns ln's address; the test's
// cleanup closes every connection and waits for the directions to end.
func serveForwards(t *testing.T, ln net.Listener, backend string, up, down func(c, b net.Conn)) string {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, b)
			mu.Unlock()
			wg.Go(func() { up(c, b) })
			wg.Go(func() { down(c, b) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// runLine runs loadgen run with args and decodes its JSON line.
func runLine(t *testing.T, args ...string) (map[string]any, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), append([]string{"run"}, args...), &out, &errb)
	if strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("want exactly one line of output, got %q (stderr %q)", out.String(), errb.String())
	}
	var m map[string]any
	if jerr := json.Unmarshal(out.Bytes(), &m); jerr != nil {
		t.Fatalf("output is not JSON: %v: %q", jerr, out.String())
	}
	if err != nil && m["error"] != err.Error() {
		t.Errorf("the line's error %q differs from the returned %q", m["error"], err)
	}
	return m, err
}

// positive fails unless m[key] is a number above zero.
func positive(t *testing.T, m map[string]any, key string) {
	t.Helper()
	v, ok := m[key].(float64)
	if !ok || !(v > 0) {
		t.Errorf("%s = %v, want a number > 0 (line %v)", key, m[key], m)
	}
}

// windows are the measured windows a test tries, shortest first. A loaded
// machine can hold a stream, or the backend behind it, still for a whole
// short window: a run that measured nothing says nothing of the mode, and
// neither does one that moved too few bytes to reach the one a test
// altered. The next, longer window is then tried.
var windows = []string{"150ms", "1s", "5s"}

// measuredNothing tells the errors of a run that measured nothing in its
// window.
func measuredNothing(err error) bool {
	if err == nil {
		return false
	}
	for _, s := range []string{"in the measured time", "no echo came back", "no request completed", "no connection cycle completed (0 failed"} {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

// runWindows runs loadgen run with args in each of windows until a run
// measured something, and enough (if set) says it saw enough to judge.
func runWindows(t *testing.T, enough func(m map[string]any, err error) bool, args ...string) (map[string]any, error) {
	t.Helper()
	for i, w := range windows {
		m, err := runLine(t, append(slices.Clip(args), "-duration", w)...)
		judged := !measuredNothing(err) && (enough == nil || enough(m, err))
		if judged || i == len(windows)-1 {
			if !judged && err == nil {
				t.Fatalf("a window of %s saw too little to judge: %v", w, m)
			}
			return m, err
		}
		t.Logf("a window of %s saw too little to judge (%v); a longer one", w, err)
	}
	panic("unreachable")
}

// moved says a run of one stream moved at least n bytes (or failed).
func moved(n float64) func(map[string]any, error) bool {
	return func(m map[string]any, err error) bool {
		got, _ := m["bytes"].(float64)
		return err != nil || got >= n
	}
}

func TestModesDirect(t *testing.T) {
	addr := startBackend(t)
	common := []string{"-target", "direct", "-addr", addr, "-idle-conns", "40", "-lat-conns", "4", "-conn-workers", "2"}
	tests := []struct {
		mode    string
		figures []string
		na      []string
	}{
		{"up", []string{"gbps", "bytes"}, []string{"cpu_s_per_gib"}},
		{"down", []string{"gbps", "bytes"}, []string{"cpu_s_per_gib"}},
		{"lat1", []string{"p50_us", "p99_us", "p999_us", "rps"}, []string{"cpu_us_per_req"}},
		{"latC", []string{"p50_us", "p99_us", "p999_us", "rps"}, []string{"cpu_us_per_req"}},
		{"conn", []string{"cps", "p50_us", "p99_us"}, []string{"cpu_s_per_1k_conn"}},
		{"sni", []string{"cps", "p50_us", "p99_us", "hello_bytes"}, []string{"cpu_s_per_1k_conn"}},
		{"idle", []string{"held"}, []string{"kib_per_conn", "fds_per_conn"}},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			m, err := runWindows(t, nil, append([]string{"-mode", tt.mode}, common...)...)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.figures {
				positive(t, m, k)
			}
			for _, k := range tt.na {
				if v, ok := m[k]; !ok || v != nil {
					t.Errorf("%s = %v, want null for direct", k, v)
				}
			}
			if m["target"] != "direct" || m["mode"] != tt.mode {
				t.Errorf("line names %v/%v", m["target"], m["mode"])
			}
		})
	}
}

// TestModesMeasured uses this test process as the "target", to run the
// CPU, memory and descriptor accounting for real.
func TestModesMeasured(t *testing.T) {
	addr := startBackend(t)
	self := strconv.Itoa(os.Getpid())
	common := []string{"-target", "self", "-addr", addr, "-pids", self, "-idle-conns", "40"}
	for _, mode := range []string{"down", "conn"} {
		t.Run(mode, func(t *testing.T) {
			m, err := runWindows(t, nil, append([]string{"-mode", mode}, common...)...)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := m["cpu_s"].(float64); !ok {
				t.Errorf("cpu_s = %v, want a number", m["cpu_s"])
			}
		})
	}
	t.Run("idle", func(t *testing.T) {
		m, err := runWindows(t, nil, append([]string{"-mode", "idle"}, common...)...)
		if err != nil {
			t.Fatal(err)
		}
		// Both ends of each connection are in this process.
		if v, _ := m["fds_per_conn"].(float64); v < 1.9 || v > 2.5 {
			t.Errorf("fds_per_conn = %v, want about 2 (line %v)", m["fds_per_conn"], m)
		}
		if m["held"] != 40.0 {
			t.Errorf("held = %v, want 40", m["held"])
		}
		if _, ok := m["warning"]; ok {
			t.Errorf("unexpected warning: %v", m["warning"])
		}
	})
}

// startUDPEcho runs the backend's UDP echo until the test ends.
func startUDPEcho(t *testing.T) string {
	t.Helper()
	fd, port, err := openUDPEcho(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveUDPEcho(ctx, fd) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("udp backend: %v", err)
		}
	})
	return "127.0.0.1:" + strconv.Itoa(port)
}

func TestUDPModes(t *testing.T) {
	addr := startUDPEcho(t)
	self := strconv.Itoa(os.Getpid())
	for _, tt := range []struct {
		mode    string
		figures []string
	}{
		{"udp-64-1", []string{"dgrams_per_s", "echoes"}},
		{"udp-1400-50", []string{"dgrams_per_s", "echoes"}},
		{"udp-lat", []string{"p50_us", "p99_us", "rps"}},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			m, err := runWindows(t, nil, "-mode", tt.mode, "-target", "self", "-addr", addr, "-pids", self)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.figures {
				positive(t, m, k)
			}
			if _, ok := m["cpu_s"].(float64); !ok {
				t.Errorf("cpu_s = %v, want a number", m["cpu_s"])
			}
		})
	}
	t.Run("bad mode", func(t *testing.T) {
		if _, err := runLine(t, "-mode", "udp-8-1", "-target", "x", "-addr", addr); err == nil {
			t.Fatal("udp-8-1 (datagrams under 16 bytes) accepted")
		}
	})
	t.Run("wait", func(t *testing.T) {
		var errb bytes.Buffer
		if err := Run(context.Background(), []string{"wait", "-udp", "-addr", addr, "-timeout", "5s"}, io.Discard, &errb); err != nil {
			t.Fatalf("wait -udp: %v", err)
		}
	})
}

// TestUDPLatWarmsUpThroughALoss: a warm-up datagram lost, or held past
// udpLossWait (as a loaded machine may hold one), is not the end of the
// run: the warm-up goes on until enough echoes have come back.
func TestUDPLatWarmsUpThroughALoss(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for i := 0; ; i++ {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if i != 3 { // the fourth datagram, in the warm-up, is lost
				_, _ = c.WriteToUDP(buf[:n], from)
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	m, err := runWindows(t, nil, "-mode", "udp-lat", "-target", "lossy", "-addr", c.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	positive(t, m, "rps")
}

func TestIntegrityFailures(t *testing.T) {
	backend := startBackend(t)
	flip := func(wantToBackend bool, at int64) tamper {
		return func(toBackend bool, off int64, b []byte) []byte {
			if toBackend == wantToBackend && off <= at && at < off+int64(len(b)) {
				b = bytes.Clone(b)
				b[at-off] ^= 0x40
			}
			return b
		}
	}
	drop := func(toBackend bool, off int64, b []byte) []byte {
		if toBackend && off <= 70000 && 70000 < off+int64(len(b)) {
			return append(bytes.Clone(b[:70000-off]), b[70000-off+1:]...)
		}
		return b
	}
	// A run judges the bytes it moves: enough says it moved the one
	// altered (one stream, the one verified byte for byte).
	tests := []struct {
		name, mode string
		fn         tamper
		enough     func(map[string]any, error) bool
		want       string
	}{
		{"up, a byte altered", "up", flip(true, 100000), moved(99999), "integrity: byte 99998 arrived at the backend"}, // 2 header bytes
		{"up, a byte lost", "up", drop, moved(69999), "integrity"},
		{"down, a byte altered", "down", flip(false, 123457), moved(123458), "integrity: byte 123457 arrived different"},
		{"lat1, an echo altered", "lat1", flip(false, 64*20+3), func(m map[string]any, err error) bool {
			got, _ := m["requests"].(float64)
			return err != nil || got+warmRounds > 20
		}, "came back altered"},
		{"conn, an echo altered", "conn", flip(false, 0), nil, "came back altered"},
		{"sni, the answer altered", "sni", flip(false, 700), nil, "came back altered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			relay := startRelay(t, backend, tt.fn)
			m, err := runWindows(t, tt.enough, "-mode", tt.mode, "-target", "bad", "-addr", relay, "-streams", "1", "-conn-workers", "1")
			if tt.mode == "conn" || tt.mode == "sni" {
				// Every cycle fails: the run fails, or counts errors.
				if err == nil && m["errors"] == 0.0 {
					t.Fatalf("no error through a relay that alters every echo: %v", m)
				}
				if err == nil {
					err = errors.New(m["first_error"].(string))
				}
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestNothingMoves runs the bulk modes against a target that accepts and
// never relays: a run in which no byte moved is a failure, not 0 Gbit/s.
func TestNothingMoves(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hold := func(c, b net.Conn) {} // the test's clean-up closes both
	hole := serveForwards(t, ln, startBackend(t), hold, hold)
	_, err = runLine(t, "-mode", "down", "-target", "hole", "-addr", hole, "-duration", "100ms")
	if err == nil || !strings.Contains(err.Error(), "no byte arrived") {
		t.Errorf("down: err = %v, want \"no byte arrived\"", err)
	}
}

func TestPortWindow(t *testing.T) {
	dir := t.TempDir()
	write := func(text string) string {
		p := dir + "/range"
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for text, wantHi := range map[string]int{
		"32768\t60999\n": 32768,
		"40000 65000\n":  40000,
		"1024 65535\n":   32768, // too low to leave room below it
		"junk\n":         32768,
	} {
		if lo, hi := portWindow(write(text)); lo != 10000 || hi != wantHi {
			t.Errorf("portWindow(%q) = %d, %d; want 10000, %d", text, lo, hi, wantHi)
		}
	}
	if lo, hi := portWindow(dir + "/none"); lo != 10000 || hi != 32768 {
		t.Errorf("portWindow without the file = %d, %d", lo, hi)
	}
}

func TestRunRefuses(t *testing.T) {
	for _, args := range [][]string{
		{"-mode", "up", "-addr", "10.1.2.3:80"},
		{"-mode", "up", "-addr", "127.0.0.1:"},
		{"-mode", "up", "-addr", "127.0.0.1:0"},
		{"-mode", "up", "-addr", "127.0.0.1:70000"},
		{"-mode", "up"},
		{"-mode", "nope", "-addr", "127.0.0.1:1"},
		{"-mode", "up", "-addr", "127.0.0.1:1", "-streams", "0"},
		{"-mode", "up", "-addr", "127.0.0.1:1", "-pids", "x"},
		{"-mode", "conn", "-addr", "127.0.0.1:1", "-count", "-1"},
		{"-mode", "up", "-addr", "127.0.0.1:1", "-count", "5"},
		{"-mode", "tlsbulk", "-addr", "127.0.0.1:1", "-count", "5"},
		{"-mode", "lat1", "-addr", "127.0.0.1:1", "-pace"},
		{"-mode", "udp-lat", "-addr", "127.0.0.1:1", "-pace"},
		{"-mode", "idle", "-addr", "127.0.0.1:1", "-idle-hold", "11m"},
	} {
		if _, err := runLine(t, args...); err == nil {
			t.Errorf("run %v succeeded", args)
		}
	}
}

func TestWaitAndPorts(t *testing.T) {
	addr := startBackend(t)
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"wait", "-addr", addr, "-timeout", "2s"}, io.Discard, io.Discard); err != nil {
		t.Errorf("wait for the backend: %v", err)
	}
	if err := Run(context.Background(), []string{"ports", "-n", "3"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	ports := strings.Fields(out.String())
	if len(ports) != 3 || ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
		t.Errorf("ports = %q, want three different ones", ports)
	}
	// Nothing listens on a port just handed out and closed again.
	err := Run(context.Background(), []string{"wait", "-addr", "127.0.0.1:" + ports[0], "-timeout", "200ms"}, io.Discard, io.Discard)
	if err == nil {
		t.Error("wait succeeded on a closed port")
	}
}

func TestConnStopsAtCount(t *testing.T) {
	addr := startBackend(t)
	m, err := runLine(t, "-mode", "conn", "-target", "direct", "-addr", addr, "-duration", "1m", "-conn-workers", "4", "-count", "37")
	if err != nil {
		t.Fatal(err)
	}
	if m["conns_ok"] != 37.0 || m["errors"] != 0.0 {
		t.Fatalf("conns_ok = %v, errors = %v, want 37 and 0 (line %v)", m["conns_ok"], m["errors"], m)
	}
	if times, ok := m["error_times_unix_ms"].([]any); !ok || len(times) != 0 {
		t.Fatalf("error_times_unix_ms = %v, want an empty list", m["error_times_unix_ms"])
	}
}

func TestConnReportsWhenCyclesFailed(t *testing.T) {
	const late = 30 * time.Millisecond
	var echoes atomic.Int64
	relay := startRelay(t, startBackend(t), func(toBackend bool, off int64, b []byte) []byte {
		if !toBackend && off == 0 && echoes.Add(1)%2 == 1 {
			// Every other echo comes back altered, and late: a failure
			// seen well after its cycle began.
			<-time.After(late)
			b = bytes.ToUpper(b)
		}
		return b
	})
	before := time.Now().UnixMilli()
	m, _ := runLine(t, "-mode", "conn", "-target", "bad", "-addr", relay, "-duration", "1m", "-conn-workers", "1", "-count", "10")
	after := time.Now().UnixMilli()
	times, _ := m["error_times_unix_ms"].([]any)
	starts, _ := m["error_starts_unix_ms"].([]any)
	if m["errors"] != 5.0 || len(times) != 5 || len(starts) != 5 {
		t.Fatalf("errors = %v, times %v, starts %v, want 5 of each (line %v)", m["errors"], times, starts, m)
	}
	for i, v := range times {
		ms, _ := v.(float64)
		began, _ := starts[i].(float64)
		if began < float64(before) || ms > float64(after) || (i > 0 && ms < times[i-1].(float64)) {
			t.Fatalf("error times %v: want them in order, between %d and %d", times, before, after)
		}
		if ms-began < float64(late.Milliseconds()) {
			t.Fatalf("failure %d began at %v and failed at %v: want it to have begun %s before", i, began, ms, late)
		}
	}
}

func TestIdleHoldsThenChecks(t *testing.T) {
	addr := startBackend(t)
	start := time.Now()
	m, err := runLine(t, "-mode", "idle", "-target", "direct", "-addr", addr, "-idle-conns", "20", "-idle-hold", "300ms")
	if err != nil {
		t.Fatal(err)
	}
	if m["held"] != 20.0 || m["hold_s"] != 0.3 {
		t.Fatalf("held = %v, hold_s = %v, want 20 and 0.3 (line %v)", m["held"], m["hold_s"], m)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("the run took %s, less than the hold", took)
	}
}

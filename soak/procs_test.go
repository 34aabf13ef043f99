package soak

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil/pjproc"
)

// raiseFileLimit lifts this process's soft descriptor limit to the hard
// one: the test holds one end of every idle connection. (Go raises its own
// soft limit at start-up and lowers it again for the processes it starts;
// pj and loadgen, being Go, raise theirs.)
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	lim.Cur = lim.Max
	return lim.Max, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// process is a child process: pj or a loadgen backend.
type process struct {
	*pjproc.Proc
	name string
	log  string // its stdout and stderr, a file
}

// start runs cmd, its stdout and stderr to a file in the test's directory,
// until the test ends (pjproc.Start).
func start(t *testing.T, name string, cmd *exec.Cmd) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the process has its own
	cmd.Stdout, cmd.Stderr = f, f
	return &process{Proc: pjproc.Start(t, cmd), name: name, log: logPath}
}

// ports returns n free loopback ports below the ephemeral range, where the
// million client connections of a run do not take them.
func ports(t *testing.T, n int) []string {
	t.Helper()
	out, err := exec.Command(pjproc.Bin("loadgen"), "ports", "-n", strconv.Itoa(n)).Output()
	if err != nil {
		t.Fatalf("loadgen ports: %v", err)
	}
	ps := strings.Fields(string(out))
	if len(ps) != n {
		t.Fatalf("loadgen ports: %q", out)
	}
	return ps
}

// backend runs loadgen's echo backend on 127.0.0.1:port and waits until it
// answers.
func backend(t *testing.T, name, port string) *process {
	t.Helper()
	addr := "127.0.0.1:" + port
	cmd := exec.Command(pjproc.Bin("loadgen"), "serve", "-listen", addr, "-lifetime", "1h",
		"-parent", strconv.Itoa(os.Getpid()))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	p := start(t, name, cmd)
	waitEcho(t, p, addr)
	return p
}

// waitEcho waits until addr answers an echo, failing at once if p exits.
func waitEcho(t *testing.T, p *process, addr string) {
	t.Helper()
	p.WaitFor(t, 20*time.Second, addr+" to echo through "+p.name, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		return echo(c, 'w', time.Second) == nil
	})
}

// pj runs the pj binary with args and waits until addr (its first
// listener) relays an echo.
func pj(t *testing.T, addr string, args ...string) *process {
	t.Helper()
	p := start(t, "pj", pjproc.Command(args...))
	waitEcho(t, p, addr)
	return p
}

// loadgen runs one loadgen measurement and returns its JSON line.
func loadgen(ctx context.Context, args ...string) (map[string]any, error) {
	cmd := exec.CommandContext(ctx, pjproc.Bin("loadgen"), append([]string{"run"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, runErr := cmd.Output()
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("loadgen %s: %v, output %q, stderr %q", strings.Join(args, " "), errors.Join(runErr, err), out, stderr.String())
	}
	if e, ok := m["error"].(string); ok {
		return m, errors.New(e)
	}
	return m, runErr
}

// num reads a number of a loadgen line; -1 when absent.
func num(m map[string]any, key string) float64 {
	if v, ok := m[key].(float64); ok {
		return v
	}
	return -1
}

// usage is a process's resident memory and open descriptors.
type usage struct {
	rssKiB int
	fds    int
}

func (u usage) rssMiB() float64 { return float64(u.rssKiB) / 1024 }

// measure reads pid's VmRSS and counts its descriptors.
func measure(t *testing.T, pid int) usage {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read the status of %d: %v", pid, err)
	}
	var u usage
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			u.rssKiB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("count the descriptors of %d: %v", pid, err)
	}
	u.fds = len(ents)
	return u
}

// metric returns the value of the Prometheus sample name{labels} (labels
// as written, e.g. `result="success"`) from the admin listener at addr.
func metric(addr, name, labels string) (float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	want := name
	if labels != "" {
		want += "{" + labels + "}"
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), want+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no sample %s at %s", want, addr)
}

// backendStates returns each backend's state ("up", "down") from the
// admin API at addr.
func backendStates(addr string) (map[string]string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/api/v1/proxies")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Proxies []struct {
			Backends []struct {
				Address string `json:"address"`
				State   string `json:"state"`
			} `json:"backends"`
		} `json:"proxies"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range body.Proxies {
		for _, b := range p.Backends {
			out[b.Address] = b.State
		}
	}
	return out, nil
}

// echo sends one byte on c and reads it back within d.
func echo(c net.Conn, b byte, d time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(d)); err != nil {
		return err
	}
	if _, err := c.Write([]byte{b}); err != nil {
		return err
	}
	var got [1]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return err
	}
	if got[0] != b {
		return fmt.Errorf("echoed %q, want %q", got[0], b)
	}
	return c.SetDeadline(time.Time{})
}

// background runs f in a goroutine; the returned func waits for it.
func background(f func()) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(f)
	return wg.Wait
}

// tcpCounters reads the kernel's TCP counters that explain a stalled
// connection (retransmitted SYNs, overflowing listen queues) from
// /proc/net/snmp and /proc/net/netstat. They count for the whole network
// namespace, other processes' connections too.
func tcpCounters() map[string]int64 {
	want := map[string]bool{
		"Tcp:RetransSegs": true, "Tcp:EstabResets": true, "Tcp:AttemptFails": true,
		"TcpExt:ListenOverflows": true, "TcpExt:ListenDrops": true, "TcpExt:TCPTimeouts": true,
		"TcpExt:TCPSynRetrans": true, "TcpExt:TWRecycled": true,
	}
	out := map[string]int64{}
	for _, path := range []string{"/proc/net/snmp", "/proc/net/netstat"} {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		lines := strings.Split(string(data), "\n")
		// Each group is a line of names followed by a line of values.
		for i := 0; i+1 < len(lines); i += 2 {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) != len(values) || len(names) == 0 {
				continue
			}
			for j := 1; j < len(names); j++ {
				if key := names[0] + names[j]; want[key] {
					out[key], _ = strconv.ParseInt(values[j], 10, 64)
				}
			}
		}
	}
	return out
}

// counterDelta says how each counter moved from a to b.
func counterDelta(a, b map[string]int64) string {
	var parts []string
	for k, v := range b {
		if d := v - a[k]; d != 0 {
			parts = append(parts, fmt.Sprintf("%s +%d", k, d))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// unusualLines returns up to n lines of a pj log that are neither an ok
// connection nor start-up: the failed or cut connections, the warnings.
func unusualLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() && len(out) < n {
		line := sc.Text()
		if !strings.Contains(line, "[ok]") && !strings.Contains(line, "INFO listening") {
			out = append(out, line)
		}
	}
	return out
}

// keep copies p's log out of the test's temporary directory, for a failure
// to be looked into, and returns where it went.
func keep(t *testing.T, p *process) string {
	t.Helper()
	dst := filepath.Join(os.TempDir(), fmt.Sprintf("pj-soak-%s-%d.log", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().Unix()))
	if err := os.Rename(p.log, dst); err != nil {
		return "not kept: " + err.Error()
	}
	return dst
}

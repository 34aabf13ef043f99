//go:build linux

package upgrade

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/testutil"
)

// The test binary plays the new process when started with helperEnv set:
// it speaks the protocol as pj does, as told by the variable's value.
const helperEnv = "PJ_UPGRADE_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(helperEnv); ok {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

func child(mode string) int {
	if v, ok := strings.CutPrefix(mode, "versions="); ok {
		Versions = nil
		for _, f := range strings.Split(v, ",") {
			var n int
			_, _ = fmt.Sscan(f, &n)
			Versions = append(Versions, n)
		}
	}
	ch, err := FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if mode == "fail" {
		ch.Failed(fmt.Errorf("cannot serve"))
		return 1
	}
	// Every socket with its descriptors, in order: a byte of each.
	for _, s := range ch.Sockets {
		var b [1]byte
		if _, err := unix.Read(s.FDs[0], b[:]); err != nil {
			fmt.Fprintln(os.Stderr, "read", s.Key, err)
			return 1
		}
		if string(b[:]) != s.Key[len(s.Key)-1:] {
			fmt.Fprintf(os.Stderr, "socket %s: read %q\n", s.Key, b)
			return 1
		}
	}
	fmt.Printf("sockets=%d version=%d\n", len(ch.Sockets), ch.Version)
	if err := ch.Ready(10*time.Second, func(c Conn) { CloseFDs(c.FDs) }); err != nil {
		fmt.Fprintln(os.Stderr, "ready:", err)
		return 1
	}
	return 0
}

// pipes returns n sockets, each a pipe's read end holding the last
// character of its key.
func pipes(t *testing.T, n int) func() ([]Socket, error) {
	return func() ([]Socket, error) {
		var out []Socket
		for i := range n {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				return nil, err
			}
			key := fmt.Sprintf("s%d", i)
			if _, err := unix.Write(p[1], []byte(key[len(key)-1:])); err != nil {
				return nil, err
			}
			_ = unix.Close(p[1])
			out = append(out, Socket{Key: key, FDs: []int{p[0]}})
		}
		return out, nil
	}
}

func start(t *testing.T, mode string, socks func() ([]Socket, error), timeout time.Duration) (*Handover, string, error) {
	t.Helper()
	var out, errOut testutil.Buffer
	h, err := Start(context.Background(), Options{
		Exe: os.Args[0], Args: []string{"-test.run=^$"}, Env: append(os.Environ(), helperEnv+"="+mode),
		Stdout: &out, Stderr: &errOut, Sockets: socks, Timeout: timeout,
	})
	if h != nil {
		if err := h.Done(); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 10*time.Second, "the child to print", func() bool { return strings.Contains(out.String(), "\n") })
	}
	return h, out.String() + errOut.String(), err
}

func TestSocketsTravelInBatches(t *testing.T) {
	for _, n := range []int{0, 1, MaxFDs, MaxFDs + 1, 600} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			h, out, err := start(t, "ok", pipes(t, n), 0)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("sockets=%d version=1", n); !strings.Contains(out, want) || h.Sockets != n {
				t.Fatalf("child said %q, handed %d; want %s", out, h.Sockets, want)
			}
		})
	}
}

func TestFailures(t *testing.T) {
	for _, tc := range []struct {
		name, mode string
		timeout    time.Duration
		want       string
	}{
		{"no common version", "versions=7,9", 0, "no common handover protocol version: the new binary speaks [7 9], this one [1]"},
		{"the child fails", "fail", 0, "cannot serve"},
		{"not ready in time", "hang", 300 * time.Millisecond, "timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mode := tc.mode
			socks := pipes(t, 3)
			if mode == "hang" {
				// A process that never speaks: the parent gives up after
				// the timeout and stops it.
				began := time.Now()
				_, err := Start(context.Background(), Options{Exe: "/bin/sleep", Args: []string{"60"}, Sockets: socks, Timeout: tc.timeout})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err %v, want %q", err, tc.want)
				}
				if took := time.Since(began); took > 10*time.Second {
					t.Fatalf("took %s to give up", took)
				}
				return
			}
			h, out, err := start(t, mode, socks, 0)
			if err == nil || h != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q\nchild: %s", err, tc.want, out)
			}
		})
	}
}

func TestNewerChildSpeaksTheOldVersion(t *testing.T) {
	// A child that speaks a newer version and this one: the parent picks
	// the highest the two share, so upgrades and rollbacks both work.
	h, out, err := start(t, "versions=1,2", pipes(t, 2), 0)
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != 1 || !strings.Contains(out, "sockets=2 version=1") {
		t.Fatalf("version %d, child said %q", h.Version, out)
	}
}

func TestHighestCommonVersion(t *testing.T) {
	for _, tc := range []struct {
		a, b []int
		want int
	}{
		{[]int{1}, []int{1}, 1},
		{[]int{1, 2}, []int{1}, 1},
		{[]int{1}, []int{1, 2}, 1},
		{[]int{1, 2, 3}, []int{2, 3, 4}, 3},
		{[]int{1}, []int{2}, 0},
		{nil, []int{1}, 0},
	} {
		if got := common(tc.a, tc.b); got != tc.want {
			t.Errorf("common(%v, %v) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// pair returns the two ends of a channel, closed when the test ends.
func pair(t *testing.T) (*conn, *conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := &conn{fd: fds[0]}, &conn{fd: fds[1]}
	t.Cleanup(func() { a.close(); b.close() })
	return a, b
}

func TestConnsTravelInBatches(t *testing.T) {
	// Connections of one descriptor each: full messages of MaxFDs, then
	// the rest, every connection with its own descriptor.
	for _, n := range []int{0, 1, MaxFDs, MaxFDs + 1, 2*MaxFDs + 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			a, b := pair(t)
			conns := make([]Conn, n)
			for i := range conns {
				conns[i] = Conn{State: []byte(fmt.Sprint(i)), FDs: []int{a.fd}}
			}
			errc := make(chan error, 1)
			go func() {
				sent, err := (&Handover{c: a}).SendConns(conns)
				if err == nil && sent != n {
					err = fmt.Errorf("sent %d of %d", sent, n)
				}
				errc <- err
			}()
			got := 0
			for got < n {
				m, fds, err := b.recv(time.Now().Add(10 * time.Second))
				if err != nil {
					t.Fatal(err)
				}
				CloseFDs(fds)
				if len(fds) > MaxFDs || len(m.Conns) != len(fds) {
					t.Fatalf("a message of %d connections with %d descriptors", len(m.Conns), len(fds))
				}
				for _, c := range m.Conns {
					if string(c.State) != fmt.Sprint(got) || c.Count != 1 {
						t.Fatalf("connection %d came as %s with %d descriptors", got, c.State, c.Count)
					}
					got++
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSendConnsNamesTheLimit(t *testing.T) {
	a, _ := pair(t)
	fds := make([]int, MaxFDs+1)
	_, err := (&Handover{c: a}).SendConns([]Conn{{FDs: fds}})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprint(MaxFDs)) {
		t.Fatalf("err %v; want one that names the limit, %d descriptors", err, MaxFDs)
	}
}

func TestReceiveReusesItsBuffer(t *testing.T) {
	// An upgrade that moves many connections receives many messages: each
	// must not cost a buffer of the largest message the channel carries.
	a, b := pair(t)
	const msgs = 32
	errc := make(chan error, 1)
	go func() {
		for range msgs {
			if err := a.send(message{Type: "conns"}, nil); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range msgs {
		if _, _, err := b.recv(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 2*maxMessage {
		t.Fatalf("%d messages allocated %d bytes; want at most %d", msgs, got, 2*maxMessage)
	}
}

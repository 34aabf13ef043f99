//go:build linux

package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Options say what the parent starts and what it hands over.
type Options struct {
	// Exe is the binary to start: the path pj was started from.
	Exe string
	// Args (without the program name) and Env are pj's own.
	Args []string
	Env  []string
	// Stdout and Stderr are the child's: pj's own, so that both log to
	// the same place.
	Stdout, Stderr io.Writer
	// Sockets returns the sockets to hand over, as duplicates that the
	// upgrade owns and closes once sent.
	Sockets func() ([]Socket, error)
	// State, if set, returns what the child is given beside the sockets
	// (Child.State).
	State func() json.RawMessage
	// Timeout is how long the child may take to serve; 0 is ReadyTimeout.
	Timeout time.Duration
}

// Handover is an upgrade whose child serves: the parent stops accepting,
// then calls Done.
type Handover struct {
	c       *conn
	PID     int
	Version int
	// Sockets is how many listening sockets were handed over.
	Sockets int
}

// Done tells the child that the parent has stopped accepting and sent
// every connection it moves: it is the service's main process from now on.
func (h *Handover) Done() error {
	defer h.c.close()
	return h.c.send(message{Type: "done"}, nil)
}

// SendConns sends established connections, in messages of at most MaxFDs
// descriptors. The caller closes the descriptors afterwards. It returns
// how many were sent: those after a failure were not.
func (h *Handover) SendConns(conns []Conn) (int, error) {
	return inBatches(conns, func(batch []Conn, fds []int, _ bool) error {
		if len(batch) == 0 {
			return nil
		}
		return h.c.send(message{Type: "conns", Conns: batch}, fds)
	})
}

// carrier is what travels with descriptors: a Socket or a Conn.
type carrier[T any] interface {
	*T
	// count sets the item's Count and returns its descriptors.
	count() []int
	// what names the item in errors.
	what() string
}

func (s *Socket) count() []int { s.Count = len(s.FDs); return s.FDs }
func (s *Socket) what() string { return "listener " + s.Key }
func (c *Conn) count() []int   { c.Count = len(c.FDs); return c.FDs }
func (c *Conn) what() string   { return "a connection" }

// inBatches hands send the items in runs of at most MaxFDs descriptors in
// all, an item's never split between two runs, with those descriptors;
// last marks the final run, which may be empty. It returns how many items
// went in the runs sent.
func inBatches[T any, P carrier[T]](items []T, send func(batch []T, fds []int, last bool) error) (int, error) {
	start := 0
	var fds []int
	for i := range items {
		it := P(&items[i])
		own := it.count()
		if len(own) > MaxFDs {
			return start, fmt.Errorf("%s has %d descriptors, more than the %d one message carries", it.what(), len(own), MaxFDs)
		}
		if len(fds)+len(own) > MaxFDs {
			if err := send(items[start:i], fds, false); err != nil {
				return start, err
			}
			start, fds = i, nil
		}
		fds = append(fds, own...)
	}
	if err := send(items[start:], fds, true); err != nil {
		return start, err
	}
	return len(items), nil
}

// Start starts the new binary, hands it the sockets and returns once it
// serves them. If it exits, fails, speaks no common protocol version or
// does not serve within the timeout, Start stops it and returns why; the
// caller has changed nothing and goes on serving.
func Start(ctx context.Context, o Options) (*Handover, error) {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = ReadyTimeout
	}
	deadline := time.Now().Add(timeout)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("upgrade: create the channel to the new process: %w", os.NewSyscallError("socketpair", err))
	}
	c := &conn{fd: fds[0]}
	theirs := os.NewFile(uintptr(fds[1]), "upgrade channel")
	cmd := exec.Command(o.Exe, o.Args...)
	// The child's end is its descriptor 3 (the first of ExtraFiles).
	// WATCHDOG_PID names this process: the child, which pings the
	// watchdog once it is the main process, must not take it for another.
	cmd.Env = append(withoutVar(withoutVar(o.Env, EnvFD), "WATCHDOG_PID"), EnvFD+"=3")
	cmd.Stdout, cmd.Stderr = o.Stdout, o.Stderr
	cmd.ExtraFiles = []*os.File{theirs}
	err = cmd.Start()
	_ = theirs.Close() // the child has its own copy
	if err != nil {
		c.close()
		return nil, fmt.Errorf("upgrade: start %s: %w", o.Exe, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	fail := func(err error) (*Handover, error) {
		c.close() // a pj reads the end of the channel and exits
		select {
		case <-exited:
		case <-time.After(time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if waitErr != nil && !strings.Contains(err.Error(), waitErr.Error()) {
			err = fmt.Errorf("%w; the new process: %v", err, waitErr)
		}
		return nil, fmt.Errorf("upgrade to %s (pid %d) failed: %w", o.Exe, cmd.Process.Pid, err)
	}
	stop := context.AfterFunc(ctx, func() { c.close() })
	defer stop()

	version, err := handshake(c, deadline)
	if err != nil {
		return fail(err)
	}
	socks, err := o.Sockets()
	if err != nil {
		return fail(fmt.Errorf("take the listening sockets: %w", err))
	}
	var state json.RawMessage
	if o.State != nil {
		state = o.State()
	}
	err = sendSockets(c, socks, state)
	for _, s := range socks {
		CloseFDs(s.FDs) // sent (the child has its own), or given up
	}
	if err != nil {
		return fail(err)
	}
	m, extra, err := c.recv(deadline)
	CloseFDs(extra)
	switch {
	case err != nil:
		return fail(fmt.Errorf("waiting for it to serve: %w", err))
	case m.Type == "failed":
		return fail(errors.New(m.Error))
	case m.Type != "ready":
		return fail(fmt.Errorf("it answered %q, not ready", m.Type))
	}
	return &Handover{c: c, PID: cmd.Process.Pid, Version: version, Sockets: len(socks)}, nil
}

// handshake agrees on a protocol version with the child: the highest
// both speak.
func handshake(c *conn, deadline time.Time) (int, error) {
	hello, extra, err := c.recv(deadline)
	CloseFDs(extra)
	if err != nil {
		return 0, fmt.Errorf("waiting for its hello: %w", err)
	}
	if hello.Type != "hello" {
		return 0, fmt.Errorf("it began with %q, not hello: is it pj?", hello.Type)
	}
	version := common(Versions, hello.Versions)
	if version == 0 {
		msg := fmt.Sprintf("no common handover protocol version: the new binary speaks %v, this one %v", hello.Versions, Versions)
		_ = c.send(message{Type: "refuse", Error: msg}, nil)
		return 0, errors.New(msg)
	}
	return version, c.send(message{Type: "start", Version: version}, nil)
}

// sendSockets sends the sockets in messages of at most MaxFDs
// descriptors; a socket's descriptors never span two messages.
func sendSockets(c *conn, socks []Socket, state json.RawMessage) error {
	_, err := inBatches(socks, func(batch []Socket, fds []int, last bool) error {
		err := c.send(message{Type: "sockets", Sockets: batch, Last: last, State: state}, fds)
		state = nil // the state goes once
		return err
	})
	return err
}

// withoutVar returns env without the variable name.
func withoutVar(env []string, name string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// Child is the new process's end of an upgrade.
type Child struct {
	c       *conn
	Version int
	// Sockets are the listening sockets handed over; the child owns
	// their descriptors.
	Sockets []Socket
	// State is what the parent gave beside them (Options.State).
	State json.RawMessage
}

// FromEnv returns the child's end of an upgrade when pj was started by
// one (EnvFD is set), after receiving the sockets; nil, nil when it was
// not. It unsets EnvFD, so that pj's own upgrades do not see it.
func FromEnv() (*Child, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, nil
	}
	_ = os.Unsetenv(EnvFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: expected the number of a descriptor (pj sets it when it upgrades itself)", EnvFD, v)
	}
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("%s=%d: not the channel of an upgrade", EnvFD, fd)
	}
	unix.CloseOnExec(fd)
	c := &conn{fd: fd}
	ch := &Child{c: c}
	deadline := time.Now().Add(ReadyTimeout)
	if err := c.send(message{Type: "hello", Versions: Versions, PID: os.Getpid()}, nil); err != nil {
		c.close()
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	m, extra, err := c.recv(deadline)
	CloseFDs(extra)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("upgrade: waiting for the running pj: %w", err)
	}
	switch {
	case m.Type == "refuse":
		c.close()
		return nil, fmt.Errorf("upgrade refused by the running pj: %s", m.Error)
	case m.Type != "start" || !slices.Contains(Versions, m.Version):
		c.close()
		return nil, fmt.Errorf("upgrade: the running pj chose %q version %d; this one speaks %v", m.Type, m.Version, Versions)
	}
	ch.Version = m.Version
	for {
		m, fds, err := c.recv(deadline)
		if err != nil {
			ch.close()
			return nil, fmt.Errorf("upgrade: receiving the listening sockets: %w", err)
		}
		if m.Type != "sockets" {
			CloseFDs(fds)
			ch.close()
			return nil, fmt.Errorf("upgrade: expected the listening sockets, got %q", m.Type)
		}
		if len(m.State) > 0 {
			ch.State = m.State
		}
		for _, s := range m.Sockets {
			if s.Count < 0 || s.Count > len(fds) {
				CloseFDs(fds)
				ch.close()
				return nil, errors.New("upgrade: a message with fewer descriptors than it announces")
			}
			s.FDs, fds = fds[:s.Count:s.Count], fds[s.Count:]
			ch.Sockets = append(ch.Sockets, s)
		}
		CloseFDs(fds) // any the headers did not announce
		if m.Last {
			return ch, nil
		}
	}
}

// close closes the channel and every socket not taken.
func (ch *Child) close() {
	for _, s := range ch.Sockets {
		CloseFDs(s.FDs)
	}
	ch.Sockets = nil
	ch.c.close()
}

// Failed tells the running pj that this one cannot serve, and why.
func (ch *Child) Failed(err error) {
	_ = ch.c.send(message{Type: "failed", Error: err.Error()}, nil)
	ch.c.close()
}

// Ready tells the running pj that this one serves, takes each connection
// it moves (adopt owns the descriptors), and returns once the running pj
// has stopped accepting (or has gone away, or timeout has passed).
func (ch *Child) Ready(timeout time.Duration, adopt func(Conn)) error {
	defer ch.c.close()
	if err := ch.c.send(message{Type: "ready"}, nil); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		m, fds, err := ch.c.recv(deadline)
		if err != nil {
			return err
		}
		switch m.Type {
		case "done":
			CloseFDs(fds)
			return nil
		case "conns":
			for _, c := range m.Conns {
				if c.Count < 0 || c.Count > len(fds) {
					CloseFDs(fds)
					return errors.New("a message with fewer descriptors than it announces")
				}
				c.FDs, fds = fds[:c.Count:c.Count], fds[c.Count:]
				adopt(c)
			}
			CloseFDs(fds)
		default:
			CloseFDs(fds)
			return fmt.Errorf("expected connections or done, got %q", m.Type)
		}
	}
}

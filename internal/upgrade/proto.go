//go:build linux

// Package upgrade replaces a running pj by a new binary without refusing a
// connection: the running process (the parent) starts the new one (the
// child) and hands it its listening sockets, and the child serves them
// before the parent stops accepting.
//
// The two talk over a unix SOCK_SEQPACKET socket pair: one message per
// packet, a JSON header, and descriptors passed alongside with
// SCM_RIGHTS, at most MaxFDs per message. The conversation:
//
//	child  → parent  hello     {versions: [1], pid}
//	parent → child   start     {version}            (or refuse {error})
//	parent → child   sockets   {sockets}, descriptors  (repeated; the last has last: true)
//	child  → parent  ready                           (or failed {error})
//	parent → child   conns     {conns}, descriptors  (repeated: established connections)
//	parent → child   done                            (the parent has stopped accepting)
//
// The child names the versions it speaks; the parent picks the highest it
// speaks too. A pj that shares no version with the other refuses cleanly
// and the running one goes on, so an upgrade to an older binary (a
// rollback) works as long as the two share a version.
package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Versions are the handover protocol versions this pj speaks, oldest first.
var Versions = []int{1}

// EnvFD names the environment variable that gives the child the number of
// its end of the socket pair.
const EnvFD = "PJ_UPGRADE_FD"

// MaxFDs is the most descriptors one message carries: the kernel's
// SCM_MAX_FD.
const MaxFDs = 253

// maxMessage bounds a message's JSON header: send refuses a longer one,
// and recv reads into a buffer of this size.
const maxMessage = 1 << 20

// ReadyTimeout is how long the parent waits for the child to serve.
const ReadyTimeout = 30 * time.Second

// Socket is one listening socket handed over: the listener of a proxy.
type Socket struct {
	// Key identifies the listener: its listen address (and network), or
	// for an ephemeral port, its proxy's name too.
	Key string `json:"key"`
	// UDP: the socket's descriptors are a UDP listener's, one per loop.
	UDP bool `json:"udp,omitempty"`
	// Count is how many descriptors of the message are this socket's.
	Count int `json:"fds"`
	// FDs are the descriptors; they travel beside the header. Raw
	// numbers, never an *os.File: its Fd method would make the socket,
	// shared with the other process, blocking.
	FDs []int `json:"-"`
}

// Conn is one established connection handed over: its state, as the
// engine writes it, and its descriptors.
type Conn struct {
	State json.RawMessage `json:"state"`
	Count int             `json:"fds"`
	FDs   []int           `json:"-"`
}

type message struct {
	Type     string   `json:"type"`
	Versions []int    `json:"versions,omitempty"`
	Version  int      `json:"version,omitempty"`
	PID      int      `json:"pid,omitempty"`
	Error    string   `json:"error,omitempty"`
	Sockets  []Socket `json:"sockets,omitempty"`
	Conns    []Conn   `json:"conns,omitempty"`
	// State is what the parent's server says of itself beside its
	// sockets (its backends' states), opaque to the protocol.
	State json.RawMessage `json:"state,omitempty"`
	Last  bool            `json:"last,omitempty"`
}

// conn is one end of the socket pair.
type conn struct {
	fd       int
	buf, oob []byte // recv's, made by its first call and reused
}

// send writes m with files beside it (at most MaxFDs).
func (c *conn) send(m message, fds []int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(fds) > MaxFDs {
		return fmt.Errorf("send %s: %d descriptors, at most %d per message", m.Type, len(fds), MaxFDs)
	}
	if len(b) > maxMessage {
		return fmt.Errorf("send %s: a header of %d bytes, at most %d per message", m.Type, len(b), maxMessage)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for {
		err = unix.Sendmsg(c.fd, b, oob, nil, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("send %s: %w", m.Type, os.NewSyscallError("sendmsg", err))
	}
	return nil
}

// recv reads one message and the descriptors that came with it, waiting
// at most until deadline.
func (c *conn) recv(deadline time.Time) (message, []int, error) {
	var m message
	wait := time.Until(deadline)
	if wait <= 0 {
		return m, nil, errors.New("timed out")
	}
	pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, int(wait.Milliseconds())+1)
		if err == unix.EINTR {
			wait = time.Until(deadline)
			if wait <= 0 {
				return m, nil, errors.New("timed out")
			}
			continue
		}
		if err != nil {
			return m, nil, os.NewSyscallError("poll", err)
		}
		if n == 0 {
			return m, nil, errors.New("timed out")
		}
		break
	}
	if c.buf == nil {
		c.buf, c.oob = make([]byte, maxMessage), make([]byte, unix.CmsgSpace(MaxFDs*4))
	}
	buf, oob := c.buf, c.oob
	var (
		n, oobn, flags int
		err            error
	)
	for {
		n, oobn, flags, _, err = unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return m, nil, os.NewSyscallError("recvmsg", err)
	}
	files, ferr := parseRights(oob[:oobn])
	if n == 0 {
		CloseFDs(files)
		return m, nil, errors.New("the other process closed the channel")
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		CloseFDs(files)
		return m, nil, errors.New("a message too large for the channel")
	}
	if ferr != nil {
		CloseFDs(files)
		return m, nil, ferr
	}
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		CloseFDs(files)
		return m, nil, fmt.Errorf("a malformed message: %w", err)
	}
	return m, files, nil
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, os.NewSyscallError("parse control message", err)
	}
	var out []int
	for _, cm := range msgs {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			continue
		}
		out = append(out, fds...)
	}
	return out, nil
}

// CloseFDs closes descriptors nobody will use; it skips negative ones.
// There is nothing to do about a failed close of an unused descriptor.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
	}
}

func (c *conn) close() { _ = unix.Close(c.fd) }

// common returns the highest version both a and b have, or 0.
func common(a, b []int) int {
	best := 0
	for _, v := range a {
		if slices.Contains(b, v) && v > best {
			best = v
		}
	}
	return best
}

package server_test

import (
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestAcceptedAndDialledSocketsKeepAlive(t *testing.T) {
	// The accepted socket inherits keepalive from the listener
	// (controlListener); the dialled one gets it from the dialer.
	backendSide := make(chan net.Conn, 1)
	ln := testutil.Listen(t, "tcp4")
	testutil.Serve(t, ln, func(c net.Conn) {
		backendSide <- c
		_, _ = io.Copy(io.Discard, c)
	})
	s := pjtest.Start(t, pjconf.Config(pjconf.Proxy("", "127.0.0.1:0", ln.Addr().String())), server.Options{})
	c := testutil.Dial(t, s.Addrs()[0].String())
	<-backendSide
	found := 0
	testutil.WaitFor(t, 5*time.Second, "two relayed sockets", func() bool {
		found = 0
		for _, info := range tcpSockets(t) {
			// The client side carries pj's timers (inherited from the
			// listener); the backend side has the kernel's.
			client := info.local == s.Addrs()[0].String() && info.idle == int(server.KeepAlive.Idle.Seconds())
			backend := info.remote == ln.Addr().String()
			if info.keepalive && info.nodelay && (client || backend) {
				found++
			}
		}
		return found == 2
	})
	_ = c.Close()
}

type sockInfo struct {
	local, remote string
	keepalive     bool
	nodelay       bool
	idle          int
}

// tcpSockets lists this process's connected TCP sockets with their
// keepalive settings, read straight from the descriptors.
func tcpSockets(t *testing.T) []sockInfo {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []sockInfo
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || !strings.HasPrefix(target, "socket:") {
			continue
		}
		peer, err := unix.Getpeername(fd)
		if err != nil {
			continue // a listener, or not connected
		}
		local, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		ka, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		nd, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		out = append(out, sockInfo{local: sockaddr(local), remote: sockaddr(peer), keepalive: ka == 1, idle: idle, nodelay: nd == 1})
	}
	return out
}

func sockaddr(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	}
	return ""
}

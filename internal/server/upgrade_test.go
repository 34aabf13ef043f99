package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/balance"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// TestHandOverSockets: a second server built from the first one's sockets
// serves the same addresses (ephemeral ports and UDP included); once the
// first stops accepting, its established connections and UDP sessions
// still get their answers, and new ones reach the second.
func TestHandOverSockets(t *testing.T) {
	tcpEcho, a, b := testutil.StartEcho(t), udpEcho(t, "a:"), udpEcho(t, "b:")
	x := testutil.ClosedAddr(t)
	// A short grace period: the old server's session is cut at the end.
	cfgA := cfgOf(100*time.Millisecond, pjtest.Proxy("web", x, tcpEcho), pjtest.Proxy("eph", "127.0.0.1:0", tcpEcho),
		udpProxy("dns", "127.0.0.1:0/udp", time.Minute, a))
	old := pjtest.Start(t, cfgA, server.Options{Loops: 2})
	addrs := old.Addrs()

	established := testutil.Dial(t, x)
	testutil.RoundTrip(t, established, "before")
	session := newUDPClient(t)
	if got := session.ask(addrs[2], "1", 5*time.Second); got != "a:1" {
		t.Fatal(got)
	}

	socks, err := old.HandOverSockets()
	if err != nil {
		t.Fatal(err)
	}
	if len(socks) != 3 || !socks[2].UDP || len(socks[2].FDs) != 2 {
		t.Fatalf("handed over %+v", socks)
	}
	// The new server has one loop, which serves both UDP sockets. Its
	// UDP backend differs, to tell the processes apart.
	cfgB := cfgOf(100*time.Millisecond, pjtest.Proxy("web", x, tcpEcho), pjtest.Proxy("eph", "127.0.0.1:0", tcpEcho),
		udpProxy("dns", "127.0.0.1:0/udp", time.Minute, b))
	next := pjtest.Start(t, cfgB, server.Options{Loops: 1, HandedOver: socks})
	for i, addr := range next.Addrs() {
		if addr.String() != addrs[i].String() {
			t.Fatalf("listener %d: %s, want the handed-over %s", i, addr, addrs[i])
		}
	}
	old.StopAccepting()

	for _, addr := range []string{x, addrs[1].String()} {
		c := testutil.Dial(t, addr)
		if got := testutil.RoundTrip(t, c, "new"); got != "new" {
			t.Fatalf("%s after the hand-over: %q", addr, got)
		}
	}
	if n := len(old.Logs.Lines("-> " + x + " -> ")); n != 0 {
		t.Fatalf("the old server took %d connections after it stopped accepting", n)
	}
	if got := testutil.RoundTrip(t, established, "after"); got != "after" {
		t.Fatalf("the established connection after the hand-over: %q", got)
	}
	// The old session's next datagram reaches the new server, which opens
	// a session of its own; a new client's too.
	if got := session.ask(addrs[2], "2", 5*time.Second); got != "b:2" {
		t.Fatalf("the UDP client after the hand-over got %q, want b:2", got)
	}
	if got := newUDPClient(t).ask(addrs[2], "3", 5*time.Second); got != "b:3" {
		t.Fatalf("a new UDP client got %q, want b:3", got)
	}
	if _, err := old.HandOverSockets(); err == nil {
		t.Fatal("a server that stopped accepting handed its sockets over again")
	}
}

// TestBackendStatesCarryOver: what an operator said of a backend (drain)
// and what the checks concluded (down) reach the new server.
func TestBackendStatesCarryOver(t *testing.T) {
	a, b := testutil.StartEcho(t), testutil.StartEcho(t)
	cfg := cfgOf(100*time.Millisecond, pjtest.Proxy("web", "127.0.0.1:0", a, b))
	cfg.Proxies[0].HealthCheck.Interval = 0
	old := pjtest.Start(t, cfg, server.Options{})
	backends := old.Proxies()[0].Proxy.Backends()
	backends[0].SetAdmin(balance.AdminDrain)
	backends[1].Restore(balance.AdminUp, false)

	next := pjtest.Start(t, cfg, server.Options{})
	if n := next.RestoreBackendStates(old.BackendStates()); n != 2 {
		t.Fatalf("restored %d backend states, want 2", n)
	}
	got := map[string]string{}
	for _, be := range next.Proxies()[0].Proxy.Backends() {
		got[be.Address] = be.StateName() + fmt.Sprint(" healthy=", be.Healthy())
	}
	want := map[string]string{a: "drain healthy=true", b: "down healthy=false"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("states %v, want %v", got, want)
	}
}

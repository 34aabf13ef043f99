// Package udp is pj's data path for UDP on Linux, the sibling of package
// engine (TCP): it shares admission, balancing and observation with it, but
// not its loops.
//
// A session is a client address and port of one listener. Its datagrams go
// to one backend through a socket connected to that backend (so the kernel
// delivers only that backend's replies to it, and turns an ICMP port
// unreachable into ECONNREFUSED); the replies go back to the client
// through the listener's own socket, from the address the client sent to.
//
// A few event loops (one per CPU) each own an epoll instance, one socket
// of every listener (the sockets share the address with SO_REUSEPORT, and
// the kernel hashes each client to one of them, so a session lives in one
// loop and its state is never shared), and the sessions of that socket:
// a table keyed by client, a list by last activity, and a heap of idle
// deadlines. A session costs its socket and a small struct: no goroutine,
// no buffer.
//
// Datagrams move in batches through loop-owned slots big enough for the
// largest datagram: recvmmsg reads up to 32 from a listener at once; the
// consecutive datagrams of one client go on with one send (one GSO send
// when they have one size: one trip through the stack, split again by
// the kernel at the same boundaries); replies read from many sessions are
// queued and leave with one sendmmsg per listener socket. With UDP GRO,
// datagrams the kernel coalesced are passed on coalesced, with their
// segment size, and counted one by one. pj never splits or merges a
// datagram: what the client sent is what the backend gets, and back.
//
// The table is bounded: a proxy holds at most max_connections sessions
// (DefaultMaxSessions without it). At the cap, the session least recently
// active in the loop the new source's datagrams reach gives its place to
// it if it has been quiet for a second; when none there has, another loop
// is asked to end its least recently active one if quiet, and the new
// source's next datagram takes that place. A session in use is never
// evicted, so a flood of spoofed source
// addresses can take the places of idle sessions only, and costs at most
// the cap in sockets. Datagrams refused (the allow/deny lists, the rate of
// new sessions per client, the caps) are counted per reason and reported
// at most every few seconds, never logged one by one.
package udp

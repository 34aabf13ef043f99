package testutil

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// DNS is a tiny authoritative DNS server on UDP loopback for tests of
// backend discovery: it answers A, AAAA and SRV questions from tables the
// test changes while it runs, and NXDOMAIN for names it does not know.
type DNS struct {
	Addr string // HOST:PORT to use as a resolver

	mu      sync.Mutex
	ips     map[string][]netip.Addr
	srvs    map[string][]net.SRV
	failing bool
	queries int
}

// StartDNS starts a DNS server; it stops at the end of the test.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	d := &DNS{ips: map[string][]netip.Addr{}, srvs: map[string][]net.SRV{}}
	d.Addr = ServeUDP(t, d.answer).String()
	return d
}

// SetIPs makes name resolve to addrs (A and AAAA records).
func (d *DNS) SetIPs(name string, addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ips []netip.Addr
	for _, a := range addrs {
		ips = append(ips, netip.MustParseAddr(a))
	}
	d.ips[fqdn(name)] = ips
}

// Remove forgets name: questions about it get NXDOMAIN.
func (d *DNS) Remove(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.ips, fqdn(name))
	delete(d.srvs, fqdn(name))
}

// SetSRV makes name have the SRV records recs.
func (d *DNS) SetSRV(name string, recs ...net.SRV) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srvs[fqdn(name)] = recs
}

// SetFailing makes every answer SERVFAIL while on: an outage of the DNS
// service, as opposed to a name that does not exist.
func (d *DNS) SetFailing(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failing = on
}

// Queries is the number of questions asked so far.
func (d *DNS) Queries() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries
}

func fqdn(name string) string {
	if strings.HasSuffix(name, ".") {
		return strings.ToLower(name)
	}
	return strings.ToLower(name) + "."
}

func (d *DNS) answer(req []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	name := strings.ToLower(q.Name.String())
	d.mu.Lock()
	d.queries++
	ips, knownIP := d.ips[name]
	srvs, knownSRV := d.srvs[name]
	failing := d.failing
	d.mu.Unlock()

	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	switch {
	case failing:
		rh.RCode = dnsmessage.RCodeServerFailure
		ips, srvs = nil, nil
	case !knownIP && !knownSRV:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	res := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
	switch q.Type {
	case dnsmessage.TypeA:
		for _, ip := range ips {
			if ip.Is4() {
				_ = b.AResource(res, dnsmessage.AResource{A: ip.As4()})
			}
		}
	case dnsmessage.TypeAAAA:
		for _, ip := range ips {
			if ip.Is6() {
				_ = b.AAAAResource(res, dnsmessage.AAAAResource{AAAA: ip.As16()})
			}
		}
	case dnsmessage.TypeSRV:
		for _, s := range srvs {
			target, err := dnsmessage.NewName(fqdn(s.Target))
			if err != nil {
				continue
			}
			_ = b.SRVResource(res, dnsmessage.SRVResource{Priority: s.Priority, Weight: s.Weight, Port: s.Port, Target: target})
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

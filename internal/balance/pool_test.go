package balance

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

// fakeResolver answers from tables; unknown names fail.
type fakeResolver struct {
	hosts map[string][]string
	srv   map[string][]*net.SRV
}

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	addrs, ok := f.hosts[host]
	if !ok {
		return nil, errors.New("no such host")
	}
	var out []netip.Addr
	for _, a := range addrs {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, nil
}

func (f fakeResolver) LookupSRV(_ context.Context, _, _, name string) (string, []*net.SRV, error) {
	recs, ok := f.srv[name]
	if !ok {
		return "", nil, errors.New("no such SRV name")
	}
	return name, recs, nil
}

func cfgBackends(addrs ...string) []config.Backend {
	var out []config.Backend
	for _, a := range addrs {
		out = append(out, config.Backend{Address: a, Weight: 1})
	}
	return out
}

func addresses(bs []*Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Address)
	}
	return out
}

var resolver = fakeResolver{
	hosts: map[string][]string{"web": {"10.0.0.1", "10.0.0.2"}, "v6": {"2001:db8::1"}, "dup": {"10.0.0.1"},
		"a.svc": {"10.1.0.1"}, "b.svc": {"10.1.0.2"}, "c.svc": {"10.1.0.3"}},
	srv: map[string][]*net.SRV{"_http._tcp.web.svc": {
		{Target: "a.svc.", Port: 8080, Priority: 10, Weight: 3},
		{Target: "b.svc.", Port: 8081, Priority: 10, Weight: 1},
		{Target: "c.svc.", Port: 8082, Priority: 20, Weight: 1},
	}},
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		in      config.Backend
		want    []string
		weights []int
		backups []bool
		err     string
	}{
		{"literal IPv4", config.Backend{Address: "10.0.0.9:80", Weight: 2}, []string{"10.0.0.9:80"}, []int{2}, []bool{false}, ""},
		{"literal IPv6", config.Backend{Address: "[::1]:80", Weight: 1}, []string{"[::1]:80"}, []int{1}, []bool{false}, ""},
		{"mapped IPv4 is IPv4", config.Backend{Address: "[::ffff:10.0.0.3]:80", Weight: 1}, []string{"10.0.0.3:80"}, []int{1}, []bool{false}, ""},
		{"a name: one backend per address", config.Backend{Address: "web:80", Weight: 1, Backup: true}, []string{"10.0.0.1:80", "10.0.0.2:80"}, []int{1, 1}, []bool{true, true}, ""},
		{"IPv6 answer", config.Backend{Address: "v6:443", Weight: 1}, []string{"[2001:db8::1]:443"}, []int{1}, []bool{false}, ""},
		{"SRV: ports, weights, lower priorities become backups", config.Backend{Address: "_http._tcp.web.svc", Weight: 1},
			[]string{"10.1.0.1:8080", "10.1.0.2:8081", "10.1.0.3:8082"}, []int{3, 1, 1}, []bool{false, false, true}, ""},
		{"an unknown name", config.Backend{Address: "nowhere:80", Weight: 1}, nil, nil, nil, "resolve nowhere"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveOne(context.Background(), tt.in, resolver, map[string]*State{})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(addresses(got), tt.want) {
				t.Fatalf("backends %v, want %v", addresses(got), tt.want)
			}
			for i, b := range got {
				if b.Weight != tt.weights[i] || b.Backup != tt.backups[i] || b.Name != tt.in.Address || b.State == nil {
					t.Fatalf("backend %s: weight %d backup %v name %q", b.Address, b.Weight, b.Backup, b.Name)
				}
			}
		})
	}
}

func TestNewSetKeepsStatesAndNamesUnresolved(t *testing.T) {
	old := mustSet(t, cfgBackends("10.0.0.1:80", "10.0.0.2:80"), nil)
	first := old.Pool().Backends()[0]
	first.Total.Add(7)
	s := mustSet(t, cfgBackends("10.0.0.1:80", "10.0.0.3:80", "nowhere.invalid:80"), old)
	bs := s.Pool().Backends()
	if got := addresses(bs); !slices.Equal(got, []string{"10.0.0.1:80", "10.0.0.3:80", "nowhere.invalid:80"}) {
		t.Fatalf("backends %v", got)
	}
	if bs[0].State != first.State || bs[0].Total.Load() != 7 {
		t.Fatal("the backend that stayed lost its state")
	}
	if bs[2].Err == nil || bs[2].Addr.IsValid() {
		t.Fatalf("an unresolvable name must stay as a backend with its error: %+v", bs[2])
	}
}

func TestRefreshFollowsDNSAndKeepsTheLastAnswerOnFailure(t *testing.T) {
	r := fakeResolver{hosts: map[string][]string{"web": {"10.0.0.1", "10.0.0.2"}}}
	s := mustSet(t, cfgBackends("web:80"), nil)
	s.r = r
	s.Refresh(context.Background())
	if got := addresses(s.Pool().Backends()); !slices.Equal(got, []string{"10.0.0.1:80", "10.0.0.2:80"}) {
		t.Fatalf("backends %v", got)
	}
	kept := s.Pool().Backends()[0].State
	r.hosts["web"] = []string{"10.0.0.1", "10.0.0.3"} // a pod replaced
	s.Refresh(context.Background())
	bs := s.Pool().Backends()
	if got := addresses(bs); !slices.Equal(got, []string{"10.0.0.1:80", "10.0.0.3:80"}) {
		t.Fatalf("after the change: %v", got)
	}
	if bs[0].State != kept {
		t.Fatal("10.0.0.1 lost its state across a DNS change")
	}
	delete(r.hosts, "web") // the DNS server fails
	s.Refresh(context.Background())
	if got := addresses(s.Pool().Backends()); !slices.Equal(got, []string{"10.0.0.1:80", "10.0.0.3:80"}) {
		t.Fatalf("a failed lookup changed the pool: %v", got)
	}
}

// pool builds a round-robin pool of primaries and backups.
func pool(t *testing.T, primaries, backups []string) *Pool {
	t.Helper()
	var bs []*Backend
	for _, a := range primaries {
		bs = append(bs, &Backend{Address: a, Weight: 1, State: newState()})
	}
	for _, a := range backups {
		bs = append(bs, &Backend{Address: a, Weight: 1, Backup: true, State: newState()})
	}
	p, err := NewPool(bs, config.RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// mustSet is NewSet for a configuration that is valid.
func mustSet(t *testing.T, backends []config.Backend, prev *Set) *Set {
	t.Helper()
	s, err := NewSet(context.Background(), "web", backends, config.Default().Defaults, nil, prev)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func order(p *Pool) []string {
	o := p.Start(netip.Addr{})
	var out []string
	for b := o.Next(); b != nil; b = o.Next() {
		out = append(out, b.Address)
	}
	return out
}

func markDown(t *testing.T, b *Backend) {
	t.Helper()
	for range 3 {
		b.Observe(Result{Err: errors.New("refused")}, 2, 3)
	}
	if b.Healthy() {
		t.Fatal("not down after 3 failures with fall 3")
	}
}

func TestOrder(t *testing.T) {
	p := pool(t, []string{"a", "b", "c"}, []string{"x", "y"})
	bs := p.Backends()
	// Round-robin start, every primary once, then the backups.
	for _, first := range []string{"a", "b", "c", "a"} {
		got := order(p)
		if got[0] != first || len(got) != 5 || got[3] != "x" || got[4] != "y" {
			t.Fatalf("order %v, want %s first, all three primaries, then x, y", got, first)
		}
	}
	// A drained or unhealthy primary is skipped.
	bs[1].SetAdmin(AdminDrain)
	markDown(t, bs[2])
	for range 3 {
		if got := order(p); !slices.Equal(got, []string{"a", "x", "y"}) {
			t.Fatalf("order %v, want a, x, y", got)
		}
	}
	// No primary eligible: backups only.
	markDown(t, bs[0])
	if got := order(p); !slices.Equal(got, []string{"x", "y"}) {
		t.Fatalf("order %v, want x, y", got)
	}
	// Nothing eligible at all: the last resort tries what is in service
	// (not the drained one), primaries first.
	markDown(t, bs[3])
	markDown(t, bs[4])
	got := order(p)
	if len(got) != 4 || slices.Contains(got, "b") || !slices.Contains(got[:2], "a") || !slices.Contains(got[:2], "c") {
		t.Fatalf("last resort %v, want a and c (in turn), then x, y; never the drained b", got)
	}
}

func TestOrderAllocatesNothing(t *testing.T) {
	p := pool(t, []string{"a", "b"}, []string{"x"})
	allocs := testing.AllocsPerRun(100, func() {
		o := p.Start(netip.Addr{})
		for b := o.Next(); b != nil; b = o.Next() {
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per connection, want 0", allocs)
	}
}

func TestOrderOfAnEmptyPool(t *testing.T) {
	if got := order(pool(t, nil, nil)); len(got) != 0 {
		t.Fatalf("got %v from an empty pool", got)
	}
}

func TestObserve(t *testing.T) {
	fail := Result{Err: errors.New("connect: connection refused")}
	ok := Result{OK: true}
	tests := []struct {
		name    string
		steps   []Result
		healthy bool
		changes []string // reasons of the transitions, in order
	}{
		{"two failures of three keep it up", []Result{fail, fail}, true, nil},
		{"three failures take it down, once", []Result{fail, fail, fail, fail},
			false, []string{"down: connect: connection refused (3 of 3 checks failed)"}},
		{"a success resets the count", []Result{fail, fail, ok, fail, fail}, true, nil},
		{"rise 2 brings it back", []Result{fail, fail, fail, ok, ok},
			true, []string{"down: connect: connection refused (3 of 3 checks failed)", "up: 2 of 2 checks passed"}},
		{"one probe is not enough", []Result{fail, fail, fail, ok}, false,
			[]string{"down: connect: connection refused (3 of 3 checks failed)"}},
		{"passive failures count, a passive success brings it back",
			[]Result{{Err: errors.New("connect: connection refused"), Passive: true}, {Err: errors.New("x"), Passive: true},
				{Err: errors.New("connect: connection refused"), Passive: true}, {OK: true, Passive: true}},
			true, []string{"down: connect: connection refused (3 connection attempts in a row failed)", "up: a connection got through"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newState()
			var changes []string
			for _, r := range tt.steps {
				if tr, changed := st.Observe(r, 2, 3); changed {
					dir := "down: "
					if tr.Up {
						dir = "up: "
					}
					changes = append(changes, dir+tr.Reason)
				}
			}
			if st.Healthy() != tt.healthy || !slices.Equal(changes, tt.changes) {
				t.Fatalf("healthy %v, changes %q; want %v, %q", st.Healthy(), changes, tt.healthy, tt.changes)
			}
		})
	}
}

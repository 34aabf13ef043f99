package admin

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	tu "github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// pj is a running server with an admin listener, in-process.
type pj struct {
	srv   *pjtest.Server
	admin string // base URL
	logs  *tu.Buffer
}

func start(t *testing.T, opt Options, proxies ...config.Proxy) *pj {
	t.Helper()
	srv := pjtest.Start(t, pjconf.Config(proxies...), server.Options{})
	opt.Logger = srv.Log
	a, err := Listen("127.0.0.1:0", srv, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return &pj{srv: srv, admin: "http://" + a.Addr().String(), logs: srv.Logs}
}

func (p *pj) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(p.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *pj) do(t *testing.T, method, path, body, token string) (int, string) {
	t.Helper()
	var headers map[string]string
	if token != "" {
		headers = map[string]string{"Authorization": "Bearer " + token}
	}
	return p.send(t, method, path, "", body, headers)
}

func (p *pj) proxies(t *testing.T) proxiesJSON {
	t.Helper()
	code, body := p.get(t, "/api/v1/proxies")
	var v proxiesJSON
	if code != 200 || json.Unmarshal([]byte(body), &v) != nil {
		t.Fatalf("GET /api/v1/proxies: %d %s", code, body)
	}
	return v
}

func (p *pj) connections(t *testing.T) []connectionJSON {
	t.Helper()
	code, body := p.get(t, "/api/v1/connections")
	var v connectionsJSON
	if code != 200 || json.Unmarshal([]byte(body), &v) != nil {
		t.Fatalf("GET /api/v1/connections: %d %s", code, body)
	}
	return v.Connections
}

// metrics scrapes /metrics and returns the families by name.
func (p *pj) metrics(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := p.get(t, "/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of the series of family name with the labels.
// onlyConnection waits until the connection table holds one connection,
// down bytes sent to its client, and returns it.
func (p *pj) onlyConnection(t *testing.T, down int64) connectionJSON {
	t.Helper()
	var conns []connectionJSON
	tu.WaitFor(t, 10*time.Second, "the connection in the table", func() bool {
		conns = p.connections(t)
		return len(conns) == 1 && conns[0].BytesDown == down
	})
	return conns[0]
}

// series is a metric's name and labels, and the value it must have.
type series struct {
	name   string
	labels map[string]string
	want   float64
}

// wantSeries fails the test for every one of ss whose value in fams is
// not its want.
func wantSeries(t *testing.T, fams map[string]*dto.MetricFamily, ss []series) {
	t.Helper()
	for _, s := range ss {
		if got := value(t, fams, s.name, s.labels); got != s.want {
			t.Errorf("%s%v = %v, want %v", s.name, s.labels, got, s.want)
		}
	}
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
series:
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

// roundTrips opens n connections through addr, each echoing msg, closing
// each after its echo.
func roundTrips(t *testing.T, addr, msg string, n int) {
	t.Helper()
	for range n {
		c := tu.Dial(t, addr)
		if got := tu.RoundTrip(t, c, msg); got != msg {
			t.Fatalf("echo %q", got)
		}
		_ = c.CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.ReadAll(c)
		_ = c.Close()
	}
}

func TestHealthAndReadiness(t *testing.T) {
	echo := tu.StartEcho(t)
	p := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", echo))
	if code, body := p.get(t, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, _ := p.get(t, "/readyz"); code != 200 {
		t.Fatalf("/readyz with a healthy backend: %d", code)
	}
	if code, _ := p.do(t, "PUT", "/api/v1/proxies/web/backends/"+echo+"/state", "drain", ""); code != 200 {
		t.Fatalf("drain: %d", code)
	}
	if code, body := p.get(t, "/readyz"); code != 503 || !strings.Contains(body, "web") {
		t.Fatalf("/readyz with its only backend drained: %d %q; want 503 naming the proxy", code, body)
	}
}

func TestProxiesAndMetricsCountExactly(t *testing.T) {
	echo := tu.StartEcho(t)
	p := start(t, Options{Version: "v9.9.9"}, pjconf.Proxy("web", "127.0.0.1:0", echo))
	addr := p.proxies(t).Proxies[0].Listen
	roundTrips(t, addr, "12345", 3)

	// Two connections held open, one of which has moved 100 bytes each way.
	held1, held2 := tu.Dial(t, addr), tu.Dial(t, addr)
	big := strings.Repeat("x", 100)
	if got := tu.RoundTrip(t, held1, big); got != big {
		t.Fatal("echo")
	}
	tu.RoundTrip(t, held2, "")
	var v proxiesJSON
	// The counts are read while the loops update them: wait until they
	// have caught up with what the clients saw.
	tu.WaitFor(t, 10*time.Second, "three finished and two open connections", func() bool {
		v = p.proxies(t)
		pr := v.Proxies[0]
		return pr.ConnectionsTotal == 3 && pr.ActiveConnections == 2 && pr.BytesUp == 115 && pr.BytesDown == 115
	})
	pr := v.Proxies[0]
	if pr.Name != "web" || pr.Balance != "round-robin" || pr.BytesUp != 115 || pr.BytesDown != 115 {
		t.Fatalf("proxy %+v: want bytes 115 each way (3×5 finished, 100 still open)", pr)
	}
	b := pr.Backends[0]
	if b.Address != echo || b.State != "up" || b.Weight != 1 || b.Backup || b.ActiveConnections != 2 || b.ConnectionsTotal != 5 {
		t.Fatalf("backend %+v", b)
	}

	fams := p.metrics(t)
	wantSeries(t, fams, []series{
		{"pj_connections_total", map[string]string{"proxy": "web", "status": "ok"}, 3},
		{"pj_connections_total", map[string]string{"proxy": "web", "status": "reset"}, 0},
		{"pj_active_connections", map[string]string{"proxy": "web"}, 2},
		{"pj_bytes_total", map[string]string{"proxy": "web", "direction": "up"}, 115},
		{"pj_bytes_total", map[string]string{"proxy": "web", "direction": "down"}, 115},
		{"pj_backend_up", map[string]string{"proxy": "web", "backend": echo}, 1},
		{"pj_backend_active_connections", map[string]string{"proxy": "web", "backend": echo}, 2},
		{"pj_backend_connections_total", map[string]string{"proxy": "web", "backend": echo}, 5},
		{"pj_backend_connect_seconds", map[string]string{"proxy": "web", "backend": echo}, 5},
		{"pj_connection_duration_seconds", map[string]string{"proxy": "web"}, 3},
		{"pj_config_reloads_total", map[string]string{"result": "success"}, 0},
		{"pj_build_info", map[string]string{"version": "v9.9.9"}, 1},
		{"pj_panics_total", nil, 0},
	})
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s: the Go and process collectors must be there", name)
		}
	}

	// Bytes advance while a connection is open, not only when it closes.
	if got := tu.RoundTrip(t, held1, big); got != big {
		t.Fatal("echo")
	}
	tu.WaitFor(t, 10*time.Second, "the open connection's bytes to count", func() bool {
		return value(t, p.metrics(t), "pj_bytes_total", map[string]string{"proxy": "web", "direction": "up"}) == 215
	})
}

// TestClientTableMetrics: a proxy with per-client limits shows its table
// of clients; one without has no such series.
func TestClientTableMetrics(t *testing.T) {
	echo := tu.StartEcho(t)
	limited := pjconf.Proxy("limited", "127.0.0.1:0", echo)
	limited.MaxConnectionsPerClient = 1
	p := start(t, Options{}, limited, pjconf.Proxy("open", "127.0.0.1:0", echo))
	held := tu.Dial(t, p.srv.Addrs()[0].String())
	tu.RoundTrip(t, held, "x")
	refused := tu.Dial(t, p.srv.Addrs()[0].String())
	if got := tu.ReadAll(t, refused); got != "" {
		t.Fatalf("a second connection over the cap of 1 read %q", got)
	}
	fams := p.metrics(t)
	if got := value(t, fams, "pj_clients_tracked", map[string]string{"proxy": "limited"}); got != 1 {
		t.Errorf("pj_clients_tracked{proxy=limited} = %v, want 1 (127.0.0.1)", got)
	}
	for _, name := range []string{"pj_clients_evicted_total", "pj_clients_forgiven_total", "pj_clients_untracked_connections_total"} {
		if got := value(t, fams, name, map[string]string{"proxy": "limited"}); got != 0 {
			t.Errorf("%s = %v, want 0", name, got)
		}
	}
	for _, m := range fams["pj_clients_tracked"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "proxy" && l.GetValue() == "open" {
				t.Errorf("a proxy without per-client limits has a pj_clients_tracked series")
			}
		}
	}
}

func TestMetricNamesPassLint(t *testing.T) {
	echo := tu.StartEcho(t)
	p := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", echo))
	problems, err := testutil.CollectAndLint(newCollector(p.srv, "test", func() uint64 { return 3 }))
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("%s: %s", pr.Metric, pr.Text)
	}
}

func TestConnectionTableAndKill(t *testing.T) {
	echo := tu.StartEcho(t)
	p := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", echo))
	addr := p.proxies(t).Proxies[0].Listen
	c := tu.Dial(t, addr)
	if got := tu.RoundTrip(t, c, "0123456789"); got != "0123456789" {
		t.Fatal(got)
	}
	cj := p.onlyConnection(t, 10)
	if cj.Client != c.LocalAddr().String() || cj.Proxy != "web" || cj.Listener != addr || cj.Backend != echo ||
		cj.BytesUp != 10 || !strings.HasPrefix(cj.ID, "c") || cj.AgeSeconds < 0 {
		t.Fatalf("connection %+v", cj)
	}
	if _, err := time.Parse(time.RFC3339, cj.Started); err != nil {
		t.Fatalf("started %q: %v", cj.Started, err)
	}

	if code, body := p.do(t, "DELETE", "/api/v1/connections/"+cj.ID, "", ""); code != 204 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("the killed connection read %q, %v; want EOF", b, err)
	}
	line := p.logs.WaitLines(t, "[killed]", 1)[0]
	if !strings.Contains(line, "closed_by=pj") {
		t.Fatalf("log line %q", line)
	}
	if code, _ := p.do(t, "DELETE", "/api/v1/connections/"+cj.ID, "", ""); code != 404 {
		t.Fatalf("DELETE of a closed connection: %d, want 404", code)
	}
	if code, _ := p.do(t, "DELETE", "/api/v1/connections/seven", "", ""); code != 400 {
		t.Fatalf("DELETE of a malformed id: %d, want 400", code)
	}
}

func TestDrainLeavesEstablishedConnectionsAlone(t *testing.T) {
	a, b := tu.StartEcho(t), tu.StartEcho(t)
	p := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", a, b))
	addr := p.proxies(t).Proxies[0].Listen
	// Hold one connection to each backend (round-robin: a, then b).
	held := []net.Conn{tu.Dial(t, addr), tu.Dial(t, addr)}
	for _, c := range held {
		tu.RoundTrip(t, c, "x")
	}
	path := "/api/v1/proxies/web/backends/" + url.PathEscape(a) + "/state"
	if code, body := p.do(t, "PUT", path, `{"state": "drain"}`, ""); code != 200 || !strings.Contains(body, `"drain"`) {
		t.Fatalf("drain: %d %s", code, body)
	}
	if got := p.proxies(t).Proxies[0].Backends[0].State; got != "drain" {
		t.Fatalf("state %q after drain", got)
	}
	roundTrips(t, addr, "y", 4)
	v := p.proxies(t).Proxies[0]
	if v.Backends[0].ConnectionsTotal != 1 || v.Backends[1].ConnectionsTotal != 5 {
		t.Fatalf("after drain: %s had %d and %s %d connections; want all new ones on %s",
			a, v.Backends[0].ConnectionsTotal, b, v.Backends[1].ConnectionsTotal, b)
	}
	for _, c := range held {
		if got := tu.RoundTrip(t, c, "still"); got != "still" {
			t.Fatalf("an established connection broke on drain: %q", got)
		}
	}
	if value(t, p.metrics(t), "pj_backend_up", map[string]string{"proxy": "web", "backend": a}) != 0 {
		t.Fatal("pj_backend_up of a drained backend is not 0")
	}
	if code, _ := p.do(t, "PUT", path, "up", ""); code != 200 {
		t.Fatalf("up: %d", code)
	}
	roundTrips(t, addr, "z", 2)
	if got := p.proxies(t).Proxies[0].Backends[0].ConnectionsTotal; got != 2 {
		t.Fatalf("%s had %d connections after up, want 2", a, got)
	}
	for _, bad := range []struct {
		path, body string
		code       int
	}{
		{path, "sideways", 400},
		{"/api/v1/proxies/web/backends/10.9.9.9:1/state", "down", 404},
		{"/api/v1/proxies/nope/backends/" + a + "/state", "down", 404},
	} {
		if code, body := p.do(t, "PUT", bad.path, bad.body, ""); code != bad.code {
			t.Errorf("PUT %s %q: %d %s, want %d", bad.path, bad.body, code, body, bad.code)
		}
	}
}

func TestTokenRule(t *testing.T) {
	echo := tu.StartEcho(t)
	t.Run("loopback without a token allows changes", func(t *testing.T) {
		p := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", echo))
		if code, _ := p.do(t, "PUT", "/api/v1/proxies/web/backends/"+echo+"/state", "up", ""); code != 200 {
			t.Fatalf("PUT: %d", code)
		}
	})
	t.Run("a token is required once set", func(t *testing.T) {
		p := start(t, Options{Token: "s3cret"}, pjconf.Proxy("web", "127.0.0.1:0", echo))
		path := "/api/v1/proxies/web/backends/" + echo + "/state"
		for token, want := range map[string]int{"": 401, "wrong": 401, "s3cret": 200} {
			if code, body := p.do(t, "PUT", path, "up", token); code != want {
				t.Errorf("token %q: %d %s, want %d", token, code, body, want)
			}
		}
		if code, _ := p.do(t, "DELETE", "/api/v1/connections/c1", "", ""); code != 401 {
			t.Errorf("DELETE without the token: %d, want 401", code)
		}
		// Reading needs no token.
		if code, _ := p.get(t, "/api/v1/proxies"); code != 200 {
			t.Errorf("GET without the token: %d", code)
		}
	})
	t.Run("reachable from elsewhere and no token: refused", func(t *testing.T) {
		// The rule for a non-loopback listener, checked on the handler
		// itself: tests send no traffic beyond loopback.
		p := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", echo))
		h := Handler(p.srv, Options{}, false)
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("PUT", "/api/v1/proxies/web/backends/"+echo+"/state", strings.NewReader("drain"))
		req.Host = "192.0.2.1:9090" // the listener's address, as a client elsewhere would give it
		h.ServeHTTP(rec, req)
		if rec.Code != 403 || !strings.Contains(rec.Body.String(), "admin.token") {
			t.Fatalf("%d %s: want 403 saying to set admin.token", rec.Code, rec.Body)
		}
		rec = httptest.NewRecorder()
		req = httptest.NewRequest("GET", "/api/v1/auth", nil)
		req.Host = "192.0.2.1:9090"
		h.ServeHTTP(rec, req)
		if !strings.Contains(rec.Body.String(), `"token_required":true`) || !strings.Contains(rec.Body.String(), `"token_configured":false`) {
			t.Fatalf("/api/v1/auth: %s; want a token required and none configured", rec.Body)
		}
	})
}

func TestLoopbackOnly(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9090": true, "127.1.2.3:9090": true, "[::1]:9090": true,
		"0.0.0.0:9090": false, "[::]:9090": false, "192.0.2.2:9090": false, "[::ffff:127.0.0.1]:9090": true,
	} {
		ta, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := LoopbackOnly(ta); got != want {
			t.Errorf("LoopbackOnly(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestPprofOnlyWhenAsked(t *testing.T) {
	echo := tu.StartEcho(t)
	off := start(t, Options{}, pjconf.Proxy("web", "127.0.0.1:0", echo))
	if code, _ := off.get(t, "/debug/pprof/"); code != 404 {
		t.Fatalf("pprof without admin.pprof: %d, want 404", code)
	}
	on := start(t, Options{Pprof: true}, pjconf.Proxy("web2", "127.0.0.1:0", echo))
	if code, _ := on.get(t, "/debug/pprof/"); code != 200 {
		t.Fatalf("pprof with admin.pprof: %d, want 200", code)
	}
}

func TestCountersSurviveReloadAndRemovedSeriesGo(t *testing.T) {
	echo := tu.StartEcho(t)
	x, y := tu.ClosedAddr(t), tu.ClosedAddr(t)
	p := start(t, Options{}, pjconf.Proxy("web", x, echo), pjconf.Proxy("old", y, echo))
	roundTrips(t, x, "hi", 2)
	next := config.Default()
	next.Proxies = []config.Proxy{pjconf.Proxy("web", x, echo)}
	next.Proxies[0].ConnectTimeout = time.Second // a change, so the proxy is rebuilt
	if err := next.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	fams := p.metrics(t)
	if got := value(t, fams, "pj_connections_total", map[string]string{"proxy": "web", "status": "ok"}); got != 2 {
		t.Fatalf("web's ok connections after reload: %v, want 2", got)
	}
	for _, m := range fams["pj_active_connections"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetValue() == "old" {
				t.Fatal("the removed proxy's series are still exported")
			}
		}
	}
	if got := value(t, fams, "pj_config_reloads_total", map[string]string{"result": "success"}); got != 1 {
		t.Fatalf("reloads: %v", got)
	}
}

// A proxy with routes lists them in the API, each with its match, its
// backends and the connections it took; the proxy's own list names each
// backend's route. Backend series carry a route label, which for a proxy
// without routes is the proxy's name; readiness asks a backend of every
// route.
func TestRoutesInTheAPIAndMetrics(t *testing.T) {
	ssh, rest := tu.StartEcho(t), tu.StartEcho(t)
	p := start(t, Options{},
		pjconf.Routed("edge", "127.0.0.1:0",
			pjconf.Route("ssh", config.Match{Protocol: "ssh"}, ssh),
			pjconf.Route("rest", config.Match{}, rest, ssh)),
		pjconf.Proxy("web", "127.0.0.1:0", rest))
	addr, web := p.proxies(t).Proxies[0].Listen, p.proxies(t).Proxies[1].Listen
	roundTrips(t, addr, "SSH-2.0-x\r\n", 2)
	roundTrips(t, addr, "hello", 1)
	roundTrips(t, web, "hello", 1)
	held := tu.Dial(t, addr)
	tu.RoundTrip(t, held, "SSH-2.0-held\r\n")

	tu.WaitFor(t, 10*time.Second, "four finished connections", func() bool {
		return p.proxies(t).Proxies[0].ConnectionsTotal == 3 && p.proxies(t).Proxies[1].ConnectionsTotal == 1
	})
	pr := p.proxies(t).Proxies[0]
	if len(pr.Routes) != 2 || len(pr.Backends) != 3 {
		t.Fatalf("proxy %+v: want 2 routes and 3 backends", pr)
	}
	r0, r1 := pr.Routes[0], pr.Routes[1]
	if r0.Name != "ssh" || r0.Match != "protocol ssh" || r0.ConnectionsTotal != 3 || r0.ActiveConnections != 1 ||
		len(r0.Backends) != 1 || r0.Backends[0].Address != ssh || r0.Backends[0].ConnectionsTotal != 3 {
		t.Fatalf("route ssh %+v", r0)
	}
	if r1.Name != "rest" || r1.Match != "every connection" || r1.ConnectionsTotal != 1 || len(r1.Backends) != 2 {
		t.Fatalf("route rest %+v", r1)
	}
	if pr.Backends[0].Route != "ssh" || pr.Backends[1].Route != "rest" || pr.Backends[2].Route != "rest" {
		t.Fatalf("the proxy's backends %+v: each must name its route", pr.Backends)
	}
	if w := p.proxies(t).Proxies[1]; len(w.Routes) != 1 || w.Routes[0].Name != "web" || w.Backends[0].Route != "" {
		t.Fatalf("proxy web %+v: want its one route, named after it", w)
	}
	conns := p.connections(t)
	if len(conns) != 1 || conns[0].Route != "ssh" || conns[0].Backend != ssh {
		t.Fatalf("connections %+v: want the held one, on route ssh", conns)
	}

	wantSeries(t, p.metrics(t), []series{
		{"pj_route_connections_total", map[string]string{"proxy": "edge", "route": "ssh"}, 3},
		{"pj_route_connections_total", map[string]string{"proxy": "edge", "route": "rest"}, 1},
		{"pj_route_connections_total", map[string]string{"proxy": "web", "route": "web"}, 1},
		{"pj_backend_connections_total", map[string]string{"proxy": "edge", "route": "ssh", "backend": ssh}, 3},
		{"pj_backend_connections_total", map[string]string{"proxy": "edge", "route": "rest", "backend": ssh}, 0},
		{"pj_backend_connections_total", map[string]string{"proxy": "edge", "route": "rest", "backend": rest}, 1},
		{"pj_backend_active_connections", map[string]string{"proxy": "edge", "route": "ssh", "backend": ssh}, 1},
		{"pj_backend_up", map[string]string{"proxy": "web", "route": "web", "backend": rest}, 1},
		{"pj_backend_connect_seconds", map[string]string{"proxy": "edge", "route": "ssh", "backend": ssh}, 3},
	})

	// Draining the backend in every route of edge that has it leaves
	// route ssh with none: pj is not ready, and says which route.
	if code, _ := p.do(t, "PUT", "/api/v1/proxies/edge/backends/"+ssh+"/state", "drain", ""); code != 200 {
		t.Fatalf("drain: %d", code)
	}
	for _, b := range p.proxies(t).Proxies[0].Backends {
		if b.Address == ssh && b.State != "drain" {
			t.Fatalf("backend %+v of route %s: want drain in every route", b, b.Route)
		}
	}
	if code, body := p.get(t, "/readyz"); code != 503 || !strings.Contains(body, "route ssh of proxy edge") {
		t.Fatalf("/readyz: %d %q; want 503 naming the route", code, body)
	}
}

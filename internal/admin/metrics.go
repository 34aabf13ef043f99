package admin

import (
	"fmt"
	"log"
	"log/slog"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pj-proxy/pj/internal/observe"
)

// Metric descriptions. The data path keeps plain
// atomic counters; this collector turns them into metrics at scrape time,
// so counting costs the proxy nothing more than an atomic add. A removed
// proxy's series go away with it; a kept one's counters carry over.
var (
	descConns = prometheus.NewDesc("pj_connections_total",
		"Connections that ended, by proxy and how they ended (the status of the log line).",
		[]string{"proxy", "status"}, nil)
	descActive = prometheus.NewDesc("pj_active_connections",
		"Connections open now.", []string{"proxy"}, nil)
	descBytes = prometheus.NewDesc("pj_bytes_total",
		"Bytes relayed: up is client to backend, down is backend to client. Counted as delivered, while connections are open.",
		[]string{"proxy", "direction"}, nil)
	descDuration = prometheus.NewDesc("pj_connection_duration_seconds",
		"How long connections lasted, from accept to close.", []string{"proxy"}, nil)
	// A backend belongs to a route: the route label is the route's name,
	// and for a proxy without routes the proxy's own.
	descBackendUp = prometheus.NewDesc("pj_backend_up",
		"1 when the backend may take new connections, 0 when it is down or drained.", []string{"proxy", "route", "backend"}, nil)
	descBackendActive = prometheus.NewDesc("pj_backend_active_connections",
		"Connections open to the backend now.", []string{"proxy", "route", "backend"}, nil)
	descBackendTotal = prometheus.NewDesc("pj_backend_connections_total",
		"Connections ever relayed to the backend.", []string{"proxy", "route", "backend"}, nil)
	descConnect = prometheus.NewDesc("pj_backend_connect_seconds",
		"Time from accepting a client until the backend answered.", []string{"proxy", "route", "backend"}, nil)
	descRouteTotal = prometheus.NewDesc("pj_route_connections_total",
		"Connections the route took (for a proxy without routes, its one route, named after the proxy).",
		[]string{"proxy", "route"}, nil)
	descPoolIdle = prometheus.NewDesc("pj_pool_idle_connections",
		"Warm connections to the backend: open, unused, waiting for a client (proxies with a pool).", []string{"proxy", "route", "backend"}, nil)
	descPoolTakes = prometheus.NewDesc("pj_pool_takes_total",
		"Connections of a proxy with a pool: hit took a warm backend connection, miss dialled one.", []string{"proxy", "result"}, nil)
	descReloads = prometheus.NewDesc("pj_config_reloads_total",
		"Configuration reloads, by result.", []string{"result"}, nil)
	descBuild = prometheus.NewDesc("pj_build_info",
		"Always 1; the labels say which build of pj runs.", []string{"version", "goversion"}, nil)
	descPanics = prometheus.NewDesc("pj_panics_total",
		"Connections closed because handling them panicked (a bug in pj; the stack is in the log).", nil, nil)
	descUDPDatagrams = prometheus.NewDesc("pj_udp_datagrams_total",
		"Datagrams a UDP proxy relayed: up is client to backend, down is backend to client.",
		[]string{"proxy", "direction"}, nil)
	descUDPDropped = prometheus.NewDesc("pj_udp_dropped_datagrams_total",
		"Datagrams a UDP proxy did not relay, by reason: denied, rate_limited, limit (a session cap), no_backend, draining (a removed listener), send_failed (the kernel refused to send).",
		[]string{"proxy", "reason"}, nil)
	descClientsTracked = prometheus.NewDesc("pj_clients_tracked",
		"Clients the per-client table of rate_limit and max_connections_per_client tracks now.", []string{"proxy"}, nil)
	descClientsEvicted = prometheus.NewDesc("pj_clients_evicted_total",
		"Idle clients dropped from the per-client table to make room for new ones.", []string{"proxy"}, nil)
	descClientsForgiven = prometheus.NewDesc("pj_clients_forgiven_total",
		"Evicted clients whose rate had not recovered yet: their rate limit started afresh.", []string{"proxy"}, nil)
	descClientsUntracked = prometheus.NewDesc("pj_clients_untracked_connections_total",
		"Connections admitted without per-client limits because the table was full of clients with open connections.",
		[]string{"proxy"}, nil)
	descLogDropped = prometheus.NewDesc("pj_log_lines_dropped_total",
		"Log lines dropped because the log destination (stderr) took them more slowly than pj wrote them.", nil, nil)
)

type collector struct {
	src        Source
	version    string
	logDropped func() uint64
}

func newCollector(src Source, version string, logDropped func() uint64) *collector {
	if logDropped == nil {
		logDropped = func() uint64 { return 0 }
	}
	return &collector{src: src, version: version, logDropped: logDropped}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConns, descActive, descBytes, descDuration, descBackendUp,
		descBackendActive, descBackendTotal, descConnect, descRouteTotal, descClientsTracked, descClientsEvicted, descClientsForgiven,
		descClientsUntracked, descPoolIdle, descPoolTakes, descReloads, descBuild, descPanics, descLogDropped, descUDPDatagrams, descUDPDropped} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, v := range c.src.Proxies() {
		p := v.Proxy
		st := p.Stats
		for i, s := range observe.Statuses {
			ch <- prometheus.MustNewConstMetric(descConns, prometheus.CounterValue, float64(st.Conns[i].Load()), p.Name, string(s))
		}
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(st.Active.Load()), p.Name)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.BytesUp.Load()), p.Name, "up")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.BytesDown.Load()), p.Name, "down")
		buckets, count, sum := st.Duration.Snapshot()
		ch <- prometheus.MustNewConstHistogram(descDuration, count, sum, buckets, p.Name)
		if p.UDP {
			ch <- prometheus.MustNewConstMetric(descUDPDatagrams, prometheus.CounterValue, float64(st.DatagramsUp.Load()), p.Name, "up")
			ch <- prometheus.MustNewConstMetric(descUDPDatagrams, prometheus.CounterValue, float64(st.DatagramsDown.Load()), p.Name, "down")
			for reason, n := range v.Dropped {
				ch <- prometheus.MustNewConstMetric(descUDPDropped, prometheus.CounterValue, float64(n), p.Name, reason)
			}
		}
		for _, r := range p.Routes {
			ch <- prometheus.MustNewConstMetric(descRouteTotal, prometheus.CounterValue, float64(r.Taken.Load()), p.Name, r.Name)
			for _, b := range r.Pool().Backends() {
				up := 0.0
				if b.Eligible() {
					up = 1
				}
				ch <- prometheus.MustNewConstMetric(descBackendUp, prometheus.GaugeValue, up, p.Name, r.Name, b.Address)
				ch <- prometheus.MustNewConstMetric(descBackendActive, prometheus.GaugeValue, float64(b.Active.Load()), p.Name, r.Name, b.Address)
				ch <- prometheus.MustNewConstMetric(descBackendTotal, prometheus.CounterValue, float64(b.Total.Load()), p.Name, r.Name, b.Address)
				buckets, count, sum := b.Connect.Snapshot()
				ch <- prometheus.MustNewConstHistogram(descConnect, count, sum, buckets, p.Name, r.Name, b.Address)
				if r.Warm != nil {
					ch <- prometheus.MustNewConstMetric(descPoolIdle, prometheus.GaugeValue, float64(r.Warm.Idle(b.Address)), p.Name, r.Name, b.Address)
				}
			}
		}
		if p.Pooled() {
			ch <- prometheus.MustNewConstMetric(descPoolTakes, prometheus.CounterValue, float64(st.PoolHits.Load()), p.Name, "hit")
			ch <- prometheus.MustNewConstMetric(descPoolTakes, prometheus.CounterValue, float64(st.PoolMisses.Load()), p.Name, "miss")
		}
		if p.Clients != nil {
			cs := p.Clients.Stats()
			ch <- prometheus.MustNewConstMetric(descClientsTracked, prometheus.GaugeValue, float64(cs.Entries), p.Name)
			ch <- prometheus.MustNewConstMetric(descClientsEvicted, prometheus.CounterValue, float64(cs.Evictions), p.Name)
			ch <- prometheus.MustNewConstMetric(descClientsForgiven, prometheus.CounterValue, float64(cs.Resets), p.Name)
			ch <- prometheus.MustNewConstMetric(descClientsUntracked, prometheus.CounterValue, float64(cs.Untracked), p.Name)
		}
	}
	ok, failed := c.src.Reloads()
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(ok), "success")
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(failed), "failure")
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, c.version, runtime.Version())
	ch <- prometheus.MustNewConstMetric(descPanics, prometheus.CounterValue, float64(c.src.Panics()))
	ch <- prometheus.MustNewConstMetric(descLogDropped, prometheus.CounterValue, float64(c.logDropped()))
}

// registerRuntime adds the Go runtime and process collectors.
func registerRuntime(reg *prometheus.Registry) {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// slogErrorLog routes the errors of net/http and promhttp into pj's log.
type slogErrorLog struct{ l *slog.Logger }

func (s slogErrorLog) Println(v ...any) {
	if s.l != nil {
		s.l.Warn("admin listener", "error", sprint(v...))
	}
}

// logger is the admin server's ErrorLog: net/http repeats an accept error
// every second for as long as it lasts (descriptors running out), so its
// lines go through a throttle, once per errorLogEvery with a count.
func (s slogErrorLog) logger() *log.Logger {
	if s.l == nil {
		return nil
	}
	return observe.NewThrottledLogger(s.l, slog.LevelWarn, "admin listener", errorLogEvery)
}

const errorLogEvery = 10 * time.Second

func sprint(v ...any) string { return fmt.Sprint(v...) }

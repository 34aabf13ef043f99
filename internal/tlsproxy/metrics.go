package tlsproxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metric descriptions of TLS. Like the engine's, they are read from
// atomic counters at scrape time.
var (
	descHandshakes = prometheus.NewDesc("pj_tls_handshakes_total",
		"TLS handshakes with clients, by proxy and result (success or failure; a failure is logged with status tls_failed).",
		[]string{"proxy", "result"}, nil)
	descExpiry = prometheus.NewDesc("pj_tls_certificate_expiry_timestamp_seconds",
		"When each certificate a proxy serves stops being valid, in seconds since the Unix epoch; certificate is its file, or acme:DOMAIN.",
		[]string{"proxy", "certificate"}, nil)
)

// Terminated is one proxy (or route) that terminates TLS, as the metrics
// name it.
type Terminated struct {
	Proxy      string
	Terminator *Terminator
}

// Collector turns the TLS counters and certificates of the proxies that
// list returns, at each scrape, into metrics.
type Collector struct {
	list func() []Terminated
}

// NewCollector returns a collector of the proxies list returns.
func NewCollector(list func() []Terminated) *Collector { return &Collector{list: list} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descHandshakes
	ch <- descExpiry
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	// Several routes of one proxy may terminate: their handshakes add
	// up under the proxy's name, and a certificate they share is one.
	type counts struct{ ok, failed uint64 }
	var order []string
	byProxy := map[string]*counts{}
	type certKey struct{ proxy, cert string }
	seen := map[certKey]bool{}
	for _, t := range c.list() {
		n := byProxy[t.Proxy]
		if n == nil {
			n = &counts{}
			byProxy[t.Proxy] = n
			order = append(order, t.Proxy)
		}
		st := t.Terminator.Stats()
		n.ok += st.Success.Load()
		n.failed += st.Failure.Load()
		for _, e := range t.Terminator.Store().Expiries() {
			k := certKey{t.Proxy, e.Certificate}
			if seen[k] {
				continue
			}
			seen[k] = true
			ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, float64(e.NotAfter.Unix()), t.Proxy, e.Certificate)
		}
	}
	for _, name := range order {
		n := byProxy[name]
		ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(n.ok), name, "success")
		ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(n.failed), name, "failure")
	}
}

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
	for _, t := range c.list() {
		st := t.Terminator.Stats()
		ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(st.Success.Load()), t.Proxy, "success")
		ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(st.Failure.Load()), t.Proxy, "failure")
		for _, e := range t.Terminator.Store().Expiries() {
			ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, float64(e.NotAfter.Unix()), t.Proxy, e.Certificate)
		}
	}
}

// Package pjconf builds pj configurations for tests: one way to write a
// proxy, a route and a whole configuration, for the server's tests
// (pjtest) and the engine's alike.
package pjconf

import "github.com/pj-proxy/pj/internal/config"

// Proxy is a proxy named name ("" names it after its address) listening on
// listen and relaying to backends (weight 1 each), with the built-in
// settings.
func Proxy(name, listen string, backends ...string) config.Proxy {
	p := config.Proxy{Name: name, Listen: listen, Settings: config.Default().Defaults}
	for _, b := range backends {
		p.Backends = append(p.Backends, config.Backend{Address: b, Weight: 1})
	}
	return p
}

// Routed is a proxy named name listening on listen whose connections go
// to routes, with the built-in settings: each route's are the proxy's.
func Routed(name, listen string, routes ...config.Route) config.Proxy {
	p := config.Proxy{Name: name, Listen: listen, Settings: config.Default().Defaults}
	for _, r := range routes {
		r.Settings = p.Settings
		p.Routes = append(p.Routes, r)
	}
	return p
}

// Route is a route named name that takes what m matches to backends
// (weight 1 each).
func Route(name string, m config.Match, backends ...string) config.Route {
	r := config.Route{Name: name, Match: m}
	for _, b := range backends {
		r.Backends = append(r.Backends, config.Backend{Address: b, Weight: 1})
	}
	return r
}

// Config is the built-in configuration with proxies.
func Config(proxies ...config.Proxy) config.Config {
	c := config.Default()
	c.Proxies = proxies
	return c
}

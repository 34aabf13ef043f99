package config

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"
)

// leaves returns the address of every field of v (a pointer to a struct)
// that holds a value rather than more fields, following pointers to
// structs; skip names fields that no key sets.
func leaves(v reflect.Value, skip map[string]bool) []uintptr {
	var out []uintptr
	v = v.Elem()
	for i := range v.NumField() {
		f, sf := v.Field(i), v.Type().Field(i)
		if skip[sf.Name] {
			continue
		}
		switch {
		case f.Kind() == reflect.Struct && f.Type() != reflect.TypeFor[netip.Prefix]():
			out = append(out, leaves(f.Addr(), skip)...)
		case f.Kind() == reflect.Pointer && f.Type().Elem().Kind() == reflect.Struct:
			f.Set(reflect.New(f.Type().Elem()))
			out = append(out, leaves(f, skip)...)
		default:
			out = append(out, f.Addr().Pointer())
		}
	}
	return out
}

// declared returns the addresses of the values the keys of all point at
// (an object's own address is that of its first field: it is left out).
func declared[O any](all []setting[O], o *O) []uintptr {
	var out []uintptr
	for _, k := range all {
		if !k.isObject() && k.info().retired == "" {
			out = append(out, reflect.ValueOf(k.pointer(o)).Pointer())
		}
	}
	return out
}

// TestEveryFieldHasAKey fails for a field of Settings or Config that no
// key declares: such a field could not be set in a file, checked or
// shown.
func TestEveryFieldHasAKey(t *testing.T) {
	var s Settings
	wantS := leaves(reflect.ValueOf(&s), map[string]bool{"Explicit": true, "Datagrams": true})
	if got := declared(settingKeys, &s); !sameSet(got, wantS) {
		t.Errorf("Settings has %d values, its keys declare %d: every field needs one key", len(wantS), len(got))
	}
	var c Config
	wantC := leaves(reflect.ValueOf(&c), map[string]bool{"Defaults": true, "Proxies": true, "File": true, "Ignored": true})
	if got := declared(topKeys, &c); !sameSet(got, wantC) {
		t.Errorf("Config has %d top-level values, its keys declare %d: every field needs one key", len(wantC), len(got))
	}
}

// sameSet reports whether the keys' addresses are the fields', each once.
func sameSet(keys, fields []uintptr) bool {
	slices.Sort(keys)
	slices.Sort(fields)
	return slices.Equal(keys, fields)
}

func TestKeyNamesAreUniqueAndNested(t *testing.T) {
	check := func(table string, infos []*keyInfo) {
		seen := map[string]bool{}
		for _, k := range infos {
			if seen[k.name] {
				t.Errorf("%s: key %s is declared twice", table, k.name)
			}
			seen[k.name] = true
			if p := k.parent(); p != "" && !seen[p] {
				t.Errorf("%s: key %s comes before its object %s", table, k.name, p)
			}
		}
	}
	check("settings", infos(settingKeys))
	check("top", infos(topKeys))
	check("proxy", infos(proxyKeys))
	check("backend", infos(backendKeys))
}

func TestChanged(t *testing.T) {
	base := Proxy{Name: "web", Listen: ":80", Backends: []Backend{{Address: "a:1", Weight: 1}}, Settings: Default().Defaults}
	tests := []struct {
		name   string
		mutate func(*Proxy)
		want   []string
	}{
		{"nothing", func(*Proxy) {}, nil},
		{"listen and backends", func(p *Proxy) { p.Listen = ":81"; p.Backends = nil }, []string{"listen", "backends"}},
		{"a key", func(p *Proxy) { p.IdleTimeout = time.Minute }, []string{"idle_timeout"}},
		{"a key inside an object is its object's change", func(p *Proxy) { p.HealthCheck.Rise = 5 }, []string{"health_check"}},
		{"an optional object appears", func(p *Proxy) { p.AcceptProxyProtocol = &AcceptProxyProtocol{} }, []string{"accept_proxy_protocol"}},
		{"an empty list is not no list", func(p *Proxy) { p.Allow = []netip.Prefix{} }, []string{"allow"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := base
			next.Backends = slices.Clone(base.Backends)
			tt.mutate(&next)
			if got := base.Changed(next); !slices.Equal(got, tt.want) {
				t.Errorf("Changed = %q, want %q", got, tt.want)
			}
		})
	}
	a, b := Default(), Default()
	b.Log.Level, b.GracePeriod, b.Watch = "debug", time.Minute, true
	if got, want := a.Changed(b), []string{"log", "grace_period", "watch"}; !slices.Equal(got, want) {
		t.Errorf("Config.Changed = %q, want %q", got, want)
	}
}

func TestFlagsSetTheirKeys(t *testing.T) {
	names := map[string]bool{}
	for _, f := range Flags() {
		if (f.Name == "") == (f.Env == "") {
			t.Errorf("key %s: a flag or a variable alone, not %q and %q", f.Key, f.Name, f.Env)
		}
		names[f.Name] = true
		var c Config
		switch p := f.Var(&c).(type) {
		case *string, *bool, *time.Duration:
		default:
			t.Errorf("flag %s: variable of type %T, which the command line cannot bind", f.Name, p)
		}
	}
	for _, want := range []string{"balance", "connect-timeout", "idle-timeout", "grace-period", "admin", "log-format", "log-level", "watch"} {
		if !names[want] {
			t.Errorf("no flag %s", want)
		}
	}
	// An override of a top-level key and of a setting, through Decode.
	from := Default()
	from.GracePeriod, from.Defaults.IdleTimeout = time.Minute, time.Hour
	c, err := Decode("pj.yaml", []byte("grace_period: 5s\nproxies: [{listen: ':80', backends: ['a:1'], idle_timeout: 1s}, {listen: ':81', backends: ['a:1']}]\n"),
		nil, Overrides(from, "grace_period", "idle_timeout")...)
	if err != nil {
		t.Fatal(err)
	}
	if c.GracePeriod != time.Minute || c.Defaults.IdleTimeout != time.Hour || c.Proxies[0].IdleTimeout != time.Second || c.Proxies[1].IdleTimeout != time.Hour {
		t.Errorf("overridden: grace %s, idle %s, %s, %s; want 1m, 1h, the proxy's own 1s, 1h",
			c.GracePeriod, c.Defaults.IdleTimeout, c.Proxies[0].IdleTimeout, c.Proxies[1].IdleTimeout)
	}
}

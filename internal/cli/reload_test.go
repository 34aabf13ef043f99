package cli

import (
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/admin"
)

func TestAdminURL(t *testing.T) {
	tests := []struct {
		addr, want, err string
	}{
		{addr: "127.0.0.1:9090", want: "http://127.0.0.1:9090/api/v1/reload"},
		{addr: ":9090", want: "http://127.0.0.1:9090/api/v1/reload"},
		{addr: "0.0.0.0:9090", want: "http://127.0.0.1:9090/api/v1/reload"},
		{addr: "[::]:9090", want: "http://[::1]:9090/api/v1/reload"},
		{addr: "[::1]:9090", want: "http://[::1]:9090/api/v1/reload"},
		{addr: "admin.internal:9090", want: "http://admin.internal:9090/api/v1/reload"},
		{addr: "9090", err: `--admin "9090": expected HOST:PORT, such as 127.0.0.1:9090`},
		{addr: "", err: "expected HOST:PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got, err := adminURL(tt.addr)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("adminURL(%q) = %q, %v; want an error containing %q", tt.addr, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("adminURL(%q) = %q, %v; want %q", tt.addr, got, err, tt.want)
			}
		})
	}
}

func TestDescribePlan(t *testing.T) {
	changes := []admin.ReloadChange{
		{Action: "change", Keys: []string{"log_format", "grace"}},
		{Action: "add", Proxy: "db", Listen: "127.0.0.1:5432"},
		{Action: "remove", Proxy: "ssh", Listen: ":2222", ConnectionsAffected: 1},
		{Action: "change", Proxy: "web", Keys: []string{"listen"}, ConnectionsAffected: 3},
	}
	lines := "  ~ log_format, grace changed\n" +
		"  + add proxy db on 127.0.0.1:5432\n" +
		"  - remove proxy ssh on :2222 (cuts 1 live connection)\n" +
		"  ~ change proxy web: listen (cuts 3 live connections)\n" +
		"live connections cut: 4 (a listener that stops lets its connections run for the grace period, then cuts those still open)\n"
	tests := []struct {
		name string
		res  admin.ReloadResult
		want string
	}{
		{"dry run, nothing to do", admin.ReloadResult{DryRun: true}, "the configuration file is valid; a reload would change nothing\n"},
		{"dry run", admin.ReloadResult{DryRun: true, Changes: changes, ConnectionsAffected: 4}, "the configuration file is valid; a reload would:\n" + lines},
		{"applied, nothing to do", admin.ReloadResult{Applied: true}, "reloaded: no changes\n"},
		{"applied", admin.ReloadResult{Applied: true, Changes: changes, ConnectionsAffected: 4}, "reloaded:\n" + lines},
		{"dry run with a retired key", admin.ReloadResult{DryRun: true, Warnings: []string{"pj.yaml:4: kernel_relay is ignored", "b"}},
			"the configuration file is valid; a reload would change nothing\nwarning: pj.yaml:4: kernel_relay is ignored\nwarning: b\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := describePlan(tt.res); got != tt.want {
				t.Errorf("describePlan:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

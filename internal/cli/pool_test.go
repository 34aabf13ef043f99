package cli

import (
	"strings"
	"testing"

	"github.com/pj-proxy/pj/internal/testutil"
)

// pj check shows a pool, and refuses one with proxy_protocol (exit 1).
func TestCheckPool(t *testing.T) {
	file := testutil.WriteFile(t, "pj.yaml", `proxies:
  - name: mail
    listen: 127.0.0.1:2525
    backends: [10.0.0.5:25]
    pool: { size: 4, max_age: 8s }
`)
	out, err := check(t, nil, "-c", file)
	if err != nil || !strings.Contains(out, "4 warm connections per backend, each kept at most 8s") {
		t.Errorf("pj check: %v\n%s", err, out)
	}

	file = testutil.WriteFile(t, "pj.yaml", `proxies:
  - name: mail
    listen: 127.0.0.1:2525
    backends: [10.0.0.5:25]
    proxy_protocol: v1
    pool: { size: 4 }
`)
	_, err = check(t, nil, "-c", file)
	if ExitCode(err) != 1 || !strings.Contains(err.Error(), `proxy "mail": pool: cannot be used with proxy_protocol`) {
		t.Errorf("pj check of pool with proxy_protocol: %v (exit %d), want it refused", err, ExitCode(err))
	}
}

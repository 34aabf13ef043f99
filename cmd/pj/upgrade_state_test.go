package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pj-proxy/pj/internal/testutil"
)

func TestUpgradeKeepsBackendStates(t *testing.T) {
	a1, a2 := testutil.Identify(t, "a1"), testutil.Identify(t, "a2")
	x := testutil.ClosedAddr(t)
	path := filepath.Join(t.TempDir(), "pj.yaml")
	writeAtomically(t, path, fmt.Sprintf(`admin: { listen: "127.0.0.1:0" }
proxies:
  - { name: web, listen: %q, backends: [%q, %q], health_check: { interval: 0s } }
`, x, a1, a2))
	u := startUpgradable(t, pjBin, nil, 1, "-c", path)
	admin := (&proc{stderr: u.stderr}).adminAddr(t)

	req, err := http.NewRequest(http.MethodPut, "http://"+admin+"/api/v1/proxies/web/backends/"+a2+"/state", strings.NewReader("drain"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("drain %s: %s", a2, resp.Status)
	}

	u.upgrade(t)
	line := u.stderr.WaitLines(t, "took over every listener", 1)[0]
	if !strings.Contains(line, "backend_states=2") {
		t.Fatalf("the new process restored no backend state: %q", line)
	}
	code, body, err := adminGet(admin, "/api/v1/proxies")
	if err != nil || code != 200 {
		t.Fatalf("GET /api/v1/proxies from the new process: %d %v", code, err)
	}
	var out struct {
		Proxies []struct {
			Backends []struct {
				Address, State string
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, b := range out.Proxies[0].Backends {
		got[b.Address] = b.State
	}
	if got[a1] != "up" || got[a2] != "drain" {
		t.Fatalf("backend states after the upgrade %v; want %s up and %s drain, as before", got, a1, a2)
	}
	for range 4 {
		if got, err := testutil.Ask(x); err != nil || got != "a1" {
			t.Fatalf("after the upgrade a drained backend answered: %q %v", got, err)
		}
	}
}

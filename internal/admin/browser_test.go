package admin_test

// The status page, tested in a real browser: headless Chromium, driven over
// the DevTools protocol by chromedp, loads the page from a real admin
// listener in front of a real pj and acts on it as a person would.
//
// The test skips only when Chromium cannot be started at all, and not even
// then when PJ_REQUIRE_BROWSER is set, as .ci/run sets it: CI installs
// Chromium, so a browser that does not start there is a failure.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/pj-proxy/pj/internal/admin"
	"github.com/pj-proxy/pj/internal/config"
	"github.com/pj-proxy/pj/internal/server"
	"github.com/pj-proxy/pj/internal/testutil"
	"github.com/pj-proxy/pj/internal/testutil/pjconf"
	"github.com/pj-proxy/pj/internal/testutil/pjtest"
)

// waitTimeout bounds every wait on the page. The page polls once a second,
// so a change shows within about two seconds; the rest is slack for a busy
// machine running under the race detector.
const waitTimeout = 15 * time.Second

// TestBrowserStatusPage loads the status page of a running pj in Chromium
// and checks what it shows and what its buttons do.
//
// Set PJ_SCREENSHOTS to a directory to keep the screenshots it takes
// (status.png at a desktop width, status-phone.png at a phone's, and
// status-dark.png in the dark colour scheme); the README shows them from
// docs/.
func TestBrowserStatusPage(t *testing.T) {
	pj := startPagePJ(t)
	b := startBrowser(t)

	b.do(t, "load the page", chromedp.Navigate(pj.url))
	title, err := chromedp.Run(b.ctx, chromedp.Title())
	if err != nil || title != "pj — status" {
		t.Fatalf("page title %q, %v; want %q", title, err, "pj — status")
	}

	// Every proxy and every backend of the running pj, each backend in
	// its proxy's card with an "up" badge.
	b.waitFor(t, "the proxies, listeners and backends of pj",
		fmt.Sprintf(`%s.every((s) => document.body.innerText.includes(s))`,
			jsValue([]string{"web", pj.web, "db", pj.db, pj.webBackends[0], pj.webBackends[1], pj.dbBackends[0], pj.dbBackends[1]})))
	b.waitFor(t, "the balance algorithms",
		fmt.Sprintf(`document.querySelector(%s)?.textContent === "weighted-round-robin" && document.querySelector(%s)?.textContent === "least-conn"`,
			jsValue(proxySel("web")+" .chip"), jsValue(proxySel("db")+" .chip")))
	for _, pb := range []struct{ proxy, backend string }{
		{"web", pj.webBackends[0]}, {"web", pj.webBackends[1]}, {"db", pj.dbBackends[0]}, {"db", pj.dbBackends[1]},
	} {
		b.waitFor(t, "an up badge for backend "+pb.backend+" of "+pb.proxy,
			fmt.Sprintf(`document.querySelector(%s)?.textContent === "up"`, jsValue(backendSel(pb.proxy, pb.backend)+" .badge")))
	}
	b.waitFor(t, "the weight of web's second backend",
		fmt.Sprintf(`document.querySelector(%s).textContent.includes("weight 2")`, jsValue(backendSel("web", pj.webBackends[1]))))
	b.waitFor(t, "the backup mark of db's second backend",
		fmt.Sprintf(`!document.querySelector(%s).hidden`, jsValue(backendSel("db", pj.dbBackends[1])+" .tag")))
	b.waitFor(t, "the name of cache's first backend next to its address",
		fmt.Sprintf(`document.querySelector(%s)?.innerText.includes(%s)`, jsValue(backendSel("cache", pj.cacheAddr)), jsValue(pj.cacheBackends[0])))
	b.waitFor(t, "why cache's second backend does not resolve",
		fmt.Sprintf(`document.querySelector(%[1]s)?.offsetParent !== null && document.querySelector(%[1]s).textContent.includes("gone.test")`,
			jsValue(backendSel("cache", pj.cacheBackends[1])+" .b-error")))
	b.waitFor(t, "the routes of edge's backends",
		fmt.Sprintf(`document.querySelector(%s)?.textContent === "route ssh" && document.querySelector(%s)?.textContent === "route rest"`,
			jsValue(backendSel("edge", pj.edgeBackends[0])+" .route"), jsValue(backendSel("edge", pj.edgeBackends[1])+" .route")))
	b.waitFor(t, "no route tag on a proxy without routes",
		fmt.Sprintf(`document.querySelector(%s)?.hidden === true`, jsValue(backendSel("web", pj.webBackends[0])+" .route")))
	b.waitFor(t, "no active connection through web", activeIs("web", "0"))
	// On a loopback listener without a token, changes need no token.
	b.waitFor(t, "the buttons shown, and no token field",
		`document.body.classList.contains("can-change") && document.getElementById("auth").offsetParent === null`)
	b.waitFor(t, "pj's version from pj_build_info", `document.getElementById("version").textContent === "test"`)
	b.checkConsole(t)

	// A client connects: the count goes from 0 to 1 and the table shows it.
	client := testutil.Dial(t, pj.web)
	if got := testutil.RoundTrip(t, client, "hello"); got != "hello" {
		t.Fatalf("echo through web: %q", got)
	}
	clientAddr := client.LocalAddr().String()
	b.waitFor(t, "one active connection through web", activeIs("web", "1"))
	row := `#conns-body tr[data-client=` + cssString(clientAddr) + `]`
	b.waitFor(t, "the client "+clientAddr+" in the connection table",
		fmt.Sprintf(`document.querySelector(%s)?.innerText.includes(%s)`, jsValue(row), jsValue(clientAddr)))

	// Its close button ends the client's connection, and the row goes.
	b.do(t, "click the close button of "+clientAddr, chromedp.Click(chromedp.CSS(row+` button[data-action="close"]`)))
	if err := client.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Read(make([]byte, 1)); err == nil || testutil.IsTimeout(err) {
		t.Fatalf("the client's connection is still open after the close button: read %d bytes, %v", n, err)
	}
	b.waitFor(t, "the closed connection's row to go", fmt.Sprintf(`!document.querySelector(%s)`, jsValue(row)))
	b.waitFor(t, "no active connection through web again", activeIs("web", "0"))

	// Drain one backend of web and take db's backup down, with the page's
	// buttons; the badges and the API agree.
	for _, c := range []struct{ proxy, backend, state string }{
		{"web", pj.webBackends[0], "drain"},
		{"db", pj.dbBackends[1], "down"},
	} {
		sel := backendSel(c.proxy, c.backend)
		b.do(t, "click "+c.state+" on backend "+c.backend, chromedp.Click(chromedp.CSS(sel+` button[data-state="`+c.state+`"]`)))
		b.waitFor(t, "a "+c.state+" badge on backend "+c.backend,
			fmt.Sprintf(`document.querySelector(%s)?.textContent === %s`, jsValue(sel+" .badge"), jsValue(c.state)))
		if got := pj.backendState(t, c.proxy, c.backend); got != c.state {
			t.Fatalf("the API says backend %s of %s is %q after the %s button; want %q", c.backend, c.proxy, got, c.state, c.state)
		}
	}
	b.checkConsole(t)

	// Traffic makes the rates move: a few open connections, two of them
	// busy, until the page shows bytes per second on both proxies.
	for _, addr := range []string{pj.web, pj.web, pj.web, pj.db} {
		testutil.RoundTrip(t, testutil.Dial(t, addr), "hi")
	}
	pump(t, pj.web, 48<<10)
	pump(t, pj.db, 8<<10)
	b.waitFor(t, "six active connections", `document.getElementById("sum-active").textContent === "6"`)
	for _, p := range []string{"web", "db"} {
		for _, rate := range []string{".up-rate", ".down-rate"} {
			b.waitFor(t, "a byte rate above 0 for "+p,
				fmt.Sprintf(`/^[0-9.]+ [KMG]?i?B\/s$/.test(document.querySelector(%[1]s)?.textContent) && document.querySelector(%[1]s).textContent !== "0 B/s"`,
					jsValue(proxySel(p)+" "+rate)))
		}
	}

	dir := os.Getenv("PJ_SCREENSHOTS")
	if dir != "" {
		// Some history makes the sparklines worth a picture.
		b.waitForWithin(t, 2*time.Minute, "45 seconds of throughput history",
			fmt.Sprintf(`document.querySelector(%s).getAttribute("points").split(" ").length >= 45`, jsValue(proxySel("web")+" .l-up")))
	}
	b.checkConsole(t)
	// The whole page at a desktop's width, in both colour schemes, and
	// the first screen of a phone.
	shots := []struct {
		file          string
		width, height int64
		mobile, dark  bool
	}{
		{"status.png", 1280, 800, false, false},
		{"status-dark.png", 1280, 800, false, true},
		{"status-phone.png", 390, 844, true, false},
	}
	for _, s := range shots {
		scheme := "light"
		if s.dark {
			scheme = "dark"
		}
		opts := []chromedp.EmulateViewportOption{}
		if s.mobile {
			opts = append(opts, chromedp.EmulateMobile, chromedp.EmulatePortrait, chromedp.EmulateScale(2))
		}
		b.do(t, "size the page for "+s.file, chromedp.Steps(
			chromedp.EmulateViewport(s.width, s.height, opts...),
			colorScheme(scheme),
		))
		// From the top (the clicks scrolled), with the layout after the
		// change, two frames later.
		b.do(t, "wait for a frame", chromedp.Steps(chromedp.Evaluate[chromedp.Void](
			`window.scrollTo(0, 0), new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))`, chromedp.EvalAwaitPromise)))
		shot := chromedp.FullScreenshot(100)
		if s.mobile {
			shot = chromedp.CaptureScreenshot()
		}
		png, err := chromedp.Run(b.ctx, shot)
		if err != nil {
			t.Fatalf("screenshot %s: %v", s.file, err)
		}
		if !strings.HasPrefix(string(png), "\x89PNG") {
			t.Fatalf("screenshot %s is not a PNG", s.file)
		}
		if dir != "" {
			if err := os.WriteFile(filepath.Join(dir, s.file), png, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", filepath.Join(dir, s.file))
		}
	}
	b.checkConsole(t)

	// Behind an admin listener with a token (still at a phone's size): no
	// button changes anything until the token is given; a wrong token is
	// refused, the right one brings the buttons, and they work.
	tok, err := admin.Listen("127.0.0.1:0", pj.srv, admin.Options{Token: "s3cret", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	closeTok := sync.OnceFunc(tok.Close)
	t.Cleanup(closeTok)
	b.do(t, "load the page from the listener with a token", chromedp.Navigate("http://"+tok.Addr().String()+"/"))
	drained := backendSel("web", pj.webBackends[0])
	b.waitFor(t, "the drained backend and the token field",
		fmt.Sprintf(`document.querySelector(%s)?.textContent === "drain" && document.getElementById("token").offsetParent !== null`, jsValue(drained+" .badge")))
	b.waitFor(t, "the connections, with no close button shown",
		`document.querySelectorAll("#conns-body tr").length === 6 && [...document.querySelectorAll("button[data-action]")].every((b) => b.offsetParent === null)`)
	b.do(t, "give a wrong token", chromedp.Steps(
		chromedp.SendKeys(chromedp.ID("token"), "wrong"),
		chromedp.Click(chromedp.CSS(`#auth button[type="submit"]`)),
	))
	b.waitFor(t, "the wrong token refused", `document.getElementById("auth-text").textContent.includes("not accepted")`)
	b.do(t, "give the token", chromedp.Steps(
		chromedp.SendKeys(chromedp.ID("token"), "s3cret"),
		chromedp.Click(chromedp.CSS(`#auth button[type="submit"]`)),
	))
	b.do(t, "click enable on backend "+pj.webBackends[0], chromedp.Click(chromedp.CSS(drained+` button[data-state="up"]`)))
	b.waitFor(t, "an up badge on backend "+pj.webBackends[0], fmt.Sprintf(`document.querySelector(%s)?.textContent === "up"`, jsValue(drained+" .badge")))
	if got := pj.backendState(t, "web", pj.webBackends[0]); got != "up" {
		t.Fatalf("the API says backend %s of web is %q after the enable button; want up", pj.webBackends[0], got)
	}
	b.checkConsole(t)

	// pj goes away: the page says so. The browser logs the refused
	// requests, which here are expected.
	b.expectNetworkErrors()
	closeTok()
	b.waitFor(t, "the page to say that pj is not answering",
		`!document.getElementById("problem").hidden && document.getElementById("problem").textContent.includes("not answering")`)
	b.checkConsole(t)
}

// ---------- pj ----------

// pagePJ is a pj serving three proxies in-process, with its admin listener.
type pagePJ struct {
	srv         *pjtest.Server
	url         string // the admin listener's base URL
	web, db     string // the proxies' bound addresses
	webBackends []string
	dbBackends  []string // the second is a backup
	// cache's backends are names, from a DNS server of the test's: the
	// first resolves to cacheAddr, the second does not resolve.
	cacheBackends []string
	cacheAddr     string
	edgeBackends  []string // of its routes ssh and rest
}

func startPagePJ(t *testing.T) *pagePJ {
	t.Helper()
	pj := &pagePJ{
		webBackends: []string{testutil.StartEcho(t), testutil.StartEcho(t)},
		dbBackends:  []string{testutil.StartEcho(t), testutil.StartEcho(t)},
	}
	web := pjconf.Proxy("web", "127.0.0.1:0", pj.webBackends...)
	web.Balance = config.WeightedRoundRobin
	web.Backends[1].Weight = 2
	db := pjconf.Proxy("db", "127.0.0.1:0", pj.dbBackends...)
	db.Balance = config.LeastConn
	db.Backends[1].Backup = true

	dns := testutil.StartDNS(t)
	pj.cacheAddr = testutil.StartEcho(t)
	_, port, err := net.SplitHostPort(pj.cacheAddr)
	if err != nil {
		t.Fatal(err)
	}
	dns.SetIPs("cache.test", "127.0.0.1")
	pj.cacheBackends = []string{net.JoinHostPort("cache.test", port), net.JoinHostPort("gone.test", port)}
	cache := pjconf.Proxy("cache", "127.0.0.1:0", pj.cacheBackends...)
	cache.Resolver = dns.Addr

	// edge has routes: its backends say which route they serve.
	pj.edgeBackends = []string{testutil.StartEcho(t), testutil.StartEcho(t)}
	edge := pjconf.Routed("edge", "127.0.0.1:0",
		pjconf.Route("ssh", config.Match{Protocol: "ssh"}, pj.edgeBackends[0]),
		pjconf.Route("rest", config.Match{}, pj.edgeBackends[1]))

	cfg := pjconf.Config(web, db, cache, edge)
	cfg.GracePeriod = time.Second
	srv := pjtest.Start(t, cfg, server.Options{})
	addrs := srv.Addrs()
	pj.web, pj.db = addrs[0].String(), addrs[1].String()
	pj.srv = srv

	adm, err := admin.Listen("127.0.0.1:0", srv, admin.Options{Version: "test", Logger: srv.Log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(adm.Close)
	pj.url = "http://" + adm.Addr().String() + "/"
	return pj
}

// backendState asks the API for the state of one backend.
func (pj *pagePJ) backendState(t *testing.T, proxy, backend string) string {
	t.Helper()
	c := &http.Client{Timeout: waitTimeout}
	res, err := c.Get(pj.url + "api/v1/proxies")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var v struct {
		Proxies []struct {
			Name     string `json:"name"`
			Backends []struct {
				Address string `json:"address"`
				State   string `json:"state"`
			} `json:"backends"`
		} `json:"proxies"`
	}
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		t.Fatalf("GET /api/v1/proxies: %v", err)
	}
	for _, p := range v.Proxies {
		for _, b := range p.Backends {
			if p.Name == proxy && b.Address == backend {
				return b.State
			}
		}
	}
	t.Fatalf("GET /api/v1/proxies has no backend %s of %s", backend, proxy)
	return ""
}

// pump keeps a connection through addr busy until the test ends: it sends
// up to chunk bytes every 20 ms, varying, and reads the echo back.
func pump(t *testing.T, addr string, chunk int) {
	t.Helper()
	c := testutil.Dial(t, addr)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(io.Discard, c) })
	wg.Go(func() {
		buf := make([]byte, chunk)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				// A rate that rises and falls gives the sparklines a shape.
				n := chunk * (4 + (i/40)%5 + (i/130)%3) / 10
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
		}
	})
	t.Cleanup(func() {
		close(stop)
		_ = c.Close()
		wg.Wait()
	})
}

// ---------- the browser ----------

type browser struct {
	ctx context.Context

	mu          sync.Mutex
	problems    []string // console errors, exceptions, failed loads
	networkDown bool     // failed requests are expected
}

// expectNetworkErrors stops counting requests that fail as problems: from
// now on the page's server is expected to be gone.
func (b *browser) expectNetworkErrors() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.networkDown = true
}

// startBrowser starts headless Chromium with a fresh profile, and records
// what the page reports as an error.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		skipOrFail(t, "no Chromium found (looked at $PJ_CHROMIUM, chromium, chromium-browser, google-chrome): install the Debian package chromium")
	}
	// Now and then Chromium crashes while it starts (seen about once in
	// fifty starts in a container); a second try with a fresh profile
	// starts it.
	var (
		ctx  context.Context
		errs []string
	)
	for try := 1; try <= 3 && ctx == nil; try++ {
		c, cancel := launch(path, t.TempDir()) // the profile is removed after the browser has exited
		// The first action starts the browser and binds it to c, which
		// must therefore have no deadline of its own.
		if err := chromedp.Do(c); err != nil {
			cancel()
			errs = append(errs, fmt.Sprintf("try %d: %v", try, err))
			continue
		}
		t.Cleanup(cancel)
		ctx = c
	}
	if ctx == nil {
		skipOrFail(t, fmt.Sprintf("Chromium (%s) does not start:\n%s", path, strings.Join(errs, "\n")))
	}

	b := &browser{ctx: ctx}
	err := chromedp.Listen(ctx, func(ev any) {
		var problem string
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				problem = "console." + string(ev.Type) + ": " + strings.Join(args, " ")
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			problem = "uncaught exception: " + d.Text
			if d.Exception != nil {
				problem += " " + d.Exception.Description
			}
			problem += fmt.Sprintf(" at %s:%d", d.URL, d.LineNumber+1)
		case *cdplog.EventEntryAdded:
			// What the browser itself reports: a Content-Security-Policy
			// violation, a file that failed to load.
			b.mu.Lock()
			expected := b.networkDown && ev.Entry.Source == cdplog.EntrySourceNetwork
			b.mu.Unlock()
			if ev.Entry.Level == cdplog.EntryLevelError && !expected {
				problem = "browser log (" + string(ev.Entry.Source) + "): " + ev.Entry.Text + " " + ev.Entry.URL
			}
		}
		if problem != "" {
			b.mu.Lock()
			b.problems = append(b.problems, problem)
			b.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// launch makes a context that starts Chromium, headless and quiet, with
// the profile in dir. The cancel func stops it and waits for it to exit.
func launch(path, dir string) (context.Context, context.CancelFunc) {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(dir),
		chromedp.NoSandbox, // as root in a container there is no sandbox to have
		chromedp.DisableGPU,
		// Chromium reaches for the network at start-up (field trials,
		// components, sync) unless told not to; the test needs none of it.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1280, 800),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	return ctx, func() {
		cancelCtx()
		cancelAlloc() // waits for the process to exit
	}
}

func chromiumPath() string {
	if p := os.Getenv("PJ_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("PJ_REQUIRE_BROWSER") != "" {
		t.Fatalf("%s (PJ_REQUIRE_BROWSER is set, so this is a failure)", why)
	}
	t.Skip(why)
}

// do runs an action with a deadline.
func (b *browser) do(t *testing.T, what string, a chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, a); err != nil {
		t.Fatalf("%s: %v%s", what, err, b.context())
	}
}

// waitFor waits until the JavaScript expression is true in the page.
func (b *browser) waitFor(t *testing.T, what, expr string) {
	t.Helper()
	b.waitForWithin(t, waitTimeout, what, expr)
}

func (b *browser) waitForWithin(t *testing.T, timeout time.Duration, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		if errors.Is(err, chromedp.ErrPollingTimeout) {
			err = fmt.Errorf("not within %s", timeout)
		}
		t.Fatalf("waiting for %s: %v%s", what, err, b.context())
	}
}

// context is what the page showed and reported, for a failure message.
func (b *browser) context() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		text = "(cannot read the page: " + err.Error() + ")"
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return "\nthe page shows:\n" + text + "\nproblems reported by the page: " + strings.Join(b.problems, "\n")
}

// checkConsole fails the test if the page has reported an error.
func (b *browser) checkConsole(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.problems) > 0 {
		t.Fatalf("the page reported %d problem(s):\n%s", len(b.problems), strings.Join(b.problems, "\n"))
	}
}

// colorScheme makes the page see prefers-color-scheme: scheme.
func colorScheme(scheme string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		})
		return err
	})
}

// ---------- selectors ----------

func proxySel(name string) string { return `article[data-proxy=` + cssString(name) + `]` }

func backendSel(proxy, backend string) string {
	return proxySel(proxy) + ` li[data-backend=` + cssString(backend) + `]`
}

// activeIs is true when the proxy's card shows n active connections.
func activeIs(proxy, n string) string {
	return fmt.Sprintf(`document.querySelector(%s)?.textContent === %s`, jsValue(proxySel(proxy)+" .active-count"), jsValue(n))
}

// jsValue writes v as a JavaScript literal.
func jsValue(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// cssString quotes s for a CSS attribute selector.
func cssString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
)

// console is a browser tab on the web console, for a test to type into and read.
type webConsole struct {
	t *testing.T
	b *browsertest.Browser
}

// run runs chromedp actions on the tab, failing the test on an error.
func (c *webConsole) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	c.t.Helper()
	tab, cancel := c.b.Tab(context.Background())
	defer cancel()
	if err := chromedp.Do(tab, actions...); err != nil {
		c.t.Fatalf("browser: %s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression on the tab.
func eval[T any](c *webConsole, expr string) (T, error) {
	tab, cancel := c.b.Tab(context.Background())
	defer cancel()
	return chromedp.Run(tab, chromedp.Evaluate[T](expr))
}

// screenJS is the terminal's buffer, one line a row (tmux draws on the
// alternate screen: what is visible).
const screenJS = `(() => {
	if (!window.fcmTerm) return "";
	const b = fcmTerm.buffer.active, out = [];
	for (let i = 0; i < b.length; i++) { const l = b.getLine(i); if (l) out.push(l.translateToString(true)); }
	return out.join("\n");
})()`

func (c *webConsole) screen() string {
	s, _ := eval[string](c, screenJS)
	return s
}

func (c *webConsole) status() string {
	s, _ := eval[string](c, `(document.getElementById("status") || {}).textContent || ""`)
	return s
}

// waitFor polls the terminal until a line matches re.
func (c *webConsole) waitFor(re string) string {
	c.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := c.screen()
		if m := rx.FindString(s); m != "" {
			return m
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the web console never showed %s; status %q; screen:\n%s", re, c.status(), s)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitConnected waits for the page to say it is attached.
func (c *webConsole) waitConnected() {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for c.status() != "connected" {
		if time.Now().After(deadline) {
			c.t.Fatalf("the web console never connected: status %q; screen:\n%s", c.status(), c.screen())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// typeLine types s and Enter into the terminal, a key at a time. Each key is
// one keyDown with its text, as Chromium makes of a real key press
// (chromedp.KeyEvent's separate char events would reach xterm.js twice).
func (c *webConsole) typeLine(s string) {
	c.t.Helper()
	c.run("focus the terminal", chromedp.Click(chromedp.CSS(".xterm")))
	tab, cancel := c.b.Tab(context.Background())
	defer cancel()
	for _, r := range s + "\r" {
		down := input.DispatchKeyEventParams{Type: input.DispatchKeyEventTypeKeyDown, Key: string(r), Text: string(r)}
		if r == '\r' {
			down.Key, down.Code, down.WindowsVirtualKeyCode, down.NativeVirtualKeyCode = "Enter", "Enter", 13, 13
		}
		up := down
		up.Type, up.Text = input.DispatchKeyEventTypeKeyUp, ""
		for _, e := range []input.DispatchKeyEventParams{down, up} {
			if _, err := chromedp.Call(tab, input.DispatchKeyEvent, e); err != nil {
				c.t.Fatalf("browser: type %q: %v", s, err)
			}
		}
	}
}

// size is the terminal's columns and rows.
func (c *webConsole) size() (cols, rows int) {
	v, err := eval[struct{ Cols, Rows int }](c, `({cols: fcmTerm.cols, rows: fcmTerm.rows})`)
	if err != nil {
		c.t.Fatal(err)
	}
	return v.Cols, v.Rows
}

// screenshot saves the tab to the test's output dir.
func (c *webConsole) screenshot(name string) {
	c.t.Helper()
	tab, cancel := c.b.Tab(context.Background())
	defer cancel()
	png, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
	if err != nil {
		c.t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("FCM_TEST_OUTPUT")
	if dir == "" {
		dir = c.t.TempDir()
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.t.Logf("screenshot: %s", path)
}

// TestWebConsole: alice signs in at the page and opens the console of her VM
// in the browser: a shell on session web-<vm> that follows the window's size,
// survives a reload and a daemon restart, is listed by `fcm console ls` and
// shared with the CLI; a page of another origin cannot attach to it or
// stop the VM with her cookie.
func TestWebConsole(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	base := "http://" + daemonListen
	flags := append(oidcFlags(t), "--suspend", "on", "--suspend-after", "off")
	d := startDaemonHV(t, "qemu", dataDir, flags...)
	b := browsertest.New(t)
	c := &webConsole{t: t, b: b}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// alice signs in on the page; her CLI uses the same session's token.
	if page, err := b.Login(ctx, base+"/login", oidctest.Alice.Username, oidctest.Alice.Password); err != nil || page.URL != base+"/" {
		t.Fatalf("alice signing in: %v; at %s (%d)", err, page.URL, page.Status)
	}
	tab, cancelTab := b.Tab(ctx)
	cookies, err := chromedp.Call(tab, network.GetCookies, network.GetCookiesParams{URLs: []string{base}})
	cancelTab()
	if err != nil {
		t.Fatal(err)
	}
	var token string
	for _, ck := range cookies.Cookies {
		if ck.Name == auth.SessionCookie {
			token = ck.Value
		}
	}
	if token == "" {
		t.Fatalf("no %s cookie after signing in: %+v", auth.SessionCookie, cookies)
	}
	env := []string{"FCM_HOST=" + base, "FCM_TOKEN=" + token}
	work := t.TempDir()
	alice := func(args ...string) string {
		t.Helper()
		out, code := runFCM(t, work, env, args...)
		if code != 0 {
			t.Fatalf("alice: fcm %v: exit %d:\n%s\ndaemon log:\n%s", args, code, out, tail(d.log(), 3000))
		}
		return out
	}
	const vm, session = "webterm", "web-webterm"
	alice("create", "--name", vm, "--cpus", "1")

	// The console: a shell, and what it prints.
	page, err := b.Open(ctx, base+"/vms/"+vm+"/console")
	if err != nil || page.Status != http.StatusOK {
		t.Fatalf("open the console: %v (%d) %q", err, page.Status, page.Text)
	}
	c.waitConnected()
	c.waitFor(`root@` + vm)
	c.typeLine("echo $((6*7))")
	c.waitFor(`(?m)^42\s*$`)

	// The guest's terminal follows the window (less the guest tmux's status line).
	cols0, rows0 := c.size()
	c.run("resize the window", chromedp.EmulateViewport(700, 420))
	deadline := time.Now().Add(10 * time.Second)
	for cols, rows := c.size(); cols == cols0 || rows == rows0; cols, rows = c.size() {
		if time.Now().After(deadline) {
			t.Fatalf("the terminal stayed %dx%d after the window shrank", cols, rows)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // the resize reaches the guest's tmux
	cols, rows := c.size()
	c.typeLine("stty size")
	c.waitFor(fmt.Sprintf(`(?m)^%d %d\s*$`, rows-1, cols))
	c.screenshot("webconsole.png")

	// A reload is the same session, with its screen.
	c.run("reload", chromedp.Reload())
	c.waitConnected()
	c.waitFor(`(?m)^42\s*$`)
	out := alice("console", "ls", vm)
	var listed []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		listed = append(listed, strings.Fields(line)[0])
	}
	if len(listed) != 1 || listed[0] != session {
		t.Errorf("fcm console ls %s after a reload lists %q, want only %s:\n%s", vm, listed, session, out)
	}

	// The CLI on the same session sees what the browser typed, and the other way.
	h := newHostTmux(t)
	h.run("cli", work, env, os.Getenv("FCM_BIN")+" console "+vm+" -s "+session)
	h.waitFor("cli", "root@"+vm)
	c.typeLine("echo from-the-browser-$((3*4))")
	h.waitFor("cli", "from-the-browser-12")
	h.keys("cli", "echo from-the-cli-$((5*5))", "Enter")
	c.waitFor(`from-the-cli-25`)
	h.keys("cli", "C-]")
	h.waitFor("cli", "Detached from "+session)

	// A daemon restart drops the page's connection; it comes back by itself.
	d.stop(syscall.SIGTERM)
	for deadline := time.Now().Add(10 * time.Second); c.status() == "connected"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the page still says connected with the daemon stopped")
		}
	}
	t.Logf("with the daemon stopped the page says: %s", c.status())
	d = startDaemonHV(t, "qemu", dataDir, flags...)
	c.waitConnected()
	c.typeLine("echo back-$((2*3))")
	c.waitFor(`(?m)^back-6\s*$`)

	// The VM suspended under the page: the page reconnects, which wakes it,
	// and the session is as it was.
	alice("suspend", vm)
	for deadline := time.Now().Add(10 * time.Second); c.status() == "connected" && !strings.Contains(d.log(), "vm woken for a command"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the page still says connected with the vm suspended")
		}
	}
	c.waitConnected()
	c.typeLine("echo awake-$((4*4))")
	c.waitFor(`(?m)^awake-16\s*$`)
	if !strings.Contains(d.log(), "vm woken for a command") {
		t.Errorf("the console's reconnect did not wake the vm:\n%s", tail(d.log(), 2000))
	}
	if out := alice("ls"); !regexp.MustCompile(`(?m)^` + vm + `\s.*\brunning\b`).MatchString(out) {
		t.Errorf("after the console woke it, fcm ls:\n%s", out)
	}

	// Another origin (another port) may not attach or act with alice's cookie.
	attachPath := "/v1/vms/" + vm + "/sessions/" + session + "/attach"
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><body><script>
window.events = [];
const ws = new WebSocket("ws://%[1]s%[2]s?cols=80&rows=24");
ws.onopen = () => events.push("open");
ws.onmessage = () => events.push("message");
ws.onerror = () => events.push("error");
ws.onclose = (e) => events.push("close " + e.code);
fetch("http://%[1]s/v1/vms/%[3]s/stop", {method: "POST", credentials: "include", mode: "no-cors"})
	.then(() => events.push("stop sent"), () => events.push("stop failed"));
</script></body>`, daemonListen, attachPath, vm)
	}))
	defer evil.Close()
	// Leave the console first: its own attach is logged when it ends.
	if _, err := b.Open(ctx, "about:blank"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	before := d.log()
	if _, err := b.Open(ctx, evil.URL); err != nil {
		t.Fatal(err)
	}
	var events []string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		events, _ = eval[[]string](c, `window.events || []`)
		if len(events) >= 3 || time.Now().After(deadline) {
			break
		}
	}
	joined := strings.Join(events, ", ")
	if strings.Contains(joined, "open") || strings.Contains(joined, "message") || !strings.Contains(joined, "close") {
		t.Errorf("another origin's WebSocket with alice's cookie: events %q, want it refused", joined)
	}
	time.Sleep(time.Second)
	logged := strings.TrimPrefix(d.log(), before)
	attachRE := regexp.MustCompile(`path=` + regexp.QuoteMeta(attachPath) + ` status=(\d+)`)
	var statuses []string
	for _, m := range attachRE.FindAllStringSubmatch(logged, -1) {
		statuses = append(statuses, m[1])
	}
	if len(statuses) == 0 || strings.Contains(strings.Join(statuses, " "), "101") {
		t.Errorf("attach requests from the other origin: statuses %v, want refused (403), none attached; log:\n%s", statuses, tail(logged, 3000))
	}
	if !regexp.MustCompile(`method=POST path=/v1/vms/` + vm + `/stop status=403`).MatchString(logged) {
		t.Errorf("the other origin's stop was not refused with 403; log:\n%s", tail(logged, 3000))
	}
	if v := d.vms(work)[vm]; v.State != "running" {
		t.Errorf("%s after the other origin's stop: %s, want running", vm, v.State)
	}
	alice("destroy", vm)
}

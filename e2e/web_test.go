package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
	"github.com/fcmhost/fcm/internal/client"
)

// TestWeb_StatusPage: alice signs in on the status page through the OpenID
// provider, sees her VM and not bob's, stops and starts it with the page's
// buttons and sees the state change without a reload; a page of another
// origin in the same browser cannot stop it with her cookie.
func TestWeb_StatusPage(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	base := "http://" + daemonListen
	d := startDaemonHV(t, "qemu", dataDir, oidcFlags(t)...)
	admin := &client.Client{Host: base, Token: d.token()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// Each makes a VM with the CLI, bob in a browser of his own.
	b := browsertest.New(t)
	alice, bob := newPerson(t, "alice"), newPerson(t, "bob")
	for _, x := range []struct {
		p  *person
		b  *browsertest.Browser
		u  oidctest.User
		vm string
	}{{alice, b, oidctest.Alice, "alice-web"}, {bob, browsertest.New(t), oidctest.Bob, "bob-web"}} {
		if out, code, _ := x.p.login(x.b, x.u); code != 0 {
			t.Fatalf("fcm login as %s: exit %d:\n%s", x.p.name, code, out)
		}
		x.p.must("create", "--name", x.vm, "--memory", "256")
		t.Cleanup(func() { x.p.fcm("destroy", x.vm) })
	}

	// alice signs in on the page.
	page, err := b.Login(ctx, base+"/login", oidctest.Alice.Username, oidctest.Alice.Password)
	if err != nil || page.URL != base+"/" {
		t.Fatalf("signing in on the page: %v; the browser is at %s (%d): %q", err, page.URL, page.Status, page.Text)
	}
	stateOf := func() string {
		s, err := tabRun(b, chromedp.Evaluate[string](`(() => { const e = document.querySelector('tr[data-vm="alice-web"] [data-field="state"]'); return e ? e.textContent : ""; })()`))
		if err != nil {
			t.Fatalf("read the state on the page: %v", err)
		}
		return s
	}
	waitState := func(want string) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
			if got = stateOf(); got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the page shows alice-web %q, want %q\ndaemon log:\n%s", got, want, tail(d.log(), 3000))
			}
		}
	}
	waitState("running")
	text, err := tabRun(b, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	who, err := tabRun(b, chromedp.Text(chromedp.CSS("#who")))
	if err != nil {
		t.Fatal(err)
	}
	if who != "alice@example.com" || strings.Contains(text, "bob-web") || strings.Contains(text, "Owner") {
		t.Errorf("alice's page (signed in as %q) shows bob's VM or owners:\n%s", who, text)
	}

	// Stop and start with the buttons: the state follows on the same page.
	if _, err := tabRun(b, chromedp.Evaluate[string](`window.fcmSamePage = "yes"`)); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct{ button, state string }{{"stop", "stopped"}, {"start", "running"}} {
		if err := tabDo(b, chromedp.Click(chromedp.CSS(`tr[data-vm="alice-web"] button[data-action="`+step.button+`"]`))); err != nil {
			t.Fatalf("click %s: %v", step.button, err)
		}
		waitState(step.state)
		if v, err := admin.GetVM(ctx, "alice-web"); err != nil || v.State != step.state {
			t.Fatalf("after %s on the page the daemon says %+v, %v", step.button, v, err)
		}
	}
	// A busy loop in alice-web (over SSH: it has no app to fcm run in), for
	// its usage on its page below (the daemon samples every 10 s).
	guestSSH := d.guestClient(t.TempDir(), "alice-web")
	defer guestSSH.Close()
	busyCtx, stopBusy := context.WithCancel(ctx)
	busyDone := make(chan error, 1)
	go func() {
		out, err := guestSSH.Run(busyCtx, `end=$(($(date +%s)+70)); while [ $(date +%s) -lt $end ]; do :; done`)
		if err != nil && busyCtx.Err() == nil {
			err = fmt.Errorf("%w: %s", err, out)
		} else {
			err = nil
		}
		busyDone <- err
	}()
	defer func() {
		stopBusy()
		if err := <-busyDone; err != nil {
			t.Errorf("the busy loop in alice-web: %v", err)
		}
	}()
	if same, err := tabRun(b, chromedp.Evaluate[string](`window.fcmSamePage || "reloaded"`)); err != nil || same != "yes" {
		t.Errorf("the page was reloaded while the state changed (%q, %v)", same, err)
	}
	// The sessions column is filled from the VMs (none yet: "0").
	waitPageText(t, b, `tr[data-vm="alice-web"] [data-field="sessions"]`, "0")
	statusPageScreenshots(t, b)

	// alice's VM page; bob's is as missing to her.
	if p, err := b.Open(ctx, base+"/vms/alice-web"); err != nil || p.Status != http.StatusOK || !strings.Contains(p.Text, "Releases") {
		t.Errorf("alice-web's page: %v %d %q", err, p.Status, p.Text)
	}
	waitPageText(t, b, "#sessions", "No sessions")
	if p, err := b.Open(ctx, base+"/vms/bob-web"); err != nil || p.Status != http.StatusNotFound || strings.Contains(p.Text, "bob@") {
		t.Errorf("bob-web's page as alice: %v %d %q", err, p.Status, p.Text)
	}

	// Another origin (another port of 127.0.0.1) makes alice's browser post
	// a stop with her cookie: refused.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><title>other</title><script>
fetch(%q, {method: "POST", credentials: "include"}).then(r => { document.title = "answered " + r.status; }, e => { document.title = "failed: " + e; });
</script>`, base+"/v1/vms/alice-web/stop")
	}))
	defer other.Close()
	if _, err := b.Open(ctx, other.URL); err != nil {
		t.Fatal(err)
	}
	var title string
	for deadline := time.Now().Add(30 * time.Second); title == "" || title == "other"; time.Sleep(100 * time.Millisecond) {
		if title, err = tabRun(b, chromedp.Title()); err != nil || time.Now().After(deadline) {
			t.Fatalf("the other origin's fetch did not finish (title %q, %v)", title, err)
		}
	}
	// The request reached the daemon with the cookie (without it: 401) and
	// was refused.
	if !strings.Contains(d.log(), "method=POST path=/v1/vms/alice-web/stop status=403") {
		t.Errorf("the other origin's stop (page says %q) was not refused with 403:\n%s", title, tail(d.log(), 3000))
	}
	if v, err := admin.GetVM(ctx, "alice-web"); err != nil || v.State != "running" {
		t.Errorf("after the other origin's stop alice-web is %+v, %v", v, err)
	}

	// alice-web's page shows its usage: about one vCPU busy, its memory of
	// its size, and the chart of the last hour.
	field := func(name string) string {
		s, err := tabRun(b, chromedp.Evaluate[string](fmt.Sprintf(`(() => { const e = document.querySelector('#usage [data-field=%q]'); return e ? e.textContent : ""; })()`, name)))
		if err != nil {
			t.Fatalf("read %s on alice-web's page: %v", name, err)
		}
		return s
	}
	// The chart has a point from the second sample on; the CPU figure is
	// the last two samples'.
	var seen []string
	var points string
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		if _, err := b.Open(ctx, base+"/vms/alice-web"); err != nil {
			t.Fatal(err)
		}
		cpu := field("cpu")
		if len(seen) == 0 || seen[len(seen)-1] != cpu {
			seen = append(seen, cpu)
		}
		var err error
		if points, err = tabRun(b, chromedp.Evaluate[string](`(() => { const e = document.querySelector('figure.chart polyline.cpu'); return e ? e.getAttribute('points') : ""; })()`)); err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSuffix(cpu, "%"))
		if err == nil && n >= 80 && n <= 120 && len(strings.Fields(points)) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice-web's page shows CPU %q during a busy loop and chart points %q; want about 100%% and two points or more", seen, points)
		}
	}
	if mem := field("memory"); !regexp.MustCompile(`^\d+(\.\d)?[KMG] of 256M$`).MatchString(mem) {
		t.Errorf("alice-web's page shows memory %q, want <used> of 256M", mem)
	}
	saveScreenshot(t, b, "vm-page-usage.png", 1280, 900)
}

// tabRun runs a on the browser's tab (each call in a time limit of its own).
func tabRun[T any](b *browsertest.Browser, a chromedp.Action[T]) (T, error) {
	tab, cancel := b.Tab(context.Background())
	defer cancel()
	return chromedp.Run(tab, a)
}

// tabDo runs steps on the browser's tab.
func tabDo(b *browsertest.Browser, steps ...chromedp.Action[chromedp.Void]) error {
	tab, cancel := b.Tab(context.Background())
	defer cancel()
	return chromedp.Do(tab, steps...)
}

// waitPageText waits until the element sel on the tab's page says want.
func waitPageText(t *testing.T, b *browsertest.Browser, sel, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var err error
		got, err = tabRun(b, chromedp.Evaluate[string](fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? e.textContent : ""; })()`, sel)))
		if err == nil && strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s says %q, want %q (%v)", sel, got, want, err)
		}
	}
}

// statusPageScreenshots saves the page as a desktop and a phone show it.
func statusPageScreenshots(t *testing.T, b *browsertest.Browser) {
	t.Helper()
	saveScreenshot(t, b, "status-page.png", 1280, 800)
	saveScreenshot(t, b, "status-page-phone.png", 390, 844)
}

// saveScreenshot saves the tab's page, at w x h, as name in $FCM_TEST_OUTPUT.
func saveScreenshot(t *testing.T, b *browsertest.Browser, name string, w, h int64) {
	t.Helper()
	dir := os.Getenv("FCM_TEST_OUTPUT")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := tabDo(b, chromedp.EmulateViewport(w, h), chromedp.Sleep(300*time.Millisecond)); err != nil {
		t.Fatalf("resize for a screenshot: %v", err)
	}
	buf, err := tabRun(b, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

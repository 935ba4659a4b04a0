package daemon

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/deploy"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/usage"
	"github.com/fcmhost/fcm/internal/vm"
)

// page GETs path from h with secret as the browser's session cookie ("" for
// none) and returns the status, the headers and the body.
func page(t *testing.T, h http.Handler, path, secret string) (int, http.Header, string) {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	if secret != "" {
		req.AddCookie(&http.Cookie{Name: auth.SessionCookie, Value: secret})
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code, w.Header(), w.Body.String()
}

// tbody is the list of VMs on the page: what its rows show.
func tbody(t *testing.T, body string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<table class="vms".*?<tbody>(.*?)</tbody>`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no list of VMs on the page:\n%s", body)
	}
	return m[1]
}

// withBobsVM adds a VM of bob's, with a deployed release, to p's store.
func withBobsVM(t *testing.T, p *people) {
	t.Helper()
	err := p.store.Update(func(tx *store.Tx) error {
		if err := tx.InsertVM(&store.VM{ID: "bbbb2222", Name: "bob-vm", Owner: p.bobID, State: "stopped", IP: "172.16.0.51", Port: 3000, CPUs: 2, MemoryMiB: 2048, DiskBytes: 4 << 30}); err != nil {
			return err
		}
		return tx.PutRelease(&store.Release{VM: "bbbb2222", Version: 3, Description: "Deploy 9f8e7d6", Commit: "9f8e7d6c5b4a", User: "bob@example.com",
			Status: "succeeded", CreatedAt: time.Date(2026, 11, 2, 10, 30, 0, 0, time.UTC)})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestStatusPage_SignedOut(t *testing.T) {
	p := newPeople(t)
	h := routeServer(t, p)
	for _, secret := range []string{"", p.wrong} {
		status, hdr, body := page(t, h, "/", secret)
		if status != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") {
			t.Fatalf("GET / signed out (cookie %v): %d %s", secret != "", status, hdr.Get("Content-Type"))
		}
		for _, want := range []string{`<h1>Sign in</h1>`, `href="/login"`, `<form method="post" action="/session"`, `name="token"`} {
			if !strings.Contains(body, want) {
				t.Errorf("signed-out page has no %s:\n%s", want, body)
			}
		}
		for _, leak := range []string{"alice-vm", "alice@example.com", "Sign out", `id="vms"`} {
			if strings.Contains(body, leak) {
				t.Errorf("signed-out page shows %q:\n%s", leak, body)
			}
		}
	}
	_, _, body := page(t, h, "/?error=invalid_token", "")
	if !strings.Contains(body, "That token is not valid") {
		t.Errorf("?error=invalid_token is not explained:\n%s", body)
	}
	_, _, body = page(t, h, "/?error=<script>alert(1)</script>", "")
	if strings.Contains(body, "<script>alert") {
		t.Errorf("an unknown ?error= is echoed:\n%s", body)
	}
}

func TestStatusPage_NoOIDCSaysSo(t *testing.T) {
	p := newPeople(t)
	h := (&Server{Store: p.store, Log: slogTo(io.Discard)}).Handler()
	_, _, body := page(t, h, "/?error=login_disabled", "")
	if strings.Contains(body, `href="/login"`) || !strings.Contains(body, "no sign-in configured") ||
		!strings.Contains(body, "Sign-in is not set up on this daemon") || !strings.Contains(body, `action="/session"`) {
		t.Errorf("the page of a daemon without OIDC:\n%s", body)
	}
}

func TestStatusPage_UsersSeeTheirOwn(t *testing.T) {
	p := newPeople(t)
	withBobsVM(t, p)
	h := routeServer(t, p)
	for _, c := range []struct{ who, secret, mine, theirs string }{
		{"alice@example.com", p.alice, "alice-vm", "bob-vm"},
		{"bob@example.com", p.bob, "bob-vm", "alice-vm"},
	} {
		status, _, body := page(t, h, "/", c.secret)
		if status != http.StatusOK {
			t.Fatalf("GET / as %s: %d\n%s", c.who, status, body)
		}
		if !strings.Contains(body, `id="who">`+c.who+`<`) || !strings.Contains(body, `action="/logout"`) {
			t.Errorf("%s's page does not say who is signed in, or has no Sign out", c.who)
		}
		rows := tbody(t, body)
		if !strings.Contains(rows, `<tr data-vm="`+c.mine+`">`) || !strings.Contains(rows, `href="/vms/`+c.mine+`/console"`) {
			t.Errorf("%s's page does not list %s with its Console link:\n%s", c.who, c.mine, rows)
		}
		if strings.Contains(body, c.theirs) || strings.Contains(body, "<th>Owner</th>") {
			t.Errorf("%s's page shows %s or an owner column:\n%s", c.who, c.theirs, body)
		}
	}
	// bob's row: its size and its last release.
	_, _, body := page(t, h, "/", p.bob)
	rows := tbody(t, body)
	for _, want := range []string{`data-field="state">stopped<`, "2 CPU, 2G RAM, 4G disk", "v3 <code>9f8e7d6</code>", "2026-11-02 10:30 UTC"} {
		if !strings.Contains(rows, want) {
			t.Errorf("bob's row has no %q:\n%s", want, rows)
		}
	}
}

func TestStatusPage_AdminSeesAllWithOwners(t *testing.T) {
	p := newPeople(t)
	withBobsVM(t, p)
	_, _, body := page(t, routeServer(t, p), "/", p.admin)
	if !strings.Contains(body, `id="who">admin<`) || !strings.Contains(body, "<th>Owner</th>") {
		t.Fatalf("the admin's page has no owner column:\n%s", body)
	}
	rows := tbody(t, body)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?s)<tr data-vm="alice-vm">.*?data-field="owner">alice@example.com<`),
		regexp.MustCompile(`(?s)<tr data-vm="bob-vm">.*?data-field="owner">bob@example.com<`),
	} {
		if !want.MatchString(rows) {
			t.Errorf("the admin's list does not match %s:\n%s", want, rows)
		}
	}
}

func TestVMPage(t *testing.T) {
	p := newPeople(t)
	err := p.store.Update(func(tx *store.Tx) error {
		return tx.PutConfig("aaaa1111", map[string]string{"DATABASE_URL": "postgres://secret-password@db", "API_KEY": "sk-very-secret"})
	})
	if err != nil {
		t.Fatal(err)
	}
	h := routeServer(t, p)
	for _, secret := range []string{p.alice, p.admin} {
		status, hdr, body := page(t, h, "/vms/alice-vm", secret)
		if status != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") {
			t.Fatalf("GET /vms/alice-vm: %d %s\n%s", status, hdr.Get("Content-Type"), body)
		}
		for _, want := range []string{"<h1>alice-vm</h1>", "<code>API_KEY</code>", "<code>DATABASE_URL</code>", `href="/vms/alice-vm/console"`,
			`id="logs"`, `id="sessions"`, "No releases yet"} {
			if !strings.Contains(body, want) {
				t.Errorf("alice-vm's page has no %s:\n%s", want, body)
			}
		}
		if strings.Contains(body, "secret-password") || strings.Contains(body, "sk-very-secret") {
			t.Errorf("alice-vm's page shows config values:\n%s", body)
		}
	}
	// bob learns of alice's VM what he learns of a missing one.
	s1, _, b1 := page(t, h, "/vms/alice-vm", p.bob)
	s2, _, b2 := page(t, h, "/vms/nosuch-vm", p.bob)
	if s1 != http.StatusNotFound || strings.Contains(b1, "API_KEY") || s2 != s1 || strings.ReplaceAll(b2, "nosuch-vm", "alice-vm") != b1 {
		t.Errorf("/vms/alice-vm as bob: %d %s; a missing VM: %d %s", s1, b1, s2, b2)
	}
	if status, _, _ := page(t, h, "/vms/alice-vm", ""); status != http.StatusUnauthorized {
		t.Errorf("/vms/alice-vm signed out: %d, want 401", status)
	}
}

// TestStatusPage_Headers: the pages allow no inline script and no framing;
// the script and style they load are served.
func TestStatusPage_Headers(t *testing.T) {
	p := newPeople(t)
	h := routeServer(t, p)
	for _, path := range []string{"/", "/vms/alice-vm"} {
		_, hdr, body := page(t, h, path, p.alice)
		csp := hdr.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: Content-Security-Policy %q", path, csp)
		}
		if regexp.MustCompile(`<script>|<script [^>]*>[^<]|\son[a-z]+=`).MatchString(body) {
			t.Errorf("%s has inline script or event handlers:\n%s", path, body)
		}
	}
	for path, ctype := range map[string]string{"/static/app.js": "text/javascript", "/static/app.css": "text/css"} {
		status, hdr, body := page(t, h, path, "")
		if status != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), ctype) || len(body) < 500 {
			t.Errorf("%s: %d %s, %d bytes", path, status, hdr.Get("Content-Type"), len(body))
		}
	}
}

// setState is a fake lifecycle's change of a VM's state.
func setState(st *store.Store, name, state string) (*store.VM, error) {
	return st.UpdateVM(name, func(v *store.VM) error { v.State = state; return nil })
}

// TestStatusPage_InBrowser runs the page's script in Chromium against a
// daemon whose VMs are fakes: paste a token, see the VM, stop and start it
// with the buttons, see a change made elsewhere, create and destroy a VM,
// all on one page that never reloads and throws no error; then sign out.
func TestStatusPage_InBrowser(t *testing.T) {
	p := newPeople(t)
	fake := &fakeVMs{
		create: func(ctx context.Context, owner string, req api.CreateVMRequest, progress vm.Progress) (*store.VM, error) {
			v := &store.VM{ID: "cccc3333", Name: req.Name, Owner: owner, State: "running", IP: "172.16.0.52", Port: 3000, CPUs: 1, MemoryMiB: 1024, DiskBytes: 2 << 30}
			progress(v, "boot", "booting")
			return v, p.store.Update(func(tx *store.Tx) error { return tx.InsertVM(v) })
		},
		start: func(ctx context.Context, name string, _ vm.Progress) (*store.VM, error) {
			return setState(p.store, name, "running")
		},
		stop: func(ctx context.Context, name string) (*store.VM, error) { return setState(p.store, name, "stopped") },
		destroy: func(ctx context.Context, name string) error {
			return p.store.Update(func(tx *store.Tx) error { return tx.DeleteVM(name) })
		},
	}
	s := &Server{Store: p.store, VMs: fake, Guests: noGuests{}, Log: slogTo(io.Discard),
		Deploys: &deploy.Service{DataDir: t.TempDir(), Store: p.store, Guests: noGuests{}, Log: slogTo(io.Discard)}}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	b := browsertest.New(t)
	ctx := ctxFor(t)

	// Every page records its script's errors and CSP violations.
	tab, cancel := b.Tab(ctx)
	_, err := chromedp.Call(tab, cdppage.AddScriptToEvaluateOnNewDocument, cdppage.AddScriptToEvaluateOnNewDocumentParams{Source: `
		window.fcmErrors = [];
		addEventListener("error", (e) => fcmErrors.push(String(e.message)));
		addEventListener("unhandledrejection", (e) => fcmErrors.push(String(e.reason)));
		document.addEventListener("securitypolicyviolation", (e) => fcmErrors.push("CSP: " + e.violatedDirective));`})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	eval := func(js string) string {
		t.Helper()
		tab, cancel := b.Tab(ctx)
		defer cancel()
		out, err := chromedp.Run(tab, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		return out
	}
	do := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		tab, cancel := b.Tab(ctx)
		defer cancel()
		if err := chromedp.Do(tab, steps...); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what, js, want string) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if got = eval(js); got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %q, want %q; the page:\n%s", what, got, want, eval("document.body.innerText"))
			}
		}
	}
	stateOf := func(name string) string {
		return `(() => { const e = document.querySelector('tr[data-vm="` + name + `"] [data-field="state"]'); return e ? e.textContent : "(no row)"; })()`
	}

	signedOut, err := b.Open(ctx, srv.URL+"/")
	if err != nil || !strings.Contains(signedOut.Text, "Sign in") {
		t.Fatalf("the signed-out page: %v %q", err, signedOut.Text)
	}
	do(chromedp.SendKeys(chromedp.CSS("#token"), p.alice), chromedp.Click(chromedp.CSS(".token-form button")))
	waitFor("who after pasting alice's token", `(document.getElementById("who") || {}).textContent || ""`, "alice@example.com")
	waitFor("alice-vm", stateOf("alice-vm"), "running")
	eval(`window.samePage = "yes"`)

	do(chromedp.Click(chromedp.CSS(`tr[data-vm="alice-vm"] button[data-action="stop"]`)))
	waitFor("alice-vm after Stop", stateOf("alice-vm"), "stopped")
	if eval(`document.querySelector('tr[data-vm="alice-vm"] button[data-action="stop"]').disabled ? "disabled" : "enabled"`) != "disabled" {
		t.Errorf("Stop is offered for a stopped VM")
	}
	do(chromedp.Click(chromedp.CSS(`tr[data-vm="alice-vm"] button[data-action="start"]`)))
	waitFor("alice-vm after Start", stateOf("alice-vm"), "running")
	// A change made elsewhere (the CLI) shows too.
	if _, err := setState(p.store, "alice-vm", "stopped"); err != nil {
		t.Fatal(err)
	}
	waitFor("alice-vm stopped by someone else", stateOf("alice-vm"), "stopped")

	do(chromedp.SendKeys(chromedp.CSS("#create-name"), "second"), chromedp.Click(chromedp.CSS("#create button")))
	waitFor("the VM created from the form", stateOf("second"), "running")
	waitFor("the create's progress", `document.getElementById("create-progress").textContent.includes("second is running") ? "shown" : document.getElementById("create-progress").textContent`, "shown")
	// Destroy asks for the name: a wrong one destroys nothing.
	eval(`window.prompt = () => "wrong"; "ok"`)
	do(chromedp.Click(chromedp.CSS(`tr[data-vm="second"] button[data-action="destroy"]`)))
	waitFor("the flash after a wrong name", `document.getElementById("flash").textContent.startsWith("Not destroyed") ? "refused" : document.getElementById("flash").textContent`, "refused")
	if v, err := p.store.GetVM("second"); err != nil || v == nil {
		t.Fatalf("a wrong name destroyed the VM: %v", err)
	}
	eval(`window.prompt = () => "second"; "ok"`)
	do(chromedp.Click(chromedp.CSS(`tr[data-vm="second"] button[data-action="destroy"]`)))
	waitFor("the destroyed VM", stateOf("second"), "(no row)")
	if _, err := p.store.GetVM("second"); err == nil {
		t.Errorf("the VM is still in the store after Destroy")
	}
	if same := eval(`window.samePage || "reloaded"`); same != "yes" {
		t.Errorf("the page reloaded")
	}
	if errs := eval(`JSON.stringify(window.fcmErrors)`); errs != "[]" {
		t.Errorf("the page's script failed: %s", errs)
	}

	do(chromedp.Click(chromedp.CSS("#sign-out")))
	waitFor("after Sign out", `document.getElementById("signed-out") ? "signed out" : location.href`, "signed out")
}

// TestStatusPage_ShowsWhy: a VM that is not where its owner wants it shows
// why, on the list and on its own page (self-healing's states).
func TestStatusPage_ShowsWhy(t *testing.T) {
	p := newPeople(t)
	const why = "crashed 5 times in 10 min: out of memory (the kernel's OOM killer ended its hypervisor at the vm's memory limit)"
	if _, err := p.store.UpdateVM("alice-vm", func(v *store.VM) error {
		v.State, v.Reason, v.Desired = api.StateCrashed, why, api.DesiredRunning
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h := routeServer(t, p)
	_, _, body := page(t, h, "/", p.alice)
	rows := tbody(t, body)
	for _, want := range []string{`data-field="state">crashed<`, `data-field="reason">crashed 5 times in 10 min: out of memory`} {
		if !strings.Contains(rows, want) {
			t.Errorf("alice's list has no %q:\n%s", want, rows)
		}
	}
	_, _, body = page(t, h, "/vms/alice-vm", p.alice)
	if !strings.Contains(body, `data-field="reason">crashed 5 times in 10 min`) {
		t.Errorf("alice-vm's page does not say why it is crashed:\n%s", body)
	}
}

// TestVMPage_Usage: a running VM's page shows its newest usage sample and a
// chart of its last hour; with no sample yet, no usage section.
func TestVMPage_Usage(t *testing.T) {
	p := newPeople(t)
	sampler := &usage.Sampler{}
	s := &Server{Store: p.store, VMs: &fakeVMs{}, Guests: noGuests{}, Log: slogTo(io.Discard), Usage: sampler}
	h := s.Handler()
	if _, _, body := page(t, h, "/vms/alice-vm", p.alice); strings.Contains(body, `id="usage"`) {
		t.Errorf("a page with no usage sample yet has a usage section:\n%s", body)
	}
	t0 := time.Now().Add(-time.Minute)
	for i, cpu := range []float64{100, 105, 106} {
		sampler.Add("aaaa1111", usage.Sample{At: t0.Add(time.Duration(i) * 10 * time.Second), CPUSeconds: cpu,
			MemoryBytes: 300 << 20, RxBytes: 2048, TxBytes: 5 << 20, DiskBytes: 700 << 20})
	}
	_, _, body := page(t, h, "/vms/alice-vm", p.alice)
	for _, want := range []string{`id="usage"`, `<dd data-field="cpu">10%</dd>`, `<dd data-field="disk">700M of 0K</dd>`,
		`<dd data-field="network">in 2K, out 5M</dd>`, `<polyline class="cpu" points="`, "2 samples, one every 10 s"} {
		if !strings.Contains(body, want) {
			t.Errorf("alice-vm's page lacks %s:\n%s", want, body)
		}
	}
}

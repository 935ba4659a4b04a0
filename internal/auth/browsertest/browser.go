// Package browsertest drives a real headless Chromium through fcm's OIDC
// login pages in tests: open the login URL, sign in at the provider's form,
// confirm the code on fcm's page, and replay callback URLs.
package browsertest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// callTimeout bounds each call of a Browser method when ctx has no earlier deadline.
const callTimeout = 30 * time.Second

// callbackPath is how fcm's OIDC redirect URI ends; navigations to it are recorded.
const callbackPath = "/oauth2/callback"

// Page is what the browser shows after a navigation.
type Page struct {
	URL    string // the document's URL after redirects
	Status int    // HTTP status of the main document; 0 if the browser gave none
	Text   string // document.body.innerText
	Code   string // text of #login-code, if present
	Grant  string // text of #grant-code: the code fcm's page gives to type into the CLI
	Host   string // text of #login-host: the machine fcm's confirm page says the login came from
	Error  string // text of #error, if present
	Done   string // text of #done, if present

	loginForm  bool   // the provider's form (#username and #password) is on the page
	loginError string // text of the provider's #login-error, if present
}

// Browser is a headless Chromium with one tab, for one test. Its methods act
// on that tab, so call them from one goroutine at a time.
type Browser struct {
	tab context.Context

	mu           sync.Mutex
	lastCallback string
}

// Chromium returns the browser binary the package runs: $FCM_CHROMIUM, or
// /usr/bin/chromium.
func Chromium() string {
	if p := os.Getenv("FCM_CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// Option changes how New starts the browser.
type Option func(*config)

type config struct {
	resolve  []string // host-resolver MAP rules before the catch-all
	anyCerts bool
}

// AcceptAnyCert makes the browser accept any TLS certificate (a test's own
// self-signed servers), as if the person had clicked through the warning.
func AcceptAnyCert() Option {
	return func(c *config) { c.anyCerts = true }
}

// Resolve makes the browser resolve host to ip, e.g. Resolve("fcm.example.test",
// "127.0.0.1"). Without it the browser resolves no name at all.
func Resolve(host, ip string) Option {
	return func(c *config) { c.resolve = append(c.resolve, "MAP "+host+" "+ip) }
}

// New starts a headless Chromium that resolves no name (but those given with
// Resolve) and so reaches only loopback. The test's cleanup closes it. New
// fails the test if Chromium is missing or does not start.
func New(t testing.TB, opts ...Option) *Browser {
	t.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	bin := Chromium()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("browsertest: no chromium at %s (apt-get install chromium, or set FCM_CHROMIUM): %v", bin, err)
	}
	rules := strings.Join(append(cfg.resolve, "MAP * ~NOTFOUND", "EXCLUDE 127.0.0.1"), ", ")
	flags := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(t.TempDir()), // removed after the browser stops: cleanups run last-in first-out
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("host-resolver-rules", rules),
	)
	if cfg.anyCerts {
		flags = append(flags, chromedp.Flag("ignore-certificate-errors", true))
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), flags...)
	tab, _ := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		if err := chromedp.Cancel(tab); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("browsertest: close chromium: %v", err)
		}
		cancelAlloc()
	})

	b := &Browser{tab: tab}
	if err := chromedp.Do(tab); err != nil { // starts the browser and the tab
		t.Fatalf("browsertest: start %s: %v", bin, err)
	}
	err := chromedp.Listen(tab, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok && e.Type == network.ResourceTypeDocument {
			b.record(e.Request.URL + e.Request.URLFragment)
		}
	})
	if err != nil {
		t.Fatalf("browsertest: listen to chromium: %v", err)
	}
	return b
}

// record keeps u if it is a navigation to an OIDC callback.
func (b *Browser) record(u string) {
	p, err := url.Parse(u)
	if err != nil || !strings.HasSuffix(p.Path, callbackPath) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastCallback = u
}

// LastCallbackURL is the full URL of the last navigation to a path ending in
// /oauth2/callback, code and state included, so a test can replay it.
func (b *Browser) LastCallbackURL() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lastCallback
}

// call derives a context for one method: it runs on the tab, ends when ctx
// ends, and lasts at most callTimeout. Ending it leaves the tab open.
func (b *Browser) call(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithTimeout(b.tab, callTimeout)
	stop := context.AfterFunc(ctx, cancel)
	return c, func() { stop(); cancel() }
}

// Login opens url (fcm's /login/<id>, which redirects to the provider's
// form), signs in as username, and returns the page the browser ends on,
// normally fcm's callback page with the code, or its error page. It returns
// an error if the login form does not appear, or if the provider refuses the
// password and the browser stays on its form (the page is returned too).
func (b *Browser) Login(ctx context.Context, url, username, password string) (Page, error) {
	c, cancel := b.call(ctx)
	defer cancel()
	resp, err := chromedp.Run(c, chromedp.NavigateResponse(url))
	if err != nil {
		return Page{}, fmt.Errorf("browsertest: open %s: %w", url, err)
	}
	page, err := read(c, resp)
	if err != nil {
		return Page{}, err
	}
	if !page.loginForm {
		return page, fmt.Errorf("browsertest: %s led to %s (%d), not to the provider's login form: %q", url, page.URL, page.Status, page.Text)
	}
	err = chromedp.Do(c,
		chromedp.SendKeys(chromedp.CSS("#username"), username),
		chromedp.SendKeys(chromedp.CSS("#password"), password),
	)
	if err != nil {
		return page, fmt.Errorf("browsertest: fill the login form at %s: %w", page.URL, err)
	}
	resp, err = chromedp.RunResponse(c, chromedp.Click(chromedp.CSS(`button[type="submit"]`)))
	if err != nil {
		return page, fmt.Errorf("browsertest: submit the login form at %s: %w", page.URL, err)
	}
	if page, err = read(c, resp); err != nil {
		return Page{}, err
	}
	if page.loginForm {
		return page, fmt.Errorf("browsertest: login as %q failed: still on the provider's login form at %s (%d): %q", username, page.URL, page.Status, page.loginError)
	}
	return page, nil
}

// Confirm clicks #confirm on the current page and returns the page that follows.
func (b *Browser) Confirm(ctx context.Context) (Page, error) {
	c, cancel := b.call(ctx)
	defer cancel()
	page, err := read(c, nil)
	if err != nil {
		return Page{}, err
	}
	found, err := chromedp.Run(c, chromedp.Evaluate[bool](`document.getElementById("confirm") !== null`))
	if err != nil {
		return Page{}, fmt.Errorf("browsertest: look for #confirm: %w", err)
	}
	if !found {
		return page, fmt.Errorf("browsertest: no #confirm button on %s: %q", page.URL, page.Text)
	}
	resp, err := chromedp.RunResponse(c, chromedp.Click(chromedp.CSS("#confirm")))
	if err != nil {
		return page, fmt.Errorf("browsertest: click #confirm on %s: %w", page.URL, err)
	}
	return read(c, resp)
}

// Open navigates to url, as typing it into the address bar does, and returns the page.
func (b *Browser) Open(ctx context.Context, url string) (Page, error) {
	c, cancel := b.call(ctx)
	defer cancel()
	resp, err := chromedp.Run(c, chromedp.NavigateResponse(url))
	if err != nil {
		return Page{}, fmt.Errorf("browsertest: open %s: %w", url, err)
	}
	return read(c, resp)
}

// readPage collects what a Page holds in one evaluation.
const readPage = `(() => {
	const text = id => { const e = document.getElementById(id); return e ? e.textContent.trim() : ""; };
	return {
		url: location.href,
		text: document.body ? document.body.innerText : "",
		code: text("login-code"),
		grant: text("grant-code"),
		host: text("login-host"),
		error: text("error"),
		done: text("done"),
		loginError: text("login-error"),
		loginForm: document.getElementById("username") !== null && document.getElementById("password") !== null,
	};
})()`

// pageState is what readPage returns.
type pageState struct {
	URL        string `json:"url"`
	Text       string `json:"text"`
	Code       string `json:"code"`
	Grant      string `json:"grant"`
	Host       string `json:"host"`
	Error      string `json:"error"`
	Done       string `json:"done"`
	LoginError string `json:"loginError"`
	LoginForm  bool   `json:"loginForm"`
}

// read returns the current page; resp is the main document's response, if known.
func read(ctx context.Context, resp *network.Response) (Page, error) {
	v, err := chromedp.Run(ctx, chromedp.Evaluate[pageState](readPage))
	if err != nil {
		return Page{}, fmt.Errorf("browsertest: read the page: %w", err)
	}
	p := Page{URL: v.URL, Text: v.Text, Code: v.Code, Grant: v.Grant, Host: v.Host, Error: v.Error, Done: v.Done, loginForm: v.LoginForm, loginError: v.LoginError}
	if resp != nil {
		p.Status = int(resp.Status)
	}
	return p, nil
}

// Tab returns a context for a test's own chromedp calls on the tab
// (chromedp.Run, chromedp.Do, screenshots, key presses, evaluating script):
// it ends when ctx does, or after the same time limit as the methods.
func (b *Browser) Tab(ctx context.Context) (context.Context, context.CancelFunc) {
	return b.call(ctx)
}

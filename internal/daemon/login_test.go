package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
	"github.com/fcmhost/fcm/internal/client"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// loginRig is the daemon's API (in process) with OIDC logins against a real
// OpenID provider (zitadel's op) on loopback, and a headless Chromium.
type loginRig struct {
	url      string
	store    *store.Store
	logins   *auth.Service
	provider *oidctest.Provider
	browser  *browsertest.Browser
	anon     *client.Client // no token
}

func newLoginRig(t *testing.T, allow ...string) *loginRig {
	t.Helper()
	return newLoginRigWith(t, oidctest.Options{}, allow...)
}

// newLoginRigWith is newLoginRig with the test provider's options (its
// client and redirect URI are the rig's).
func newLoginRigWith(t *testing.T, o oidctest.Options, allow ...string) *loginRig {
	t.Helper()
	ln, base := listenLoopback(t)
	o.ClientID, o.ClientSecret, o.RedirectURIs = "fcm-test", "fcm-test-secret", []string{base + auth.CallbackPath}
	op, err := oidctest.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(op.Close)
	rig := startLoginRig(t, ln, auth.Config{Issuer: op.Issuer(), ClientID: o.ClientID, ClientSecret: o.ClientSecret, PublicURL: base}, allow)
	rig.provider = op
	return rig
}

// listenLoopback listens on a random loopback port for a rig's daemon.
func listenLoopback(t *testing.T) (net.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln, "http://" + ln.Addr().String()
}

// startLoginRig serves the daemon's API on ln with logins configured by cfg.
func startLoginRig(t *testing.T, ln net.Listener, cfg auth.Config, allow []string, opts ...browsertest.Option) *loginRig {
	t.Helper()
	p := newPeople(t)
	logins, err := auth.New(cfg, p.store, slogTo(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.store.Update(func(tx *store.Tx) error { return tx.SetFlagRules(allow) }); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer((&Server{Store: p.store, VMs: &fakeVMs{}, Auth: logins, Log: slogTo(io.Discard)}).Handler())
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	base := "http://" + ln.Addr().String()
	return &loginRig{url: base, store: p.store, logins: logins, browser: browsertest.New(t, opts...), anon: &client.Client{Host: base}}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// apiCode is the code of an API error, "" for none.
func apiCode(err error) string {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// loopbackCLI listens on 127.0.0.1 as fcm login does and returns its port
// and the grants browsers bring to /done.
func loopbackCLI(t *testing.T) (int, <-chan string) {
	t.Helper()
	grants := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/done" {
			grants <- r.URL.Query().Get("grant")
		}
		io.WriteString(w, `<!doctype html><p id="done">back to the terminal</p>`)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port, grants
}

// TestLogin_LoopbackGrant: the whole login as a person does it. The confirm
// page names the machine and address the login came from; after the
// confirm the browser brings the grant to the CLI's loopback port, and only
// a poll with that grant gets the token (once): without it the poll stays
// pending, even after the confirm. Replaying the callback fails clearly.
func TestLogin_LoopbackGrant(t *testing.T) {
	rig := newLoginRig(t, "@example.com")
	ctx := ctxFor(t)
	port, grants := loopbackCLI(t)
	start, err := rig.anon.StartLogin(ctx, api.LoginStartRequest{Port: port, Hostname: "alice-laptop"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(start.URL, rig.url+"/login/") || start.Code != "" {
		t.Fatalf("login start: %+v", start)
	}
	page, err := rig.browser.Login(ctx, start.URL, oidctest.Alice.Username, oidctest.Alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	if page.Host != "alice-laptop" || !strings.Contains(page.Text, "alice@example.com") || !strings.Contains(page.Text, "127.0.0.1") ||
		!strings.Contains(page.Text, "If someone sent you this link") || strings.Contains(page.Text, "This browser is at") {
		t.Fatalf("confirm page (the browser where the login started: no address warning): host %q: %s", page.Host, page.Text)
	}
	if _, pending, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, ""); !pending || err != nil {
		t.Fatalf("poll before confirming: pending %v, %v", pending, err)
	}
	if _, _, err := rig.anon.PollLogin(ctx, start.ID, "not-the-poll-token", ""); apiCode(err) != api.CodeForbidden {
		t.Fatalf("poll with a wrong poll token: %v", err)
	}
	page, err = rig.browser.Confirm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(page.URL, fmt.Sprintf("http://127.0.0.1:%d/done?grant=", port)) || page.Done != "back to the terminal" {
		t.Fatalf("after confirming the browser is at %s: %q", page.URL, page.Text)
	}
	var grant string
	select {
	case grant = <-grants:
	case <-time.After(10 * time.Second):
		t.Fatal("no grant reached the CLI's loopback port")
	}
	for range 3 {
		if _, pending, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, ""); !pending || err != nil {
			t.Fatalf("poll without the grant after confirming: pending %v, %v", pending, err)
		}
	}
	res, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, grant)
	if err != nil || res == nil {
		t.Fatalf("poll with the grant: %v", err)
	}
	if res.User.Email != "alice@example.com" || res.User.Name != oidctest.Alice.Name || !store.ValidSecret(res.Token) {
		t.Fatalf("login result: %+v", res)
	}
	me, err := (&client.Client{Host: rig.url, Token: res.Token}).WhoAmI(ctx)
	if err != nil || me.Role != api.RoleUser || me.User == nil || me.User.Email != "alice@example.com" || me.User.Issuer != rig.provider.Issuer() {
		t.Fatalf("whoami with the new token: %+v, %v", me, err)
	}
	var minted *store.Token
	rig.store.View(func(tx *store.Tx) (err error) { minted, err = tx.TokenByID(me.TokenID); return })
	if minted == nil || minted.ExpiresAt.Before(time.Now().Add(auth.DefaultTokenTTL-time.Hour)) || minted.ExpiresAt.After(time.Now().Add(auth.DefaultTokenTTL)) {
		t.Fatalf("the CLI's token: %+v, want it to expire in %s", minted, auth.DefaultTokenTTL)
	}
	if _, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, grant); apiCode(err) != api.CodeExpired {
		t.Fatalf("a second poll: %v, want expired (the token is given once)", err)
	}
	page, err = rig.browser.Open(ctx, rig.browser.LastCallbackURL())
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != http.StatusBadRequest || !strings.Contains(page.Error, "already completed or has expired") {
		t.Fatalf("replayed callback: %d %q", page.Status, page.Error)
	}
}

// TestLogin_TypedCode: fcm login --no-browser: after the confirm the page
// shows a code (never before), which the person types into the CLI; a wrong
// one is refused, five end the login.
func TestLogin_TypedCode(t *testing.T) {
	rig := newLoginRig(t, "@example.com")
	ctx := ctxFor(t)
	start, err := rig.anon.StartLogin(ctx, api.LoginStartRequest{Hostname: "build-box"})
	if err != nil {
		t.Fatal(err)
	}
	page, err := rig.browser.Login(ctx, start.URL, oidctest.Bob.Username, oidctest.Bob.Password)
	if err != nil || page.Host != "build-box" || page.Grant != "" {
		t.Fatalf("confirm page: %+v %v", page, err)
	}
	if page, err = rig.browser.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	if len(page.Grant) != 9 || !strings.Contains(page.Text, "Never give this code to anyone") {
		t.Fatalf("after confirming: %+v", page)
	}
	if _, pending, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, ""); !pending || err != nil {
		t.Fatalf("poll without the code: pending %v, %v", pending, err)
	}
	if _, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, "BCDF-GHJK"); apiCode(err) != api.CodeForbidden {
		t.Fatalf("poll with a wrong code: %v", err)
	}
	res, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, " "+strings.ToLower(page.Grant)+"\n")
	if err != nil || res == nil || res.User.Email != "bob@example.com" {
		t.Fatalf("poll with the code as typed (lower case, spaces): %+v %v", res, err)
	}

	// Five wrong codes end a login.
	start, _ = rig.anon.StartLogin(ctx, api.LoginStartRequest{})
	if _, err := rig.browser.Login(ctx, start.URL, oidctest.Bob.Username, oidctest.Bob.Password); err != nil {
		t.Fatal(err)
	}
	if _, err := rig.browser.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		_, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, "BCDF-GHJK")
		if want := map[bool]string{true: api.CodeLoginFailed, false: api.CodeForbidden}[i == 4]; apiCode(err) != want {
			t.Fatalf("wrong code #%d: %v, want %s", i+1, err, want)
		}
	}
	if _, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, ""); apiCode(err) != api.CodeExpired {
		t.Fatalf("poll after five wrong codes: %v", err)
	}
}

// TestLogin_NotAllowed: an email the allow-list does not let in is told so in
// the browser and in the CLI, and nothing is made.
func TestLogin_NotAllowed(t *testing.T) {
	rig := newLoginRig(t, "@example.com")
	ctx := ctxFor(t)
	start, err := rig.anon.StartLogin(ctx, api.LoginStartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	page, err := rig.browser.Login(ctx, start.URL, oidctest.Carol.Username, oidctest.Carol.Password)
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != http.StatusForbidden || !strings.Contains(page.Error, "carol@other.org may not log in") || page.Code != "" {
		t.Fatalf("page for carol: %d %+v", page.Status, page)
	}
	_, _, err = rig.anon.PollLogin(ctx, start.ID, start.PollToken, "")
	if apiCode(err) != api.CodeNotAllowed || !strings.Contains(err.Error(), "fcm users allow carol@other.org") {
		t.Fatalf("CLI poll for carol: %v", err)
	}
	rig.store.View(func(tx *store.Tx) error {
		users, _ := tx.Users()
		for _, u := range users {
			if u.Email == "carol@other.org" {
				t.Errorf("carol was made a user: %+v", u)
			}
		}
		toks, _ := tx.Tokens()
		if len(toks) != 3 {
			t.Errorf("%d tokens after a refused login, want the 3 there were", len(toks))
		}
		return nil
	})
}

// TestLogin_TamperedAndReplayed: a wrong state, a code used again, and ID
// tokens for another audience or from another issuer each fail with a clear
// message, in the browser and for the CLI.
func TestLogin_TamperedAndReplayed(t *testing.T) {
	rig := newLoginRig(t, "@example.com")
	ctx := ctxFor(t)

	page, err := rig.browser.Open(ctx, rig.url+"/oauth2/callback?state=forged&code=abc")
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != http.StatusBadRequest || !strings.Contains(page.Error, "state is unknown") {
		t.Fatalf("a forged state: %d %q", page.Status, page.Error)
	}

	for _, tc := range []struct {
		name   string
		tamper oidctest.Tamper
		want   string
	}{
		{"audience", oidctest.Tamper{Audience: "someone-else"}, "audience"},
		{"issuer", oidctest.Tamper{Issuer: "http://127.0.0.1:1"}, "issue"},
	} {
		start, err := rig.anon.StartLogin(ctx, api.LoginStartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		rig.provider.Tamper(tc.tamper)
		page, err := rig.browser.Login(ctx, start.URL, oidctest.Bob.Username, oidctest.Bob.Password)
		if err != nil {
			t.Fatal(err)
		}
		if page.Status != http.StatusBadRequest || !strings.Contains(page.Error, "ID token was refused") || !strings.Contains(page.Error, tc.want) || page.Code != "" {
			t.Errorf("%s: page %d %q", tc.name, page.Status, page.Error)
		}
		_, _, err = rig.anon.PollLogin(ctx, start.ID, start.PollToken, "")
		if apiCode(err) != api.CodeLoginFailed || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: CLI poll: %v", tc.name, err)
		}
	}

	// A code the provider already gave out, brought back through a new
	// login's own state: the provider refuses it and fcm says so.
	used, err := url.Parse(rig.browser.LastCallbackURL())
	if err != nil || used.Query().Get("code") == "" {
		t.Fatalf("no callback recorded: %q", rig.browser.LastCallbackURL())
	}
	start, err := rig.anon.StartLogin(ctx, api.LoginStartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	jar, state := rig.begin(t, start.ID)
	resp, err := jar.Get(rig.url + auth.CallbackPath + "?" + url.Values{"state": {state}, "code": {used.Query().Get("code")}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "refused the sign-in code") {
		t.Fatalf("a reused code: %d %s", resp.StatusCode, body)
	}
	if _, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, ""); apiCode(err) != api.CodeLoginFailed {
		t.Fatalf("CLI poll after a reused code: %v", err)
	}
}

// begin opens a login's URL as a browser would (keeping its cookie) and
// returns that client and the OAuth state the daemon sent to the provider.
func (rig *loginRig) begin(t *testing.T, id string) (*http.Client, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(rig.url + "/login/" + id)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Query().Get("state") == "" {
		t.Fatalf("/login/%s: %d to %q", id, resp.StatusCode, resp.Header.Get("Location"))
	}
	return c, loc.Query().Get("state")
}

// TestLogin_NotConfigured: without an OIDC client the daemon says how to set
// one up, and the login pages answer the same.
func TestLogin_NotConfigured(t *testing.T) {
	f := newFixture(t)
	anon := &client.Client{Host: f.srv.URL}
	_, err := anon.StartLogin(context.Background(), api.LoginStartRequest{})
	if apiCode(err) != api.CodeLoginDisabled || !strings.Contains(err.Error(), "--oidc-client-id and --oidc-client-secret") {
		t.Fatalf("login without OIDC: %v", err)
	}
	resp, err := http.Get(f.srv.URL + "/login/abc")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotImplemented {
		t.Errorf("/login/abc without OIDC: %d", resp.StatusCode)
	}
}

// TestLogin_WebSession: "Sign in" from the status page gives the browser a
// session cookie (no code to confirm: the browser began it), which the API
// takes like a token; logout revokes it.
func TestLogin_WebSession(t *testing.T) {
	rig := newLoginRig(t, "@example.com")
	ctx := ctxFor(t)
	page, err := rig.browser.Login(ctx, rig.url+"/login", oidctest.Alice.Username, oidctest.Alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	if page.URL != rig.url+"/" {
		t.Fatalf("after signing in the browser is at %s (%d), want the status page", page.URL, page.Status)
	}
	page, err = rig.browser.Open(ctx, rig.url+"/v1/whoami")
	if err != nil || page.Status != http.StatusOK || !strings.Contains(page.Text, `"email":"alice@example.com"`) {
		t.Fatalf("whoami with the session cookie: %d %q %v", page.Status, page.Text, err)
	}
	var session *store.Token
	rig.store.View(func(tx *store.Tx) error {
		toks, _ := tx.Tokens()
		for _, tok := range toks {
			if tok.Name == auth.WebSessionName {
				session = tok
			}
		}
		return nil
	})
	if session == nil || session.ExpiresAt.Before(time.Now().Add(6*24*time.Hour)) {
		t.Fatalf("web session token: %+v", session)
	}
}

// TestSession_CrossOriginRefused: with only a browser's cookie, another site
// may not make the API change anything; reading and the same origin work.
func TestSession_CrossOriginRefused(t *testing.T) {
	f := newFixture(t)
	f.fake.create = func(ctx context.Context, owner string, req api.CreateVMRequest, _ vm.Progress) (*store.VM, error) {
		return &store.VM{ID: "cccc3333", Name: "web-vm", Owner: owner, State: "running"}, nil
	}
	do := func(method, path string, header map[string]string) int {
		req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader("{}"))
		req.AddCookie(&http.Cookie{Name: auth.SessionCookie, Value: f.admin})
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, h := range []map[string]string{{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil.example"}} {
		if got := do("POST", "/v1/vms", h); got != http.StatusForbidden {
			t.Errorf("POST /v1/vms with the cookie and %v: %d, want 403", h, got)
		}
		if got := do("DELETE", "/v1/vms/admin-vm", h); got != http.StatusForbidden {
			t.Errorf("DELETE with the cookie and %v: %d, want 403", h, got)
		}
		if got := do("GET", "/v1/vms", h); got != http.StatusOK {
			t.Errorf("GET /v1/vms with the cookie and %v: %d, want 200", h, got)
		}
	}
	if got := do("POST", "/v1/vms", map[string]string{"Sec-Fetch-Site": "same-origin"}); got != http.StatusCreated {
		t.Errorf("POST /v1/vms from the same origin: %d, want 201", got)
	}
}

// TestSession_SecureCookieOverHTTPS: reached over HTTPS (Caddy says so from
// loopback), a pasted token becomes a __Host- cookie, Secure, Path=/, which
// then signs the browser in.
func TestSession_SecureCookieOverHTTPS(t *testing.T) {
	f := newFixture(t)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("POST", f.srv.URL+"/session", strings.NewReader(url.Values{"token": {f.admin}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-Proto", "https")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cookies) != 1 || cookies[0].Name != auth.SecureSessionCookie ||
		!cookies[0].Secure || !cookies[0].HttpOnly || cookies[0].Path != "/" || cookies[0].SameSite != http.SameSiteLaxMode {
		t.Fatalf("POST /session over https: %d %+v", resp.StatusCode, cookies)
	}
	req, _ = http.NewRequest("GET", f.srv.URL+"/v1/whoami", nil)
	req.AddCookie(cookies[0])
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("whoami with the __Host- cookie: %d", resp.StatusCode)
	}
}

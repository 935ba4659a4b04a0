package daemon

import (
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
	"github.com/fcmhost/fcm/internal/store"
)

// TestCookies_AppCannotPlantControlPlaneCookies: a VM's app at
// https://app.example.test sets cookies for the parent domain (a valid
// session token of alice's, and a login state an attacker began); the
// control plane at https://fcm.example.test, in the same Chromium, ignores
// them: the session is signed out, and the callback with the planted state
// is refused before any code is exchanged.
func TestCookies_AppCannotPlantControlPlaneCookies(t *testing.T) {
	p := newPeople(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	public := "https://fcm.example.test:" + portOf(ln.Addr())
	op, err := oidctest.Start(oidctest.Options{ClientID: "fcm-test", ClientSecret: "s", RedirectURIs: []string{public + auth.CallbackPath}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(op.Close)
	logins, err := auth.New(auth.Config{Issuer: op.Issuer(), ClientID: "fcm-test", ClientSecret: "s", PublicURL: public}, p.store, slogTo(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	daemon := httptest.NewUnstartedServer((&Server{Store: p.store, VMs: &fakeVMs{}, Auth: logins, Log: slogTo(io.Discard)}).Handler())
	daemon.Listener.Close()
	daemon.Listener = ln
	daemon.StartTLS()
	t.Cleanup(daemon.Close)

	// The attacker begins a web sign-in of their own: its state goes into
	// the cookie their app plants.
	jar, _ := cookiejar.New(nil)
	attacker := &http.Client{Jar: jar, Transport: daemon.Client().Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := attacker.Get(daemon.URL + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	state := loc.Query().Get("state")
	if state == "" {
		t.Fatalf("GET /login: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}

	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, c := range []string{
			"fcm_session=" + p.alice + "; Domain=example.test; Path=/; Secure; HttpOnly",
			"fcm_login_state=" + state + "; Domain=example.test; Path=/oauth2/callback; Secure; HttpOnly",
			"fcm_login_confirm=planted; Domain=example.test; Path=/; Secure",
		} {
			w.Header().Add("Set-Cookie", c)
		}
		io.WriteString(w, "<!doctype html><title>app</title><p id=done>planted</p>")
	}))
	app.StartTLS()
	t.Cleanup(app.Close)

	b := browsertest.New(t, browsertest.Resolve("fcm.example.test", "127.0.0.1"), browsertest.Resolve("app.example.test", "127.0.0.1"), browsertest.AcceptAnyCert())
	ctx := ctxFor(t)
	page, err := b.Open(ctx, "https://app.example.test:"+portOf(app.Listener.Addr())+"/")
	if err != nil || page.Done != "planted" {
		t.Fatalf("the app's page: %+v %v", page, err)
	}
	// The browser holds the planted cookies and sends them to fcm.example.test.
	if page, err = b.Open(ctx, public+"/v1/whoami"); err != nil {
		t.Fatal(err)
	}
	if page.Status != http.StatusUnauthorized {
		t.Fatalf("whoami with the app's planted fcm_session: %d %q, want 401 (signed out)", page.Status, page.Text)
	}
	if page, err = b.Open(ctx, public+"/"); err != nil || strings.Contains(page.Text, "alice@example.com") {
		t.Fatalf("the status page with the planted session shows alice: %q %v", page.Text, err)
	}
	page, err = b.Open(ctx, public+auth.CallbackPath+"?"+url.Values{"state": {state}, "code": {"attackers-code"}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != http.StatusBadRequest || !strings.Contains(page.Error, "started in another browser") {
		t.Fatalf("callback with the app's planted state: %d %q", page.Status, page.Error)
	}
	var sessions int
	p.store.View(func(tx *store.Tx) error {
		toks, _ := tx.Tokens()
		for _, tok := range toks {
			if tok.Name == auth.WebSessionName {
				sessions++
			}
		}
		return nil
	})
	if sessions != 0 {
		t.Fatalf("%d web sessions made", sessions)
	}

	// The control plane's own session works in that browser: sign in for real.
	page, err = b.Login(ctx, public+"/login", oidctest.Alice.Username, oidctest.Alice.Password)
	if err != nil || page.URL != public+"/" {
		t.Fatalf("a real sign-in next to the planted cookies: %+v %v", page, err)
	}
	if page, err = b.Open(ctx, public+"/v1/whoami"); err != nil || page.Status != http.StatusOK || !strings.Contains(page.Text, "alice@example.com") {
		t.Fatalf("whoami after signing in: %d %q %v", page.Status, page.Text, err)
	}
}

// portOf is the port of a TCP address.
func portOf(a net.Addr) string {
	_, port, _ := net.SplitHostPort(a.String())
	return port
}

package browsertest_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
)

func TestBrowser_Login(t *testing.T) {
	rp := newStandIn(t)
	b := browsertest.New(t)
	for _, u := range []oidctest.User{oidctest.Alice, oidctest.Carol} {
		loginURL, code := rp.newLogin()
		page, err := b.Login(t.Context(), loginURL, u.Username, u.Password)
		if err != nil {
			t.Fatalf("login as %s: %v", u.Username, err)
		}
		if page.Code != code || page.Status != 200 || !strings.Contains(page.Text, code) {
			t.Fatalf("login as %s: page %s (%d) shows code %q, want %q: %q", u.Username, page.URL, page.Status, page.Code, code, page.Text)
		}
		if p, _ := url.Parse(page.URL); p.Path != "/oauth2/callback" || !strings.HasPrefix(page.URL, rp.base) {
			t.Errorf("login as %s ended at %s, want the stand-in's callback", u.Username, page.URL)
		}
		if page.Error != "" || page.Done != "" {
			t.Errorf("code page has error %q, done %q", page.Error, page.Done)
		}

		done, err := b.Confirm(t.Context())
		if err != nil {
			t.Fatalf("confirm: %v", err)
		}
		if want := "Logged in as " + u.Email; !strings.HasPrefix(done.Done, want) || done.Status != 200 {
			t.Errorf("after confirm: done %q (%d), want %q", done.Done, done.Status, want)
		}
		if done.Code != "" {
			t.Errorf("after confirm the page still shows a code: %q", done.Code)
		}
	}
}

func TestBrowser_WrongPassword(t *testing.T) {
	rp := newStandIn(t)
	b := browsertest.New(t)
	loginURL, _ := rp.newLogin()
	page, err := b.Login(t.Context(), loginURL, "alice", "bob-pw")
	if err == nil {
		t.Fatalf("login with a wrong password succeeded: %+v", page)
	}
	for _, want := range []string{`login as "alice" failed`, "still on the provider's login form", "wrong username or password"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !strings.HasPrefix(page.URL, rp.provider.Issuer()) || page.Status != 401 || page.Code != "" {
		t.Errorf("page after a wrong password: %s (%d) code %q, want the provider's form", page.URL, page.Status, page.Code)
	}
	if got := b.LastCallbackURL(); got != "" {
		t.Errorf("a callback was reached: %s", got)
	}

	// A later correct login in the same browser works.
	loginURL, code := rp.newLogin()
	if page, err = b.Login(t.Context(), loginURL, "alice", "alice-pw"); err != nil || page.Code != code {
		t.Fatalf("login after a wrong password: code %q, err %v", page.Code, err)
	}
}

func TestBrowser_ReplayCallback(t *testing.T) {
	rp := newStandIn(t)
	b := browsertest.New(t)
	loginURL, _ := rp.newLogin()
	if _, err := b.Login(t.Context(), loginURL, "bob", "bob-pw"); err != nil {
		t.Fatal(err)
	}
	callback := b.LastCallbackURL()
	u, err := url.Parse(callback)
	if err != nil || u.Path != "/oauth2/callback" || u.Query().Get("code") == "" || u.Query().Get("state") == "" {
		t.Fatalf("LastCallbackURL = %q, want the callback with code and state", callback)
	}
	if _, err := b.Confirm(t.Context()); err != nil {
		t.Fatal(err)
	}

	page, err := b.Open(t.Context(), callback)
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != 400 || !strings.Contains(page.Error, "invalid_grant") || page.Code != "" {
		t.Errorf("replayed callback: %d, error %q, code %q; want 400 and the provider's invalid_grant", page.Status, page.Error, page.Code)
	}
}

func TestBrowser_ConfirmWithoutButton(t *testing.T) {
	rp := newStandIn(t)
	b := browsertest.New(t)
	page, err := b.Open(t.Context(), rp.base+"/login/nope")
	if err != nil {
		t.Fatal(err)
	}
	if page.Status != 404 || page.Error != "unknown login" {
		t.Fatalf("unknown login: %d %q", page.Status, page.Error)
	}
	if _, err := b.Confirm(t.Context()); err == nil || !strings.Contains(err.Error(), "no #confirm") {
		t.Errorf("confirm on a page without a button: %v", err)
	}
}

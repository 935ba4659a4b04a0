package daemon

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/store"
)

// pasteToken posts secret to /session as the status page's form does and
// returns the session cookie set.
func pasteToken(t *testing.T, base, secret string) *http.Cookie {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("POST", base+"/session", strings.NewReader(url.Values{"token": {secret}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || resp.Header.Get("Location") != "/" {
		t.Fatalf("POST /session: %d %v to %q", resp.StatusCode, resp.Cookies(), resp.Header.Get("Location"))
	}
	return resp.Cookies()[0]
}

// withCookie does method path with only the cookie and returns the status.
func withCookie(t *testing.T, method, url string, c *http.Cookie) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	req.AddCookie(c)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestPasteToken_DerivedSession: a pasted token is never kept in the
// cookie: the browser gets a web session of its own, derived from it,
// expiring within auth.SessionTTL, which sign-out revokes (the pasted token
// lives on) and which ends when the pasted token is revoked.
func TestPasteToken_DerivedSession(t *testing.T) {
	f := newFixture(t)
	cookie := pasteToken(t, f.srv.URL, f.admin)
	if cookie.Value == f.admin || !store.ValidSecret(cookie.Value) || cookie.MaxAge <= 0 || cookie.MaxAge > int(auth.SessionTTL.Seconds()) {
		t.Fatalf("session cookie after pasting the admin token: %+v", cookie)
	}
	if got := withCookie(t, "GET", f.srv.URL+"/v1/whoami", cookie); got != http.StatusOK {
		t.Fatalf("whoami with the derived session: %d", got)
	}
	var session *store.Token
	f.store.View(func(tx *store.Tx) (err error) { session, _, err = tx.Authenticate(cookie.Value); return })
	if session == nil || session.Parent != "admin" || !session.Admin || session.Owner() != "admin" || session.Name != auth.WebSessionName ||
		session.ExpiresAt.After(time.Now().Add(auth.SessionTTL)) || session.ExpiresAt.Before(time.Now().Add(auth.SessionTTL-time.Minute)) {
		t.Fatalf("derived session: %+v", session)
	}
	if got := withCookie(t, "POST", f.srv.URL+"/logout", cookie); got != http.StatusSeeOther {
		t.Fatalf("logout: %d", got)
	}
	if got := withCookie(t, "GET", f.srv.URL+"/v1/whoami", cookie); got != http.StatusUnauthorized {
		t.Fatalf("whoami after logout: %d, want 401 (the derived token revoked)", got)
	}
	if _, err := f.client.WhoAmI(context.Background()); err != nil {
		t.Fatalf("the pasted admin token after signing out: %v", err)
	}

	// A user's pasted token: revoking it ends the session made from it.
	cookie = pasteToken(t, f.srv.URL, f.user)
	if got := withCookie(t, "GET", f.srv.URL+"/v1/whoami", cookie); got != http.StatusOK {
		t.Fatalf("whoami with a user's derived session: %d", got)
	}
	f.store.Update(func(tx *store.Tx) error {
		parent, _, err := tx.Authenticate(f.user)
		if err != nil {
			return err
		}
		_, err = tx.DeleteTokens(func(tok *store.Token) bool { return tok.ID == parent.ID })
		return err
	})
	if got := withCookie(t, "GET", f.srv.URL+"/v1/whoami", cookie); got != http.StatusUnauthorized {
		t.Fatalf("whoami after the pasted token was revoked: %d, want 401", got)
	}
	var n int
	f.store.Update(func(tx *store.Tx) (err error) { n, err = tx.PurgeExpiredTokens(time.Now()); return })
	if n != 1 {
		t.Fatalf("purged %d tokens, want the orphaned session", n)
	}
}

// TestPurge_ExpiredToken: the purge the daemon runs at start (and hourly)
// removes an expired token.
func TestPurge_ExpiredToken(t *testing.T) {
	f := newFixture(t)
	f.store.Update(func(tx *store.Tx) error {
		return tx.PutToken(store.NewSecret(), &store.Token{ID: "t_expired", Name: "fcm login", ExpiresAt: time.Now().Add(-time.Second)})
	})
	purge(f.store, nil, slogTo(io.Discard))
	f.store.View(func(tx *store.Tx) error {
		if _, err := tx.TokenByID("t_expired"); err == nil {
			t.Error("an expired token was not purged at start")
		}
		return nil
	})
}

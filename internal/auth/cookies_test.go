package auth

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// beginWeb runs GET /login and returns its cookies and the OAuth state.
func beginWeb(t *testing.T, s *Service) ([]*http.Cookie, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.BeginWeb(rec, httptest.NewRequest("GET", "/login", nil), "192.0.2.1")
	loc, err := url.Parse(rec.Header().Get("Location"))
	if rec.Code != http.StatusFound || err != nil || loc.Query().Get("state") == "" {
		t.Fatalf("GET /login: %d to %q", rec.Code, rec.Header().Get("Location"))
	}
	return rec.Result().Cookies(), loc.Query().Get("state")
}

// callback runs GET /oauth2/callback with state and the raw Cookie header.
func callback(s *Service, state, cookie string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("GET", CallbackPath+"?"+url.Values{"state": {state}, "code": {"c"}}.Encode(), nil)
	req.Header.Set("Cookie", cookie)
	rec := httptest.NewRecorder()
	s.Callback(rec, req, "192.0.2.1")
	return rec
}

// TestCookies_HostPrefixedOverHTTPS: with an https public URL the state
// cookie is __Host- (Secure, Path=/, no Domain); a callback that carries only
// the unprefixed name (which a VM's app at <vm>.<domain> can set for the
// parent domain) or two state cookies is refused.
func TestCookies_HostPrefixedOverHTTPS(t *testing.T) {
	s, _ := newTestService(t, "https://fcm.example.test")
	cookies, state := beginWeb(t, s)
	if len(cookies) != 1 || cookies[0].Name != "__Host-fcm_login_state" || !cookies[0].Secure || cookies[0].Path != "/" ||
		cookies[0].Domain != "" || !cookies[0].HttpOnly || cookies[0].Value != state {
		t.Fatalf("state cookie over https: %+v", cookies)
	}
	if rec := callback(s, state, "fcm_login_state="+state); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "started in another browser") {
		t.Fatalf("callback with only the unprefixed (planted) state cookie: %d %s", rec.Code, rec.Body)
	}

	_, state = beginWeb(t, s)
	if rec := callback(s, state, "__Host-fcm_login_state=tossed; __Host-fcm_login_state="+state); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "started in another browser") {
		t.Fatalf("callback with two state cookies: %d %s", rec.Code, rec.Body)
	}
}

// TestCookies_TwoStateCookiesRefusedOverHTTP: over plain HTTP too, a tossed
// state cookie sent before the real one makes the callback fail.
func TestCookies_TwoStateCookiesRefusedOverHTTP(t *testing.T) {
	s, _ := newTestService(t, "http://127.0.0.1:1")
	cookies, state := beginWeb(t, s)
	if len(cookies) != 1 || cookies[0].Name != "fcm_login_state" {
		t.Fatalf("state cookie over http: %+v", cookies)
	}
	if rec := callback(s, state, "fcm_login_state=tossed; fcm_login_state="+state); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "started in another browser") {
		t.Fatalf("callback with two state cookies, the first tossed: %d %s", rec.Code, rec.Body)
	}
}

// TestSessionSecret_UnprefixedIgnoredOverHTTPS: a request that came over
// HTTPS reads only __Host-fcm_session; plain HTTP on loopback reads either.
func TestSessionSecret_UnprefixedIgnoredOverHTTPS(t *testing.T) {
	for _, tc := range []struct {
		name, proto, remote, cookie, want string
	}{
		{"https, planted", "https", "127.0.0.1:1", "fcm_session=planted", ""},
		{"https, host cookie", "https", "127.0.0.1:1", "fcm_session=planted; __Host-fcm_session=mine", "mine"},
		{"http", "", "127.0.0.1:1", "fcm_session=mine", "mine"},
		{"proto claimed by a remote peer", "https", "192.0.2.1:1", "fcm_session=mine", "mine"},
	} {
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = tc.remote
		req.Header.Set("Cookie", tc.cookie)
		if tc.proto != "" {
			req.Header.Set("X-Forwarded-Proto", tc.proto)
		}
		if got := SessionSecret(req); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestSetSessionCookie_ClearClearsBoth: signing out clears the session under
// both names.
func TestSetSessionCookie_ClearClearsBoth(t *testing.T) {
	rec := httptest.NewRecorder()
	SetSessionCookie(rec, "", 0, true)
	var names []string
	for _, c := range rec.Result().Cookies() {
		if c.MaxAge >= 0 {
			t.Errorf("cookie %s not cleared: %+v", c.Name, c)
		}
		names = append(names, c.Name)
	}
	if strings.Join(names, ",") != "fcm_session,__Host-fcm_session" {
		t.Fatalf("cleared: %v", names)
	}
}

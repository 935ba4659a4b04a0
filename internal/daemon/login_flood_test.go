package daemon

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
)

// TestLogin_FloodFromOneAddress: 5,000 GET /login and 5,000 POST /v1/logins
// from one address (Caddy's X-Forwarded-For, trusted from loopback) are
// mostly refused with 429 and hold a bounded number of logins; then a person
// at another address logs in as usual.
func TestLogin_FloodFromOneAddress(t *testing.T) {
	rig := newLoginRig(t, "@example.com")
	ctx := ctxFor(t)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	counts := map[string]map[int]int{"GET /login": {}, "POST /v1/logins": {}}
	for range 5000 {
		for what := range counts {
			method, path, _ := strings.Cut(what, " ")
			req, _ := http.NewRequest(method, rig.url+path, nil)
			req.Header.Set("X-Forwarded-For", "192.0.2.66")
			resp, err := noRedirect.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			counts[what][resp.StatusCode]++
		}
	}
	if c := counts["GET /login"]; c[http.StatusTooManyRequests] < 4900 || c[http.StatusFound]+c[http.StatusTooManyRequests] != 5000 {
		t.Errorf("GET /login from one address: %v, want mostly 429", c)
	}
	if c := counts["POST /v1/logins"]; c[http.StatusTooManyRequests] < 4900 || c[http.StatusCreated]+c[http.StatusTooManyRequests] != 5000 {
		t.Errorf("POST /v1/logins from one address: %v, want mostly 429", c)
	}
	req, _ := http.NewRequest("POST", rig.url+"/v1/logins", nil)
	req.Header.Set("X-Forwarded-For", "192.0.2.66")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var e api.Error
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || e.Code != api.CodeRateLimited || !strings.Contains(e.Message, "too many login requests") {
		t.Errorf("POST /v1/logins over the limit: %d %+v", resp.StatusCode, e)
	}
	if n := rig.logins.Pending(); n > 10 {
		t.Errorf("%d logins pending from one address", n)
	}

	// A spoofed X-Forwarded-For from a non-loopback peer would not count:
	// clientAddr trusts it from loopback only.
	req = httptest.NewRequest("POST", "/v1/logins", nil)
	req.RemoteAddr = "203.0.113.9:5555"
	req.Header.Set("X-Forwarded-For", "192.0.2.66")
	if got := clientAddr(req); got != "203.0.113.9" {
		t.Errorf("client address of a remote peer claiming X-Forwarded-For: %q", got)
	}

	port, grants := loopbackCLI(t)
	start, err := rig.anon.StartLogin(ctx, api.LoginStartRequest{Port: port})
	if err != nil {
		t.Fatalf("a login from another address after the flood: %v", err)
	}
	page, err := rig.browser.Login(ctx, start.URL, oidctest.Alice.Username, oidctest.Alice.Password)
	if err != nil || !strings.Contains(page.Text, "alice@example.com") {
		t.Fatalf("signing in after the flood: %+v %v", page, err)
	}
	if _, err := rig.browser.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	if res, _, err := rig.anon.PollLogin(ctx, start.ID, start.PollToken, <-grants); err != nil || res == nil {
		t.Fatalf("poll after the flood: %v", err)
	}
}

package daemon

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHeaders_APIResponsesAreInert: every API answer (JSON, errors, and the
// guest's own text such as logs) says nosniff and a CSP under which it can
// run nothing; the HTML pages keep their own CSP, and the console page may
// not be framed.
func TestHeaders_APIResponsesAreInert(t *testing.T) {
	p := newPeople(t)
	h := routeServer(t, p)
	do := func(path, bearer, cookie string) *httptest.ResponseRecorder {
		t.Helper()
		if cookie != "" {
			return get(t, h, path, cookie)
		}
		req := httptest.NewRequest("GET", path, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	for _, tc := range []struct {
		name, path, bearer, contentType string
	}{
		{"json", "/v1/vms", p.alice, "application/json"},
		{"error", "/v1/vms", "", "application/json"},
		{"no route", "/v1/nothing-here", p.alice, "application/json"},
	} {
		w := do(tc.path, tc.bearer, "")
		if !strings.HasPrefix(w.Header().Get("Content-Type"), tc.contentType) {
			t.Errorf("%s: content type %q, want %s (%d %s)", tc.name, w.Header().Get("Content-Type"), tc.contentType, w.Code, w.Body)
		}
		if got := w.Header().Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options %q", tc.name, got)
		}
		if got := w.Header().Get("Content-Security-Policy"); got != "default-src 'none'; sandbox" {
			t.Errorf("%s: Content-Security-Policy %q", tc.name, got)
		}
	}
	// Guest text (logs, a release's output) is written by handlers as
	// text/plain: the middleware every route goes through gives it the same.
	guest := (&Server{Log: slogTo(io.Discard)}).logged(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("alert(document.cookie)"))
	}))
	w := httptest.NewRecorder()
	guest.ServeHTTP(w, httptest.NewRequest("GET", "/v1/vms/alice-vm/logs", nil))
	if w.Header().Get("X-Content-Type-Options") != "nosniff" || w.Header().Get("Content-Security-Policy") != "default-src 'none'; sandbox" {
		t.Errorf("guest text: headers %v", w.Header())
	}
	for _, path := range []string{"/", "/vms/alice-vm/console"} {
		w := do(path, "", p.alice)
		csp := w.Header().Get("Content-Security-Policy")
		if w.Code != http.StatusOK || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "sandbox") {
			t.Errorf("%s: %d, CSP %q: want the page's own", path, w.Code, csp)
		}
		if w.Header().Get("X-Frame-Options") != "DENY" || w.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: X-Frame-Options %q, X-Content-Type-Options %q", path, w.Header().Get("X-Frame-Options"), w.Header().Get("X-Content-Type-Options"))
		}
	}
}

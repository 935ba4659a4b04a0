package daemon

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/console"
)

// get requests path from the handler with the browser's session cookie.
func get(t *testing.T, h http.Handler, path, cookie string, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: auth.SessionCookie, Value: cookie})
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// TestConsolePage: the console page of alice's VM is alice's (and the
// admin's): a page on session web-<vm>, or the one asked for; to bob and the
// signed-out it is not there.
func TestConsolePage(t *testing.T) {
	p := newPeople(t)
	h := routeServer(t, p)

	w := get(t, h, "/vms/alice-vm/console", p.alice)
	body := w.Body.String()
	if w.Code != http.StatusOK || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("alice's console page: %d %s: %s", w.Code, w.Header().Get("Content-Type"), body)
	}
	for _, want := range []string{`data-vm="alice-vm"`, `data-session="web-alice-vm"`, "<title>web-alice-vm · alice-vm"} {
		if !strings.Contains(body, want) {
			t.Errorf("alice's console page lacks %q:\n%s", want, body)
		}
	}
	csp := w.Header().Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-eval") || strings.Contains(csp, "script-src 'self' 'unsafe-inline'") {
		t.Errorf("CSP %q: want only the page's own scripts", csp)
	}
	if strings.Contains(body, "<script>") {
		t.Errorf("inline script on the console page:\n%s", body)
	}
	for _, src := range []string{"/static/console/xterm.js", "/static/console/addon-fit.js", "/static/console/console.js"} {
		if !strings.Contains(body, `<script src="`+src+`">`) {
			t.Errorf("the page does not load %s:\n%s", src, body)
		}
	}

	if w := get(t, h, "/vms/alice-vm/console?session=brook", p.admin); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `data-session="brook"`) {
		t.Errorf("the admin on session brook: %d %s", w.Code, w.Body.String())
	}
	if w := get(t, h, "/vms/alice-vm/console?session=Bad%22id", p.alice); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "invalid session id") {
		t.Errorf("a bad session id: %d %s", w.Code, w.Body.String())
	}
	if w := get(t, h, "/vms/alice-vm/console", p.bob); w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), `no vm named \"alice-vm\"`) || strings.Contains(w.Body.String(), "web-alice-vm") {
		t.Errorf("bob on alice's console page: %d %s, want 404 as for a missing VM", w.Code, w.Body.String())
	}
	if w := get(t, h, "/vms/alice-vm/console", ""); w.Code != http.StatusUnauthorized {
		t.Errorf("signed out: %d %s, want 401", w.Code, w.Body.String())
	}
}

// TestConsoleAssets: the page's files are served to anyone, with their type,
// revalidated by ETag; nothing else of the embedded tree is.
func TestConsoleAssets(t *testing.T) {
	h := routeServer(t, newPeople(t))
	w := get(t, h, "/static/console/console.js", "")
	if w.Code != http.StatusOK || !strings.Contains(w.Header().Get("Content-Type"), "javascript") || !strings.Contains(w.Body.String(), "window.fcmTerm") {
		t.Fatalf("console.js: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	tag := w.Header().Get("ETag")
	if w := get(t, h, "/static/console/console.js", "", "If-None-Match", tag); tag == "" || w.Code != http.StatusNotModified {
		t.Errorf("console.js again with its ETag %q: %d, want 304", tag, w.Code)
	}
	for file, typ := range map[string]string{"xterm.js": "javascript", "addon-fit.js": "javascript", "xterm.css": "text/css"} {
		if w := get(t, h, "/static/console/"+file, ""); w.Code != http.StatusOK || !strings.Contains(w.Header().Get("Content-Type"), typ) || w.Body.Len() < 1000 {
			t.Errorf("%s: %d %s, %d bytes", file, w.Code, w.Header().Get("Content-Type"), w.Body.Len())
		}
	}
	for _, path := range []string{"/static/console/README", "/static/console/xterm/README", "/static/console/xterm/xterm.js", "/static/console/templates/console.html", "/static/console/nope.js"} {
		if w := get(t, h, path, ""); w.Code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, w.Code)
		}
	}
}

func TestWebSessionID(t *testing.T) {
	long := strings.Repeat("a", 57) + "-b-cdef"
	for vm, want := range map[string]string{"alice-vm": "web-alice-vm", "x": "web-x", long: "web-" + strings.Repeat("a", 57) + "-b", strings.Repeat("a", 58) + "-bc": "web-" + strings.Repeat("a", 58)} {
		got := webSessionID(vm)
		if got != want || console.Validate(got) != nil {
			t.Errorf("webSessionID(%q) = %q (valid: %v), want %q", vm, got, console.Validate(got), want)
		}
	}
}

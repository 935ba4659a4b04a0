package browsertest_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/auth/browsertest"
)

func TestBrowser_ResolvesOnlyLoopback(t *testing.T) {
	rp := newStandInAt(t, "fcm.example.test")
	loginURL, _ := rp.newLogin()

	b := browsertest.New(t)
	for _, u := range []string{loginURL, "http://localhost:8080/", "http://example.com/"} {
		if page, err := b.Open(t.Context(), u); err == nil || !strings.Contains(err.Error(), "ERR_NAME_NOT_RESOLVED") {
			t.Errorf("open %s without Resolve: %v (%+v), want ERR_NAME_NOT_RESOLVED", u, err, page)
		}
	}

	b = browsertest.New(t, browsertest.Resolve("fcm.example.test", "127.0.0.1"))
	loginURL, code := rp.newLogin()
	page, err := b.Login(t.Context(), loginURL, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	if page.Code != code || !strings.HasPrefix(page.URL, "http://fcm.example.test:") {
		t.Errorf("login via fcm.example.test: %s shows code %q, want %q", page.URL, page.Code, code)
	}
	if !strings.HasPrefix(b.LastCallbackURL(), "http://fcm.example.test:") {
		t.Errorf("LastCallbackURL = %q", b.LastCallbackURL())
	}
}

func TestBrowser_LoginWithoutProviderForm(t *testing.T) {
	rp := newStandIn(t)
	b := browsertest.New(t)
	page, err := b.Login(t.Context(), rp.base+"/login/nope", "alice", "alice-pw")
	if err == nil || !strings.Contains(err.Error(), "not to the provider's login form") || !strings.Contains(err.Error(), "unknown login") {
		t.Fatalf("login at an unknown login: %v, want an error that names the page", err)
	}
	if page.Status != 404 || page.Error != "unknown login" {
		t.Errorf("page = %d %q, want the stand-in's 404", page.Status, page.Error)
	}
}

// fatalTB records Fatalf and stops the goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestNew_MissingChromiumFails(t *testing.T) {
	t.Setenv("FCM_CHROMIUM", "/nonexistent/chromium")
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		browsertest.New(f)
		f.msg = "New returned"
	}()
	<-done
	if !strings.Contains(f.msg, "no chromium at /nonexistent/chromium") || !strings.Contains(f.msg, "FCM_CHROMIUM") {
		t.Errorf("New with no chromium: %q, want a fatal error naming the path and FCM_CHROMIUM", f.msg)
	}
}

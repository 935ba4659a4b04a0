package auth

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
	"github.com/fcmhost/fcm/internal/store"
)

// newTestService is a Service against a real test provider, with a clock
// the test moves.
func newTestService(t *testing.T, publicURL string) (*Service, *time.Time) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	op, err := oidctest.Start(oidctest.Options{ClientID: "c", ClientSecret: "s", RedirectURIs: []string{publicURL + CallbackPath}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(op.Close)
	s, err := New(Config{Issuer: op.Issuer(), ClientID: "c", ClientSecret: "s", PublicURL: publicURL}, st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.now = func() time.Time { return now }
	return s, &now
}

// TestLogins_ExpiredWebLoginsPurged: 1,000 web sign-ins abandoned and
// expired do not stop the next one: GET /login purges them and succeeds.
func TestLogins_ExpiredWebLoginsPurged(t *testing.T) {
	s, now := newTestService(t, "http://127.0.0.1:1")
	for i := range 1000 {
		rec := httptest.NewRecorder()
		s.BeginWeb(rec, httptest.NewRequest("GET", "/login", nil), "192.0.2."+string(rune('0'+i%10)))
		if rec.Code != http.StatusFound {
			t.Fatalf("GET /login #%d: %d %s", i, rec.Code, rec.Body)
		}
	}
	*now = now.Add(LoginTTL + time.Second)
	rec := httptest.NewRecorder()
	s.BeginWeb(rec, httptest.NewRequest("GET", "/login", nil), "198.51.100.7")
	if rec.Code != http.StatusFound {
		t.Fatalf("GET /login after 1,000 expired ones: %d %s", rec.Code, rec.Body)
	}
	if n := len(s.logins); n != 1 {
		t.Fatalf("%d logins kept, want the new one only", n)
	}
}

// TestLogins_BoundedPerAddressAndOverall: one address holds at most
// maxPendingPerAddr logins, its oldest evicted; past maxPending overall the
// oldest of all goes; another address's login is never refused.
func TestLogins_BoundedPerAddressAndOverall(t *testing.T) {
	s, now := newTestService(t, "http://127.0.0.1:1")
	first, _ := s.Start("192.0.2.1", api.LoginStartRequest{})
	for range 3 * maxPendingPerAddr {
		*now = now.Add(time.Millisecond)
		if _, f := s.Start("192.0.2.1", api.LoginStartRequest{}); f != nil {
			t.Fatal(f.Message)
		}
	}
	if n := s.Pending(); n != maxPendingPerAddr {
		t.Fatalf("%d logins pending from one address, want %d", n, maxPendingPerAddr)
	}
	if _, ok := s.logins[first.ID]; ok {
		t.Fatal("the address's oldest login was kept")
	}
	for i := range maxPending + 100 {
		*now = now.Add(time.Microsecond)
		s.Start(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), api.LoginStartRequest{})
	}
	if n := s.Pending(); n != maxPending {
		t.Fatalf("%d logins pending, want the bound %d", n, maxPending)
	}
	if _, f := s.Start("198.51.100.7", api.LoginStartRequest{}); f != nil || s.Pending() != maxPending {
		t.Fatalf("a login from another address after a flood: %v, %d pending", f, s.Pending())
	}
}

// TestLimiter: a burst, then one request per limitEvery; addresses apart
// (IPv6 by /64) have their own buckets.
func TestLimiter(t *testing.T) {
	l := newLimiter()
	now := time.Now()
	for i := range limitBurst {
		if !l.allow("192.0.2.1", now) {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	if l.allow("192.0.2.1", now) {
		t.Fatal("a request past the burst allowed")
	}
	if !l.allow("192.0.2.2", now) {
		t.Fatal("another address refused")
	}
	if !l.allow("192.0.2.1", now.Add(limitEvery)) || l.allow("192.0.2.1", now.Add(limitEvery)) {
		t.Fatal("not one request per limitEvery after the burst")
	}
	for range limitBurst {
		l.allow("2001:db8::1", now)
	}
	if l.allow("2001:db8::ffff:2", now) {
		t.Fatal("another address of the same IPv6 /64 has its own bucket")
	}
	if !l.allow("2001:db8:0:1::1", now) {
		t.Fatal("another /64 refused")
	}
}

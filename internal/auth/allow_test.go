package auth

import (
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/store"
)

// TestAdmitted_GoogleDomainRuleNeedsHD: an ID token from Google with
// email=bob@example.com and email_verified=true but no hd is refused under
// @example.com (saying why) and accepted under bob@example.com.
func TestAdmitted_GoogleDomainRuleNeedsHD(t *testing.T) {
	s, _ := newTestService(t, "http://127.0.0.1:1")
	bob := &identity{issuer: Google, subject: "1", email: "bob@example.com"}
	check := func(rules []string) *Failure {
		t.Helper()
		if err := s.store.Update(func(tx *store.Tx) error { return tx.SetFlagRules(rules) }); err != nil {
			t.Fatal(err)
		}
		_, f := s.admit(bob)
		return f
	}
	if f := check([]string{"@example.com"}); f == nil || !strings.Contains(f.Message, "hd claim") {
		t.Fatalf("google bob without hd under @example.com: %+v", f)
	}
	if f := check([]string{"bob@example.com"}); f != nil {
		t.Fatalf("google bob without hd under bob@example.com: %+v", f)
	}
	bob.hd = "example.com"
	if f := check([]string{"@example.com"}); f != nil {
		t.Fatalf("google bob with hd=example.com under @example.com: %+v", f)
	}
}

// TestAdmitted_RemovedUserStaysOut: after users rm, the same account (issuer
// and subject) is refused under an allow rule that still matches, until the
// admin allows its email again.
func TestAdmitted_RemovedUserStaysOut(t *testing.T) {
	s, _ := newTestService(t, "http://127.0.0.1:1")
	bob := &identity{issuer: "https://op.example", subject: "42", email: "bob@example.com"}
	s.store.Update(func(tx *store.Tx) error { return tx.SetFlagRules([]string{"@example.com"}) })
	u, f := s.admit(bob)
	if f != nil {
		t.Fatal(f.Message)
	}
	s.store.Update(func(tx *store.Tx) error { _, err := tx.DeleteUser(u.ID); return err })
	if _, f := s.admit(bob); f == nil || !strings.Contains(f.Message, "was removed") {
		t.Fatalf("removed bob logging in again: %+v", f)
	}
	s.store.Update(func(tx *store.Tx) error { return tx.SetAccess("bob@example.com", true) })
	if _, f := s.admit(bob); f != nil {
		t.Fatalf("bob after users allow bob@example.com: %+v", f)
	}
}

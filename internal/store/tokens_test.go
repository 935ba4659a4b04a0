package store

import (
	"errors"
	"strings"
	"testing"
)

func TestValidSecret(t *testing.T) {
	for i := 0; i < 20; i++ {
		if s := NewSecret(); !ValidSecret(s) {
			t.Errorf("NewSecret %q not valid", s)
		}
	}
	good := NewSecret()
	for _, bad := range []string{"", "fcm_", "hunter2", good + "0", good[:43], strings.ToUpper(good),
		"fcm_" + strings.Repeat("g", 40), " " + good, good + "\n", "FCM_" + good[4:]} {
		if ValidSecret(bad) {
			t.Errorf("ValidSecret(%q) = true", bad)
		}
	}
	if f := Fingerprint(good); len(f) != 8 || strings.Contains(good, f) || f == Fingerprint(NewSecret()) {
		t.Errorf("Fingerprint %q", f)
	}
}

// SetAdminToken leaves exactly one admin token, the given one; user tokens
// stay; the old admin secret no longer authenticates.
func TestStore_SetAdminToken(t *testing.T) {
	s, _ := openTest(t)
	old1, old2, user, cur := NewSecret(), NewSecret(), NewSecret(), NewSecret()
	s.Update(func(tx *Tx) error {
		tx.PutToken(old1, &Token{ID: "admin", Admin: true})
		tx.PutToken(old2, &Token{ID: "admin", Admin: true})
		return tx.PutToken(user, &Token{ID: "alice"})
	})
	var removed int
	if err := s.Update(func(tx *Tx) (err error) { removed, err = tx.SetAdminToken(cur); return }); err != nil || removed != 2 {
		t.Fatalf("SetAdminToken: removed %d, %v; want 2", removed, err)
	}
	for _, old := range []string{old1, old2} {
		if err := s.View(func(tx *Tx) error { _, err := tx.TokenFor(old); return err }); !errors.Is(err, ErrNotFound) {
			t.Errorf("old admin token still authenticates: %v", err)
		}
	}
	for secret, id := range map[string]string{cur: "admin", user: "alice"} {
		var tok *Token
		if err := s.View(func(tx *Tx) (err error) { tok, err = tx.TokenFor(secret); return }); err != nil || tok.ID != id {
			t.Errorf("token %s: %+v, %v", id, tok, err)
		}
	}
	// Again with the same secret: nothing to do, nothing duplicated.
	if err := s.Update(func(tx *Tx) (err error) { removed, err = tx.SetAdminToken(cur); return }); err != nil || removed != 0 {
		t.Errorf("second SetAdminToken: removed %d, %v", removed, err)
	}
	var toks []*Token
	s.View(func(tx *Tx) (err error) { toks, err = tx.Tokens(); return })
	admins := 0
	for _, tok := range toks {
		if tok.Admin {
			admins++
		}
	}
	if len(toks) != 2 || admins != 1 {
		t.Errorf("tokens after: %d (%d admin), want 2 (1 admin)", len(toks), admins)
	}
}

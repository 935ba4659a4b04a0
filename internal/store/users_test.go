package store

import (
	"path/filepath"
	"testing"
	"time"
)

// TestAllowedUser_GoogleHostedDomain: an @domain rule lets a Google account
// in only if Google says that domain manages it (hd); an exact-email rule
// and other issuers trust the provider's verified email.
func TestAllowedUser_GoogleHostedDomain(t *testing.T) {
	domain := []*AccessRule{{Pattern: "@example.com", Allow: true}}
	email := []*AccessRule{{Pattern: "bob@example.com", Allow: true}}
	anyone := []*AccessRule{{Pattern: "*", Allow: true}}
	bob := func(issuer, hd string) *User {
		return &User{Issuer: issuer, Email: "bob@example.com", HostedDomain: hd}
	}
	for _, tc := range []struct {
		name  string
		rules []*AccessRule
		u     *User
		want  bool
	}{
		{"google, no hd, @domain", domain, bob(GoogleIssuer, ""), false},
		{"google, other hd, @domain", domain, bob(GoogleIssuer, "evil.example"), false},
		{"google, hd, @domain", domain, bob(GoogleIssuer, "example.com"), true},
		{"google, no hd, exact email", email, bob(GoogleIssuer, ""), true},
		{"google, no hd, exact email beside @domain", append(email, domain...), bob(GoogleIssuer, ""), true},
		{"google, no hd, *", anyone, bob(GoogleIssuer, ""), true},
		{"other issuer, @domain", domain, bob("https://op.example", ""), true},
	} {
		if got := AllowedUser(tc.rules, tc.u); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestTokens_ExpiryAndDerived: expired tokens are refused and purged; a
// token derived from another acts as its owner and ends with it.
func TestTokens_ExpiryAndDerived(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	admin, derived, old, fresh := NewSecret(), NewSecret(), NewSecret(), NewSecret()
	now := time.Now()
	err = st.Update(func(tx *Tx) error {
		if _, err := tx.SetAdminToken(admin); err != nil {
			return err
		}
		for secret, tok := range map[string]*Token{
			derived: {ID: "t_derived", Name: "web session", Admin: true, Parent: "admin", ExpiresAt: now.Add(time.Hour)},
			old:     {ID: "t_old", Name: "fcm login", ExpiresAt: now.Add(-time.Minute)},
			fresh:   {ID: "t_fresh", Name: "fcm login", ExpiresAt: now.Add(90 * 24 * time.Hour)},
		} {
			if err := tx.PutToken(secret, tok); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st.View(func(tx *Tx) error {
		if tok, _, err := tx.Authenticate(derived); err != nil || tok.Owner() != "admin" || !tok.Admin {
			t.Errorf("derived token: %+v %v, want it to act as the admin", tok, err)
		}
		if _, _, err := tx.Authenticate(old); err == nil {
			t.Error("an expired token authenticates")
		}
		return nil
	})
	var n int
	st.Update(func(tx *Tx) (err error) { n, err = tx.PurgeExpiredTokens(now); return })
	if n != 1 {
		t.Errorf("purged %d tokens, want the expired one", n)
	}
	// Rotating the admin token ends what was derived from it.
	st.Update(func(tx *Tx) error { _, err := tx.SetAdminToken(NewSecret()); return err })
	st.View(func(tx *Tx) error {
		if _, _, err := tx.Authenticate(derived); err == nil {
			t.Error("a token derived from a replaced admin token still works")
		}
		return nil
	})
	st.Update(func(tx *Tx) (err error) { n, err = tx.PurgeExpiredTokens(now); return })
	var ids []string
	st.View(func(tx *Tx) error {
		toks, _ := tx.Tokens()
		for _, tok := range toks {
			ids = append(ids, tok.ID)
		}
		return nil
	})
	if len(ids) != 2 {
		t.Errorf("tokens left: %v, want the new admin token and t_fresh", ids)
	}
}

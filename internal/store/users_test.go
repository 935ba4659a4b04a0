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

// TestAllowList_ASCIIOnly: rules and emails are ASCII, lowered byte by
// byte; Unicode look-alikes and case folds match nothing, and a second "@"
// makes no address.
func TestAllowList_ASCIIOnly(t *testing.T) {
	for _, p := range []string{"\u212Aelvin@example.com", "bob@ex\u0430mple.com", "@ex\u0430mple.com", "a@b@example.com"} {
		if _, err := NormalizePattern(p); err == nil {
			t.Errorf("pattern %q accepted", p)
		}
	}
	if p, err := NormalizePattern(" Kelvin@Example.COM "); err != nil || p != "kelvin@example.com" {
		t.Errorf("ASCII pattern: %q %v", p, err)
	}
	rules := []*AccessRule{{Pattern: "kelvin@example.com", Allow: true}, {Pattern: "@example.com", Allow: true}}
	for email, want := range map[string]bool{
		"KELVIN@example.com":      true,
		"\u212Aelvin@example.com": false, // KELVIN SIGN: strings.ToLower makes it "k"
		"bob@ex\u0430mple.com":    false,
		"bob@x@example.com":       false,
		"@example.com":            false,
	} {
		if got := Allowed(rules, email); got != want {
			t.Errorf("Allowed(%q) = %v, want %v", email, got, want)
		}
	}
}

// TestDeleteUser_Bans: a removed user's account stays out whatever the
// allow-list says, until their email is allowed again.
func TestDeleteUser_Bans(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	u := &User{ID: NewUserID(), Issuer: "https://op.example", Subject: "42", Email: "bob@example.com"}
	banned := func() *Ban {
		var b *Ban
		st.View(func(tx *Tx) (err error) { b, err = tx.Banned(u.Issuer, u.Subject); return })
		return b
	}
	if banned() != nil {
		t.Fatal("banned before removal")
	}
	st.Update(func(tx *Tx) error { return tx.PutUser(u) })
	if err := st.Update(func(tx *Tx) error { _, err := tx.DeleteUser(u.ID); return err }); err != nil {
		t.Fatal(err)
	}
	if b := banned(); b == nil || b.Email != "bob@example.com" {
		t.Fatalf("ban after users rm: %+v", b)
	}
	st.Update(func(tx *Tx) error { return tx.SetAccess("@example.com", true) })
	if banned() == nil {
		t.Fatal("allowing the domain lifted the ban")
	}
	st.Update(func(tx *Tx) error { return tx.SetAccess("bob@example.com", true) })
	if banned() != nil {
		t.Fatal("allowing the email did not lift the ban")
	}
}

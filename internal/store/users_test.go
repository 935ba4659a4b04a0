package store

import "testing"

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

package names

import (
	"errors"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/edge"
)

// FuzzValidate: a name Validate accepts is a DNS label (checked here byte by
// byte, apart from the regexp Validate uses), not all digits and not one of
// fcm's own hostnames, and makes a valid hostname under a domain; a refusal
// wraps ErrInvalidName in one line.
func FuzzValidate(f *testing.F) {
	for _, s := range []string{"cosmic-nova", "a", "web1", "fcm", "www", "localhost", "123", "-a", "a-", "A", "a_b",
		"a.b", "café", "a\nb", strings.Repeat("a", 63), strings.Repeat("a", 64), "xn--caf-dma", "0x1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := Validate(name)
		if err != nil {
			if !errors.Is(err, ErrInvalidName) || strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("Validate(%q) = %v: want ErrInvalidName in one line", name, err)
			}
			return
		}
		if !dnsLabel(name) {
			t.Fatalf("Validate accepted %q, not a DNS label", name)
		}
		if strings.Trim(name, "0123456789") == "" {
			t.Fatalf("Validate accepted %q, all digits", name)
		}
		if name == "fcm" || name == "www" || name == "localhost" || name == edge.DaemonHost {
			t.Fatalf("Validate accepted %q, reserved", name)
		}
		if err := edge.ValidateDomain(name + ".apps.example.com"); err != nil {
			t.Fatalf("accepted %q makes an invalid hostname: %v", name, err)
		}
	})
}

// dnsLabel: 1-63 bytes of a-z, 0-9 and hyphens, no hyphen at either end.
func dnsLabel(s string) bool {
	if len(s) < 1 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

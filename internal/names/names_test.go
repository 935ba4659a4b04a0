package names

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := []string{"cosmic-nova", "a", "web1", "x-y-z", strings.Repeat("a", 63)}
	bad := []string{"", "../x", "a b", "A", "-a", "a-", "a_b", "a.b", strings.Repeat("a", 64),
		strings.Repeat("a", 300), "café", "ünïcode", "123", "fcm", "a/b", "a\nb"}
	for _, n := range good {
		if err := Validate(n); err != nil {
			t.Errorf("Validate(%q) = %v", n, err)
		}
	}
	for _, n := range bad {
		if err := Validate(n); err == nil || !errors.Is(err, ErrInvalidName) {
			t.Errorf("Validate(%q) = %v, want ErrInvalidName", n, err)
		}
	}
}

func TestRandomAndNthAreValid(t *testing.T) {
	for i := 0; i < 200; i++ {
		if n := Random(); Validate(n) != nil || strings.Count(n, "-") != 1 {
			t.Fatalf("Random() = %q", n)
		}
	}
	seen := map[string]bool{}
	for i := 0; i < Combinations; i++ {
		n := Nth(i)
		if seen[n] || Validate(n) != nil {
			t.Fatalf("Nth(%d) = %q repeated or invalid", i, n)
		}
		seen[n] = true
	}
}

func TestGenerate(t *testing.T) {
	taken := map[string]bool{}
	for i := 0; i < Combinations; i++ {
		n := Generate(func(s string) bool { return taken[s] })
		if taken[n] {
			t.Fatalf("Generate returned taken name %q", n)
		}
		taken[n] = true
	}
	// Every combination is used: the next one has a numeric suffix.
	n := Generate(func(s string) bool { return taken[s] })
	if taken[n] || Validate(n) != nil || strings.Count(n, "-") != 2 {
		t.Fatalf("after exhaustion Generate = %q", n)
	}
}

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if !ValidID(id) || seen[id] {
			t.Fatalf("NewID() = %q (seen %v)", id, seen[id])
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "ABCDEFGH", "abc", "abcdefghi", "../abcde"} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q) = true", bad)
		}
	}
}

package console

import (
	"errors"
	"strings"
	"testing"
)

func TestNewID(t *testing.T) {
	taken := map[string]bool{}
	first := NewID(taken)
	if first != "brook" {
		t.Errorf("first id %q, want brook", first)
	}
	for i := 0; i < len(words)+3; i++ {
		id := NewID(taken)
		if taken[id] || Validate(id) != nil {
			t.Fatalf("NewID gave %q (taken or invalid)", id)
		}
		taken[id] = true
	}
	if !taken["brook-2"] {
		t.Error("after every word, ids get a -2 suffix")
	}
}

func TestValidate(t *testing.T) {
	for _, ok := range []string{"brook", "fern-2", "web-cosmic-nova", "a"} {
		if err := Validate(ok); err != nil {
			t.Errorf("Validate(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Brook", "2fern", "a b", "a;rm -rf /", "a'b", "../x", "=x", strings.Repeat("a", 64), "fürn"} {
		if err := Validate(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Validate(%q) = %v", bad, err)
		}
	}
}

func TestParseList(t *testing.T) {
	got, err := parseList("fern 1700000100 0\nbrook 1700000000 2\n")
	if err != nil || len(got) != 2 || got[0].ID != "brook" || got[0].Attached != 2 || got[1].ID != "fern" {
		t.Fatalf("parseList = %+v, %v", got, err)
	}
	for _, none := range []string{"", "no server running on /tmp/tmux-0/default\n", "error connecting to /tmp/tmux-0/default (No such file or directory)\n"} {
		if got, err := parseList(none); err != nil || len(got) != 0 {
			t.Errorf("parseList(%q) = %+v, %v", none, got, err)
		}
	}
	if _, err := parseList("garbage line here too\n"); err == nil {
		t.Error("no error for unexpected output")
	}
}

package console

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Seeds live in testdata/fuzz/<FuzzName>; `go test` runs them, and
// `go test -fuzz FuzzParseControl ./internal/console` explores further.

// FuzzParseControl: whatever a client sends, the parser does not panic, takes
// only the three client controls with sane sizes, and what it accepts reads
// back the same once re-encoded.
func FuzzParseControl(f *testing.F) {
	f.Add([]byte(`{"type":"resize","cols":80,"rows":24}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, ok := ParseControl(data)
		if !ok {
			if c != (Control{}) {
				t.Fatalf("rejected %q but returned %+v", data, c)
			}
			return
		}
		switch c.Type {
		case "resize":
			if c.Cols < 1 || c.Cols > 1000 || c.Rows < 1 || c.Rows > 1000 {
				t.Fatalf("accepted a resize to %dx%d", c.Cols, c.Rows)
			}
		case "refresh", "detach":
			if c.Cols != 0 || c.Rows != 0 {
				t.Fatalf("%s carries a size: %+v", c.Type, c)
			}
		default:
			t.Fatalf("accepted control type %q from %q", c.Type, data)
		}
		if c.Status != 0 || c.Stream != "" || c.Offset != 0 {
			t.Fatalf("a client control carries server fields: %+v", c)
		}
		b, _ := json.Marshal(c)
		if again, ok := ParseControl(b); !ok || again != c {
			t.Fatalf("round trip of %+v: %+v, %v", c, again, ok)
		}
	})
}

// format writes sessions as the guest's tmux list-sessions prints them.
func format(sessions []Session) string {
	var b strings.Builder
	for _, s := range sessions {
		fmt.Fprintf(&b, "%s %d %d\n", s.ID, s.Created.Unix(), s.Attached)
	}
	return b.String()
}

// FuzzParseList: whatever the guest prints, the parser does not panic, every
// session it returns has a valid id (fit for a command line and a terminal),
// oldest first, its errors quote little guest text, and its result printed
// back as tmux would parses to itself.
func FuzzParseList(f *testing.F) {
	f.Add("fern 1700000100 0\nbrook 1700000000 2\n")
	f.Fuzz(func(t *testing.T, out string) {
		sessions, err := parseList(out)
		if err != nil {
			if len(err.Error()) > 400 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		for i, s := range sessions {
			if Validate(s.ID) != nil {
				t.Fatalf("parsed an invalid session id %q from %q", s.ID, out)
			}
			if i > 0 && s.Created.Before(sessions[i-1].Created) {
				t.Fatalf("not oldest first: %+v", sessions)
			}
		}
		again, err := parseList(format(sessions))
		if err != nil || !(len(again) == 0 && len(sessions) == 0 || reflect.DeepEqual(again, sessions)) {
			t.Fatalf("round trip of %+v: %+v, %v", sessions, again, err)
		}
	})
}

// FuzzSessionName: a name Validate accepts is plain (lowercase letters,
// digits, hyphens; at most 63 bytes) and survives the guest's listing; one it
// refuses is never taken from the guest's listing; NewID never hands out a
// taken or invalid name.
func FuzzSessionName(f *testing.F) {
	f.Add("brook")
	f.Fuzz(func(t *testing.T, id string) {
		line := id + " 1700000000 0\n"
		sessions, err := parseList(line)
		if Validate(id) == nil {
			if len(id) == 0 || len(id) > 63 || id[0] < 'a' || id[0] > 'z' ||
				strings.Trim(id, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
				t.Fatalf("Validate accepted %q", id)
			}
			want := []Session{{ID: id, Created: time.Unix(1700000000, 0).UTC()}}
			if err != nil || !reflect.DeepEqual(sessions, want) {
				t.Fatalf("listing of valid %q: %+v, %v", id, sessions, err)
			}
		} else {
			for _, s := range sessions {
				if s.ID == id {
					t.Fatalf("the listing took the invalid name %q", id)
				}
			}
			if err != nil && !utf8.ValidString(err.Error()) {
				t.Fatalf("error text is not valid UTF-8: %q", err.Error())
			}
		}
		taken := map[string]bool{id: true}
		if n := NewID(taken); taken[n] || Validate(n) != nil {
			t.Fatalf("NewID gave %q with %q taken", n, id)
		}
	})
}

package release

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseProcfile(t *testing.T) {
	got, err := ParseProcfile("# comment\nweb: python3 -m http.server 3000\n\nworker:  ./work --x=1\nrelease: ./migrate\n")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"web": "python3 -m http.server 3000", "worker": "./work --x=1", "release": "./migrate"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, tc := range []struct{ in, err string }{
		{"web python3 app.py", "line 1: want 'type: command'"},
		{"web:\n", "line 1: web has no command"},
		{"web: a\nweb: b", "line 2: web is declared twice"},
		{"we b: a", `process type "we b"`},
	} {
		if _, err := ParseProcfile(tc.in); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
		}
	}
}

func TestResultTypesWebFirst(t *testing.T) {
	r := Result{Processes: map[string]string{"worker": "w", "web": "x", "clock": "c"}}
	if got := r.Types(); !reflect.DeepEqual(got, []string{"web", "clock", "worker"}) {
		t.Fatalf("got %v", got)
	}
}

func TestHealthTimeout(t *testing.T) {
	if got := (Spec{}).HealthTimeout(); got != 60 {
		t.Fatalf("default %d", got)
	}
	if got := (Spec{Env: map[string]string{HealthTimeoutVar: "5"}}).HealthTimeout(); got != 5 {
		t.Fatalf("set %d", got)
	}
}

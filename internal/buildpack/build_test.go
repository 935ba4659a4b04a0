package buildpack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/release"
)

func builder(t *testing.T, files map[string]string) (*Builder, *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	return &Builder{Dir: dir, Build: 7, Out: &out, DepsDir: t.TempDir(), Cache: t.TempDir()}, &out
}

func TestBuilder_ProcfileOnly(t *testing.T) {
	b, out := builder(t, map[string]string{"Procfile": "web: python3 -m http.server $PORT\nworker: ./work\nrelease: ./migrate\n"})
	res, err := b.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"web": "python3 -m http.server $PORT", "worker": "./work"}; !reflect.DeepEqual(res.Processes, want) || res.Release != "./migrate" {
		t.Errorf("result %+v", res)
	}
	for _, want := range []string{"-----> No runtime detected", "Procfile declares types -> web, worker, release"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	var saved release.Result
	data, _ := os.ReadFile(filepath.Join(b.Dir, release.BuildInfo))
	if err := json.Unmarshal(data, &saved); err != nil || saved.Build != 7 || saved.Processes["web"] == "" {
		t.Errorf("saved result %s: %v", data, err)
	}
}

func TestBuilder_Refusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"nothing to run", map[string]string{"index.html": "hi"}, "No app detected: add a Procfile"},
		{"two lockfiles", map[string]string{"package.json": "{}", "bun.lock": "{}", "package-lock.json": "{}"}, "Two different lockfiles found: bun.lock and package-lock.json"},
		{"bad Procfile", map[string]string{"Procfile": "web\n"}, "Procfile line 1"},
		{"python asked for is missing", map[string]string{"requirements.txt": "", ".python-version": "3.2\n", "Procfile": "web: x"}, "asks for Python 3.2, which this VM's image does not have"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := builder(t, tc.files)
			_, err := b.Run(context.Background())
			var be *Error
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &be) {
				t.Errorf("error %v, want a build error with %q", err, tc.want)
			}
		})
	}
}

func TestBuilder_DepsDirKeyedByContent(t *testing.T) {
	b, _ := builder(t, nil)
	dir, cached, err := b.depsDir("node", []byte("v24"), []byte(`{"dependencies":{"ms":"2.1.3"}}`))
	if err != nil || cached {
		t.Fatalf("first: %v cached=%v", err, cached)
	}
	if err := markComplete(dir); err != nil {
		t.Fatal(err)
	}
	again, cached, _ := b.depsDir("node", []byte("v24"), []byte(`{"dependencies":{"ms":"2.1.3"}}`))
	if again != dir || !cached {
		t.Errorf("same inputs: %s cached=%v, want %s cached", again, cached, dir)
	}
	other, cached, _ := b.depsDir("node", []byte("v24"), []byte(`{"dependencies":{"ms":"2.1.2"}}`))
	if other == dir || cached {
		t.Errorf("changed package.json reused %s", other)
	}
	// An install that never completed is not reused.
	half, _, _ := b.depsDir("node", []byte("v25"))
	os.WriteFile(filepath.Join(half, "junk"), nil, 0o644)
	if _, cached, _ := b.depsDir("node", []byte("v25")); cached {
		t.Error("an incomplete install was reused")
	}
	if _, err := os.Stat(filepath.Join(half, "junk")); !os.IsNotExist(err) {
		t.Error("an incomplete install was not cleared")
	}
}

func TestIndenter(t *testing.T) {
	var out bytes.Buffer
	in := newIndenter(&out)
	in.Write([]byte("one\ntw"))
	in.Write([]byte("o\r50%\rdone\n\n"))
	in.Write([]byte("tail"))
	in.flush()
	want := "       one\n       two\n       50%\n       done\n       tail\n"
	if out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

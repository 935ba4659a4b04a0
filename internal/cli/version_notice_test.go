package cli

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestVersionNotice(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".fcm-version-notice")
	host, other := "https://fcm.example.com", "https://fcm.other.example"
	notice := func(mine, host, theirs string) string {
		var b bytes.Buffer
		versionNotice(&b, path, mine, host, theirs)
		return b.String()
	}
	want := "fcm: this client is v1.2.0 but the daemon at https://fcm.example.com is v1.3.0: update with curl -sL https://fcm.example.com/install.sh | sh\n"
	for _, step := range []struct {
		mine, host, theirs, want string
	}{
		{"v1.2.0", host, "v1.2.0", ""}, // the same
		{"dev", host, "v1.3.0", ""},    // a developer's client
		{"v1.2.0", host, "dev", ""},    // a developer's daemon
		{"v1.2.0", host, "", ""},       // the daemon did not say
		{"v1.2.0", host, "v1.3.0", want},
		{"v1.2.0", host, "v1.3.0", ""}, // told already
		{"v1.2.1", host, "v1.3.0", ""}, // still v1.3.0: told already
		{"v1.2.0", other, "v1.3.0", "fcm: this client is v1.2.0 but the daemon at https://fcm.other.example is v1.3.0: update with curl -sL https://fcm.other.example/install.sh | sh\n"},
		{"v1.2.0", host, "v1.3.0", ""}, // the other daemon did not make it forget this one
		{"v1.2.0", host, "v1.4.0", strings.ReplaceAll(want, "v1.3.0", "v1.4.0")},
		{"v1.2.0", host, "v1.4.0", ""},
	} {
		if got := notice(step.mine, step.host, step.theirs); got != step.want {
			t.Errorf("client %s, daemon at %s %s: told %q, want %q", step.mine, step.host, step.theirs, got, step.want)
		}
	}
	if got := readFile0600(t, path); got != "https://fcm.example.com v1.4.0\nhttps://fcm.other.example v1.3.0\n" {
		t.Errorf("notice file: %q", got)
	}
}

// TestMain_TellsVersion runs the command line as fcm does (Main) against a
// daemon that says it runs another version: the notice comes once, on
// stderr, after the command.
func TestMain_TellsVersion(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	var daemonVersion atomic.Value
	daemonVersion.Store("v1.3.0")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Fcm-Version", daemonVersion.Load().(string))
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"vms":[]}`))
	}))
	defer srv.Close()
	t.Setenv("FCM_HOST", srv.URL)
	t.Setenv("FCM_TOKEN", "fcm_tok")
	oldVersion := Version
	Version = "v1.2.0"
	defer func() { Version = oldVersion }()

	run := func() string {
		t.Helper()
		f, err := os.CreateTemp(t.TempDir(), "stderr")
		if err != nil {
			t.Fatal(err)
		}
		oldStderr, oldStdout := os.Stderr, os.Stdout
		os.Stderr, os.Stdout = f, f
		code := Main([]string{"ls"})
		os.Stderr, os.Stdout = oldStderr, oldStdout
		f.Close()
		if code != 0 {
			t.Fatalf("fcm ls: exit %d", code)
		}
		data, _ := os.ReadFile(f.Name())
		return string(data)
	}
	want := "fcm: this client is v1.2.0 but the daemon at " + srv.URL + " is v1.3.0: update with curl -sL " + srv.URL + "/install.sh | sh\n"
	if out := run(); !strings.HasSuffix(out, want) {
		t.Errorf("first fcm ls: output %q, want it to end with %q", out, want)
	}
	if out := run(); strings.Contains(out, "this client is") {
		t.Errorf("second fcm ls told again: %q", out)
	}
	readFile0600(t, filepath.Join(home, ".fcm-version-notice"))
	daemonVersion.Store("v1.4.0")
	if out := run(); !strings.Contains(out, "daemon at "+srv.URL+" is v1.4.0") {
		t.Errorf("after the daemon's update: %q", out)
	}
	daemonVersion.Store("v1.5.0")
	Version = "dev"
	if out := run(); strings.Contains(out, "this client is") {
		t.Errorf("a dev client was told: %q", out)
	}
}

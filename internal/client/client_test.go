package client

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFromEnv_TokenFileMode(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("FCM_TOKEN", "")
	t.Setenv("FCM_HOST", "")
	path := filepath.Join(home, ".fcm-token")
	for _, tc := range []struct {
		mode os.FileMode
		err  string
	}{
		{0o600, ""}, {0o400, ""},
		{0o644, "~/.fcm-token has mode 0644: run chmod 600 ~/.fcm-token"},
		{0o640, "~/.fcm-token has mode 0640: run chmod 600 ~/.fcm-token"},
		{0o604, "~/.fcm-token has mode 0604: run chmod 600 ~/.fcm-token"},
	} {
		os.Remove(path)
		os.WriteFile(path, []byte("fcm_secret\n"), tc.mode)
		os.Chmod(path, tc.mode)
		c := FromEnv()
		if tc.err == "" {
			if c.Err != nil || c.Token != "fcm_secret" || c.TokenFile != path {
				t.Errorf("mode %#o: %+v", tc.mode, c)
			}
			continue
		}
		if c.Err == nil || c.Err.Error() != tc.err || c.Token != "" {
			t.Errorf("mode %#o: err %v, token %q; want %q", tc.mode, c.Err, c.Token, tc.err)
		}
		// No request is sent with it.
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { t.Error("a request was sent") }))
		c.Host = srv.URL
		if _, err := c.ListVMs(context.Background()); err == nil || err.Error() != tc.err {
			t.Errorf("ListVMs with a refused token file: %v", err)
		}
		srv.Close()
	}
	os.Remove(path)
	if c := FromEnv(); c.Err != nil || c.Token != "" {
		t.Errorf("no token file: %+v", c)
	}
	t.Setenv("FCM_TOKEN", "fcm_env")
	os.WriteFile(path, []byte("fcm_file"), 0o644)
	if c := FromEnv(); c.Err != nil || c.Token != "fcm_env" || c.TokenFile != "" {
		t.Errorf("FCM_TOKEN set: the file should not matter: %+v", c)
	}
}

func TestClient_WarnsBeforePlainHTTPToAnotherHost(t *testing.T) {
	for host, warn := range map[string]bool{
		"http://127.0.0.1:7777": false, "http://localhost:7777": false, "http://[::1]:7777": false,
		"http://127.0.0.2:7777": false, "https://fcm.example.com": false,
		"http://10.0.0.5:7777": true, "http://fcm.example.com": true, "http://[2001:db8::1]:7777": true,
	} {
		var out bytes.Buffer
		c := &Client{Host: host, Token: "fcm_x", Warn: &out, HTTP: &http.Client{Transport: failing{}}}
		c.ListVMs(context.Background())
		c.ListVMs(context.Background())
		got := out.String()
		if warn != (got != "") {
			t.Errorf("%s: warning %q", host, got)
		}
		if warn && (strings.Count(got, "\n") != 1 || !strings.Contains(got, "sending your token in clear over http://")) {
			t.Errorf("%s: want one warning line, got %q", host, got)
		}
	}
}

// failing answers no request: the tests only look at what is said before.
type failing struct{}

func (failing) RoundTrip(*http.Request) (*http.Response, error) { return nil, os.ErrDeadlineExceeded }

func TestWriteTokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".fcm-token")
	os.WriteFile(path, []byte("old\n"), 0o644)
	if err := WriteTokenFile(path, "fcm_new"); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	b, _ := os.ReadFile(path)
	if fi.Mode().Perm() != 0o600 || string(b) != "fcm_new\n" {
		t.Errorf("mode %#o, content %q", fi.Mode().Perm(), b)
	}
	if tok, err := ReadTokenFile(path); err != nil || tok != "fcm_new" {
		t.Errorf("read back %q, %v", tok, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("left files: %v", entries)
	}
}

package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
)

// loginEnv gives a test an empty home, no FCM_TOKEN or FCM_HOST, fast login
// polls and a browser that only records what it was asked to open.
func loginEnv(t *testing.T) (home string, opened *[]string) {
	home = t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("FCM_TOKEN", "")
	t.Setenv("FCM_HOST", "")
	oldPoll, oldOpen := loginPollInterval, openBrowser
	loginPollInterval = func(int) time.Duration { return time.Millisecond }
	opened = new([]string)
	openBrowser = func(url string) { *opened = append(*opened, url) }
	t.Cleanup(func() { loginPollInterval, openBrowser = oldPoll, oldOpen })
	return home, opened
}

// runCLIContext is runCLI with a context (as Main's, which Ctrl+C cancels).
func runCLIContext(ctx context.Context, args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(""))
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// readFile0600 returns a file's content, failing the test unless its mode is 0600.
func readFile0600(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %#o, want 0600", path, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	return string(b)
}

func assertNoFiles(t *testing.T, home string) {
	t.Helper()
	for _, name := range []string{".fcm-token", ".fcm-host"} {
		if _, err := os.Stat(filepath.Join(home, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("~/%s exists (%v)", name, err)
		}
	}
}

// `fcm login` prints the URL, listens on a loopback port for the browser's
// grant, polls without a token (and without the grant, pending) until the
// person confirmed, then with the grant; it writes ~/.fcm-token and
// ~/.fcm-host (0600) which later commands use.
func TestLogin_WritesTokenAndHost(t *testing.T) {
	home, opened := loginEnv(t)
	d := newUsersDaemon(t)
	d.rules = []api.AccessRule{{Pattern: "@example.com", Allow: true, Source: "flag"}}
	d.pendingPolls = 3

	out, err := runCLI(nil, "login", "--host", d.srv.URL+"/")
	if err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	want := "To log in, open this URL in a browser on this computer:\n  " + d.srv.URL + "/login/l_1\n(a browser on another device: use fcm login --no-browser)\n" +
		"Waiting for you to sign in... (Ctrl+C to give up)\n" +
		"Logged in to " + d.srv.URL + " as alice@example.com (Alice Liddell)\n"
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
	if got := strings.Join(*opened, " "); got != d.srv.URL+"/login/l_1" {
		t.Errorf("browser opened %q", got)
	}
	if l := d.logins["l_1"]; l != nil || !strings.HasSuffix(d.requests(), "POST /v1/logins/l_1/token") {
		t.Errorf("the login is still there or the last request was not a poll")
	}
	secret := d.tokens[len(d.tokens)-1].secret
	if got := readFile0600(t, filepath.Join(home, ".fcm-token")); got != secret+"\n" {
		t.Errorf("~/.fcm-token holds %q, want %q", got, secret)
	}
	if got := readFile0600(t, filepath.Join(home, ".fcm-host")); got != d.srv.URL+"\n" {
		t.Errorf("~/.fcm-host holds %q", got)
	}

	// The next command finds the daemon and the token from the files alone.
	out, err = runCLI(nil, "whoami")
	if err != nil || !strings.HasPrefix(out, "alice@example.com (Alice Liddell)\nrole:  user\nhost:  "+d.srv.URL+"\n") {
		t.Errorf("whoami after login: %v\n%s", err, out)
	}

	// --no-browser opens nothing and reads the code the page showed; a wrong
	// one is asked again. Logging in again replaces the token and says so.
	d.pendingPolls = 0
	d.requests()
	*opened = nil
	out, err = runCLI(strings.NewReader("BCDF-GHJK\n"+fakeCode+"\n"), "login", "--no-browser")
	if err != nil || !strings.Contains(out, "Replaced the token that was in ~/.fcm-token") ||
		!strings.Contains(out, "type here the code the page shows.\nCode: That code is not the one the page shows. Code: \n") {
		t.Errorf("second login: %v\n%s", err, out)
	}
	if len(*opened) != 0 {
		t.Errorf("--no-browser opened %v", *opened)
	}
	if r := d.requests(); !strings.HasPrefix(r, "POST /v1/logins\nPOST /v1/logins/l_2/token") || strings.Contains(r, "Bearer") {
		t.Errorf("second login's requests (the token in ~/.fcm-token not sent): %q", r)
	}
	if got := readFile0600(t, filepath.Join(home, ".fcm-token")); got != d.tokens[len(d.tokens)-1].secret+"\n" || got == secret+"\n" {
		t.Errorf("~/.fcm-token after the second login: %q", got)
	}

	// --no-browser with nothing typed gives up clearly.
	out, err = runCLI(strings.NewReader(""), "login", "--no-browser")
	if err == nil || !strings.Contains(err.Error(), "no code was typed") {
		t.Errorf("--no-browser without a code: %v\n%s", err, out)
	}
}

// A request to the CLI's loopback port with a grant that is not the
// daemon's (another local program) does not end the login: the CLI waits
// for the real one.
func TestLogin_IgnoresAWrongGrant(t *testing.T) {
	loginEnv(t)
	d := newUsersDaemon(t)
	d.rules = []api.AccessRule{{Pattern: "@example.com", Allow: true, Source: "flag"}}
	d.pendingPolls = 1 << 30
	t.Setenv("FCM_HOST", d.srv.URL)
	done := make(chan error, 1)
	go func() { _, err := runCLI(nil, "login"); done <- err }()
	var port int
	for deadline := time.Now().Add(5 * time.Second); port == 0; time.Sleep(5 * time.Millisecond) {
		d.mu.Lock()
		if l := d.logins["l_1"]; l != nil {
			port = l.port
		}
		d.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("no login started with a port")
		}
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/done?grant=forged", port))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	d.mu.Lock()
	d.pendingPolls = 0
	d.mu.Unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("login after a forged grant: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("login did not finish after the real grant")
	}
}

// Without OIDC on the daemon, login prints the daemon's message on how to
// enable it and exits 1, writing nothing.
func TestLogin_Disabled(t *testing.T) {
	home, _ := loginEnv(t)
	d := newUsersDaemon(t)
	d.oidc = false
	t.Setenv("FCM_HOST", d.srv.URL)
	out, err := runCLI(nil, "login")
	if err != exitCode(1) {
		t.Errorf("exit: %v", err)
	}
	if out != "logins are off: start the daemon with --oidc-client-id and --oidc-client-secret (see fcm daemon --help)\n" {
		t.Errorf("output %q", out)
	}
	if r := d.requests(); r != "POST /v1/logins" {
		t.Errorf("requests %q", r)
	}
	assertNoFiles(t, home)
}

// A person the allow-list does not let in gets the daemon's message and no
// files; an expired login says so and how to start again.
func TestLogin_RefusedOrExpired(t *testing.T) {
	home, _ := loginEnv(t)
	d := newUsersDaemon(t)
	d.rules = []api.AccessRule{{Pattern: "*", Allow: true, Source: "flag"}, {Pattern: "alice@example.com", Allow: false, Source: "api"}}
	d.pendingPolls = 1
	t.Setenv("FCM_HOST", d.srv.URL)
	_, err := runCLI(nil, "login")
	if err == nil || err.Error() != "alice@example.com may not log in to this daemon: ask its admin to run fcm users allow alice@example.com" {
		t.Errorf("not allowed: %v", err)
	}
	assertNoFiles(t, home)

	d.expireLogins = true
	_, err = runCLI(nil, "login")
	if err == nil || err.Error() != "the login expired after 10 minutes: run fcm login again" {
		t.Errorf("expired: %v", err)
	}
	assertNoFiles(t, home)
}

// Ctrl+C (the command's context) stops the polling.
func TestLogin_StopsAtCtrlC(t *testing.T) {
	home, _ := loginEnv(t)
	d := newUsersDaemon(t)
	d.pendingPolls = 1 << 30
	t.Setenv("FCM_HOST", d.srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := runCLIContext(ctx, "login")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "login given up") {
		t.Errorf("err %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("login went on %v after the context ended", time.Since(start))
	}
	if n := strings.Count(d.requests(), "/token"); n < 2 {
		t.Errorf("%d polls before the context ended", n)
	}
	assertNoFiles(t, home)
}

// whoami names the user or the admin token, the host and where the token came from.
func TestWhoAmI(t *testing.T) {
	home, _ := loginEnv(t)
	d := newUsersDaemon(t)
	secret := d.addUser(api.User{Email: "alice@example.com", Name: "Alice Liddell"})
	t.Setenv("FCM_HOST", d.srv.URL)
	os.WriteFile(filepath.Join(home, ".fcm-token"), []byte(secret+"\n"), 0o600)
	out, err := runCLI(nil, "whoami")
	want := "alice@example.com (Alice Liddell)\nrole:  user\nhost:  " + d.srv.URL + "\ntoken: t_0123abce (from ~/.fcm-token)\n"
	if err != nil || out != want {
		t.Errorf("whoami: %v\n%s\nwant:\n%s", err, out, want)
	}

	t.Setenv("FCM_TOKEN", adminSecret)
	out, err = runCLI(nil, "whoami")
	want = "admin (the admin token)\nrole:  admin\nhost:  " + d.srv.URL + "\ntoken: t_admin (from FCM_TOKEN)\n"
	if err != nil || out != want {
		t.Errorf("whoami with the admin token: %v\n%s\nwant:\n%s", err, out, want)
	}
	out, err = runCLI(nil, "whoami", "--json")
	if err != nil || !strings.Contains(out, `"role": "admin"`) || !strings.Contains(out, `"token_source": "FCM_TOKEN"`) || !strings.Contains(out, `"host": "`+d.srv.URL+`"`) {
		t.Errorf("whoami --json: %v\n%s", err, out)
	}
}

// The CLI opens only an https URL, or http on loopback, on the daemon's own
// host: a hostile daemon's file:, custom-scheme or other-site URL is refused
// and nothing is opened.
func TestCheckLoginURL(t *testing.T) {
	for _, tc := range []struct {
		host, url string
		ok        bool
	}{
		{"https://fcm.example.com", "https://fcm.example.com/login/x", true},
		{"https://FCM.example.com:8443", "https://fcm.example.com/login/x", true},
		{"http://127.0.0.1:7777", "http://127.0.0.1:7777/login/x", true},
		{"http://localhost:7777", "http://localhost:7777/login/x", true},
		{"http://fcm.example.com", "http://fcm.example.com/login/x", false},
		{"https://fcm.example.com", "file:///etc/passwd", false},
		{"https://fcm.example.com", "smb://fcm.example.com/share", false},
		{"https://fcm.example.com", "javascript:alert(1)", false},
		{"https://fcm.example.com", "https://evil.example/login/x", false},
		{"https://fcm.example.com", "https://fcm.example.com.evil.example/x", false},
		{"https://fcm.example.com", "https://user@fcm.example.com/x", false},
		{"http://127.0.0.1:7777", "http://192.0.2.1/login/x", false},
	} {
		if err := checkLoginURL(tc.host, tc.url); (err == nil) != tc.ok {
			t.Errorf("checkLoginURL(%q, %q): %v, want ok=%v", tc.host, tc.url, err, tc.ok)
		}
	}

	home, opened := loginEnv(t)
	d := newUsersDaemon(t)
	d.loginURL = "file:///etc/passwd"
	out, err := runCLI(nil, "login", "--host", d.srv.URL)
	if err == nil || !strings.Contains(err.Error(), "not opening it") || len(*opened) != 0 || strings.Contains(out, "file:") {
		t.Errorf("login with a file: URL: %v, opened %v\n%s", err, *opened, out)
	}
	assertNoFiles(t, home)
}

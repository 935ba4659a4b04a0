package cli

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
)

// loggedIn writes ~/.fcm-token and ~/.fcm-host as fcm login does.
func loggedIn(t *testing.T, home, host, secret string) {
	t.Helper()
	os.WriteFile(filepath.Join(home, ".fcm-token"), []byte(secret+"\n"), 0o600)
	os.WriteFile(filepath.Join(home, ".fcm-host"), []byte(host+"\n"), 0o600)
}

// logout revokes the token on the daemon, then removes both files.
func TestLogout_RevokesThenRemoves(t *testing.T) {
	home, _ := loginEnv(t)
	d := newUsersDaemon(t)
	secret := d.addUser(api.User{Email: "alice@example.com"})
	loggedIn(t, home, d.srv.URL, secret)
	out, err := runCLI(nil, "logout")
	want := "Logged out of " + d.srv.URL + ": token t_0123abce revoked.\nRemoved ~/.fcm-token and ~/.fcm-host.\n"
	if err != nil || out != want {
		t.Errorf("logout: %v\n%s\nwant:\n%s", err, out, want)
	}
	if r := d.requests(); r != "GET /v1/whoami Bearer "+secret+"\nDELETE /v1/tokens/current Bearer "+secret {
		t.Errorf("requests:\n%s", r)
	}
	assertNoFiles(t, home)
	t.Setenv("FCM_TOKEN", secret)
	t.Setenv("FCM_HOST", d.srv.URL)
	if _, err := runCLI(nil, "whoami"); err == nil || !strings.HasPrefix(err.Error(), "invalid token") {
		t.Errorf("the token works after logout: %v", err)
	}

	// Logging out again: nothing to revoke, nothing sent.
	t.Setenv("FCM_TOKEN", "")
	d.requests()
	if out, err := runCLI(nil, "logout"); err != nil || out != "Not logged in: no FCM_TOKEN and no ~/.fcm-token.\n" {
		t.Errorf("logout without a token: %v %q", err, out)
	}
	if r := d.requests(); r != "" {
		t.Errorf("sent %q", r)
	}
}

// The admin token is never revoked by logout: only the local copy goes.
func TestLogout_AdminTokenIsNotRevoked(t *testing.T) {
	home, _ := loginEnv(t)
	d := newUsersDaemon(t)
	loggedIn(t, home, d.srv.URL, adminSecret)
	out, err := runCLI(nil, "logout")
	if err != nil || !strings.Contains(out, "Removed ~/.fcm-token and ~/.fcm-host.") || !strings.Contains(out, "it still works") || !strings.Contains(out, "fcm token rotate") {
		t.Errorf("logout with the admin token: %v\n%s", err, out)
	}
	if r := d.requests(); r != "GET /v1/whoami Bearer "+adminSecret {
		t.Errorf("requests:\n%s", r)
	}
	assertNoFiles(t, home)

	// From FCM_TOKEN: nothing is revoked and nothing removed.
	t.Setenv("FCM_TOKEN", adminSecret)
	t.Setenv("FCM_HOST", d.srv.URL)
	out, err = runCLI(nil, "logout")
	if err != nil || !strings.Contains(out, "unset FCM_TOKEN") || strings.Contains(d.requests(), "DELETE") {
		t.Errorf("logout with the admin token in FCM_TOKEN: %v\n%s", err, out)
	}
}

// A token the daemon no longer accepts (401) is still removed locally; one
// from FCM_TOKEN is revoked and the person told to unset it.
func TestLogout_RevokedOrFromEnv(t *testing.T) {
	home, _ := loginEnv(t)
	d := newUsersDaemon(t)
	loggedIn(t, home, d.srv.URL, "fcm_revoked_long_ago")
	out, err := runCLI(nil, "logout")
	if err != nil || out != "The daemon at "+d.srv.URL+" no longer accepts this token (already revoked).\nRemoved ~/.fcm-token and ~/.fcm-host.\n" {
		t.Errorf("logout with a revoked token: %v\n%s", err, out)
	}
	assertNoFiles(t, home)

	other := d.addUser(api.User{Email: "bob@example.com"})
	loggedIn(t, home, d.srv.URL, other)
	secret := d.addUser(api.User{Email: "alice@example.com"})
	t.Setenv("FCM_TOKEN", secret)
	d.requests()
	out, err = runCLI(nil, "logout")
	if err != nil || !strings.Contains(out, "revoked") || !strings.Contains(out, "unset FCM_TOKEN") {
		t.Errorf("logout with FCM_TOKEN: %v\n%s", err, out)
	}
	if r := d.requests(); !strings.HasSuffix(r, "DELETE /v1/tokens/current Bearer "+secret) {
		t.Errorf("requests:\n%s", r)
	}
	if got := readFile0600(t, filepath.Join(home, ".fcm-token")); got != other+"\n" {
		t.Errorf("~/.fcm-token (another token) changed: %q", got)
	}
}

// token ls marks the token in use; token revoke ends one.
func TestToken_LsAndRevoke(t *testing.T) {
	home, _ := loginEnv(t)
	d := newUsersDaemon(t)
	first := d.addUser(api.User{Email: "alice@example.com"})
	second := d.addUser(api.User{Email: "alice@example.com"})
	d.addUser(api.User{Email: "bob@example.com"})
	loggedIn(t, home, d.srv.URL, second)
	out, err := runCLI(nil, "token", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 3 || strings.Fields(lines[0])[0] != "ID" ||
		!strings.HasPrefix(lines[1], "  t_0123abce  alice@example.com") || !strings.HasPrefix(lines[2], "* t_0123abcf  alice@example.com") ||
		!strings.HasSuffix(lines[1], "in 90d   never") || strings.Fields(lines[0])[3] != "EXPIRES" {
		t.Errorf("token ls: %v\n%s", err, out)
	}
	if out, err := runCLI(nil, "token", "revoke", "t_0123abce"); err != nil || out != "Revoked token t_0123abce\n" {
		t.Errorf("revoke: %v %q", err, out)
	}
	t.Setenv("FCM_TOKEN", first)
	if _, err := runCLI(nil, "whoami"); err == nil {
		t.Error("a revoked token still works")
	}
	t.Setenv("FCM_TOKEN", "")
	if _, err := runCLI(nil, "token", "revoke", "t_0123abd0"); err == nil || err.Error() != "no token t_0123abd0" {
		t.Errorf("revoking bob's token as alice: %v", err)
	}
	if _, err := runCLI(nil, "token", "revoke"); err == nil || !strings.Contains(err.Error(), "takes one token id") {
		t.Errorf("no id: %v", err)
	}
}

// users allow/deny change the allow-list; users ls shows users and rules.
func TestUsers_AllowDenyLs(t *testing.T) {
	loginEnv(t)
	d := newUsersDaemon(t)
	t.Setenv("FCM_HOST", d.srv.URL)
	t.Setenv("FCM_TOKEN", adminSecret)
	d.rules = []api.AccessRule{{Pattern: "@example.com", Allow: true, Source: "flag"}}
	d.addUser(api.User{Email: "alice@example.com", Name: "Alice Liddell"})
	d.addUser(api.User{Email: "bob@example.com"})
	d.vms = []api.VM{{Name: "a", Owner: "alice@example.com"}, {Name: "b", Owner: "alice@example.com"}}

	out, err := runCLI(nil, "users", "deny", "bob@example.com")
	if err != nil || !strings.HasPrefix(out, "Denied bob@example.com\nAllow-list:\n") {
		t.Errorf("deny: %v\n%s", err, out)
	}
	if r := d.requests(); r != "POST /v1/users/deny Bearer "+adminSecret {
		t.Errorf("requests %q", r)
	}
	out, err = runCLI(nil, "users", "ls")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	for i, want := range [][]string{
		{"EMAIL", "NAME", "ALLOWED", "VMS", "TOKENS", "LAST", "LOGIN"},
		{"alice@example.com", "Alice", "Liddell", "yes", "a,b", "1", "never"},
		{"bob@example.com", "-", "no", "-", "1", "never"},
		{},
		{"Allow-list:"},
		{"allow", "@example.com", "flag", "(--allow,", "fixed", "while", "the", "daemon", "runs)"},
		{"deny", "bob@example.com", "api"},
	} {
		if i >= len(lines) || strings.Join(strings.Fields(lines[i]), " ") != strings.Join(want, " ") {
			t.Errorf("users ls line %d: want %q\n%s", i, want, out)
		}
	}
	if _, err := runCLI(nil, "users", "allow", "nonsense"); err == nil || err.Error() != `allow nonsense: "nonsense" is not an email, @domain or *` {
		t.Errorf("a bad pattern: %v", err)
	}
	if _, err := runCLI(nil, "users", "allow"); err == nil || !strings.Contains(err.Error(), "an email, @domain, *") {
		t.Errorf("no pattern: %v", err)
	}
	t.Setenv("FCM_TOKEN", d.addUser(api.User{Email: "carol@example.com"}))
	if _, err := runCLI(nil, "users", "ls"); err == nil || err.Error() != "only the admin token may do this" {
		t.Errorf("users ls as a user: %v", err)
	}
}

// users rm asks what to do with the user's VMs on a terminal, fails naming
// --vms without one, and says what was done.
func TestUsers_Rm(t *testing.T) {
	loginEnv(t)
	d := newUsersDaemon(t)
	t.Setenv("FCM_HOST", d.srv.URL)
	t.Setenv("FCM_TOKEN", adminSecret)
	d.addUser(api.User{Email: "alice@example.com"})
	d.addUser(api.User{Email: "alice@example.com"})
	d.addUser(api.User{Email: "bob@example.com"})
	d.vms = []api.VM{{Name: "a", Owner: "alice@example.com"}, {Name: "b", Owner: "alice@example.com"}, {Name: "c", Owner: "bob@example.com"}}
	terminal := false
	old := isTerminal
	isTerminal = func(io.Reader) bool { return terminal }
	t.Cleanup(func() { isTerminal = old })

	_, err := runCLI(strings.NewReader("d\n"), "users", "rm", "alice@example.com")
	if err == nil || err.Error() != "alice@example.com owns 2 VMs (a, b): say what to do with them: fcm users rm alice@example.com --vms destroy|keep" {
		t.Errorf("no terminal, no --vms: %v", err)
	}
	terminal = true
	out, err := runCLI(strings.NewReader("\n"), "users", "rm", "u_1")
	if err != errNotRemoved || !strings.Contains(out, "alice@example.com owns 2 VMs (a, b): destroy them, keep them (the admin will own them), or cancel? [d/k/C]") {
		t.Errorf("cancelled: %v\n%s", err, out)
	}
	out, err = runCLI(strings.NewReader("d\n"), "users", "rm", "alice@example.com")
	if err != nil || !strings.HasSuffix(out, "Removed alice@example.com: 2 tokens revoked, VMs destroyed: a, b\n") {
		t.Errorf("destroy: %v\n%s", err, out)
	}
	if len(d.vms) != 1 || len(d.users) != 1 {
		t.Errorf("left %v, %d users", d.vms, len(d.users))
	}
	terminal = false
	out, err = runCLI(nil, "users", "rm", "bob@example.com", "--vms", "keep")
	if err != nil || out != "Removed bob@example.com: 1 token revoked, VMs kept (now the admin's): c\n" {
		t.Errorf("keep: %v\n%s", err, out)
	}
	if d.vms[0].Owner != "admin" {
		t.Errorf("kept VM: %+v", d.vms[0])
	}
	if _, err := runCLI(nil, "users", "rm", "x", "--vms", "maybe"); err == nil || !strings.Contains(err.Error(), "want destroy or keep") {
		t.Errorf("--vms maybe: %v", err)
	}
}

// ls shows an OWNER column only when the daemon tells owners (to the admin).
func TestLs_OwnerColumn(t *testing.T) {
	loginEnv(t)
	d := newUsersDaemon(t)
	t.Setenv("FCM_HOST", d.srv.URL)
	alice := d.addUser(api.User{Email: "alice@example.com"})
	d.vms = []api.VM{{Name: "web", State: api.StateRunning, Owner: "alice@example.com"}, {Name: "db", State: api.StateRunning, Owner: "admin"}}
	t.Setenv("FCM_TOKEN", adminSecret)
	out, err := runCLI(nil, "ls")
	lines := strings.Split(out, "\n")
	if err != nil || !strings.HasPrefix(lines[0], "NAME  OWNER              STATE") ||
		!strings.HasPrefix(lines[1], "web   alice@example.com  running") || !strings.HasPrefix(lines[2], "db    admin              running") {
		t.Errorf("ls as the admin: %v\n%s", err, out)
	}
	t.Setenv("FCM_TOKEN", alice)
	out, err = runCLI(nil, "ls")
	lines = strings.Split(out, "\n")
	if err != nil || len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME  STATE") || !strings.HasPrefix(lines[1], "web   running") {
		t.Errorf("ls as alice: %v\n%s", err, out)
	}
}

// A create over the user's quota prints the daemon's message as it is.
func TestCreate_QuotaExceeded(t *testing.T) {
	loginEnv(t)
	d := newUsersDaemon(t)
	t.Setenv("FCM_HOST", d.srv.URL)
	t.Setenv("FCM_TOKEN", d.addUser(api.User{Email: "alice@example.com"}))
	d.vms = []api.VM{{Name: "web", Owner: "alice@example.com"}}
	d.quota = 1
	t.Chdir(t.TempDir())
	if _, err := runCLI(nil, "create", "--no-git"); err == nil || err.Error() != "you have 1 VMs, the most this daemon allows a user (--max-vms-per-user): destroy one first" {
		t.Errorf("create over quota: %v", err)
	}
}

// The users commands' help explains how the allow-list decides.
func TestUsers_HelpExplainsTheRules(t *testing.T) {
	for _, args := range [][]string{{"users", "--help"}, {"users", "allow", "--help"}, {"users", "deny", "--help"}, {"users", "ls", "--help"}} {
		out, err := runCLI(nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		flat := strings.Join(strings.Fields(out), " ")
		for _, want := range []string{"An email rule beats a domain rule, which beats *", "at the same rank deny beats allow",
			"An empty list lets nobody in", "--allow are fixed while it runs"} {
			if !strings.Contains(flat, want) {
				t.Errorf("fcm %s: no %q in\n%s", strings.Join(args, " "), want, out)
			}
		}
	}
}

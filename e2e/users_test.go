package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
	"github.com/fcmhost/fcm/internal/client"
)

// usersGitListen is where the daemon of TestUsers serves git over SSH.
const usersGitListen = "127.0.0.1:12223"

// person is someone with a HOME of their own, using the fcm CLI there.
type person struct {
	t    *testing.T
	name string
	home string
}

func newPerson(t *testing.T, name string) *person {
	return &person{t: t, name: name, home: t.TempDir()}
}

// fcm runs the CLI as this person: no FCM_HOST or FCM_TOKEN, only what
// fcm login saved in their HOME.
func (p *person) fcm(args ...string) (string, int) {
	p.t.Helper()
	cmd := exec.Command(os.Getenv("FCM_BIN"), args...)
	cmd.Dir = p.home
	cmd.Env = append(withoutFCMEnv(), "HOME="+p.home)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		p.t.Fatal(err)
	}
	return string(out), 0
}

func (p *person) must(args ...string) string {
	p.t.Helper()
	out, code := p.fcm(args...)
	if code != 0 {
		p.t.Fatalf("%s: fcm %v: exit %d:\n%s", p.name, args, code, out)
	}
	return out
}

func withoutFCMEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FCM_HOST=") && !strings.HasPrefix(kv, "FCM_TOKEN=") {
			env = append(env, kv)
		}
	}
	return env
}

// token is what fcm login saved for this person.
func (p *person) token() string {
	p.t.Helper()
	data, err := os.ReadFile(filepath.Join(p.home, ".fcm-token"))
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

var loginPrompt = regexp.MustCompile(`open this URL in a browser on this computer:\n  (\S+)\n`)

// login runs `fcm login` as this person and does in the browser what they
// would: open the URL it printed, sign in at the provider as u, and confirm
// on the page that names this machine; the browser then hands the login to
// the CLI on its loopback port. It returns the CLI's output and exit status,
// and the last page the browser showed.
func (p *person) login(b *browsertest.Browser, u oidctest.User) (string, int, browsertest.Page) {
	p.t.Helper()
	cmd := exec.Command(os.Getenv("FCM_BIN"), "login", "--host", "http://"+daemonListen)
	cmd.Dir = p.home
	// No display: the CLI opens no browser of its own; the test's Chromium is the person's.
	cmd.Env = append(withoutFCMEnv(), "HOME="+p.home, "DISPLAY=", "WAYLAND_DISPLAY=")
	buf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var m []string
	for deadline := time.Now().Add(20 * time.Second); m == nil; time.Sleep(50 * time.Millisecond) {
		if m = loginPrompt.FindStringSubmatch(buf.String()); m == nil && time.Now().After(deadline) {
			p.t.Fatalf("fcm login printed no URL:\n%s", buf.String())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	page, err := b.Login(ctx, m[1], u.Username, u.Password)
	if err != nil {
		p.t.Fatalf("%s signing in: %v (page %+v)", p.name, err, page)
	}
	if page.Host != "" {
		if host, _ := os.Hostname(); page.Host != host {
			p.t.Fatalf("the confirm page names %q, this machine is %q", page.Host, host)
		}
		if page, err = b.Confirm(ctx); err != nil {
			p.t.Fatalf("%s confirming: %v", p.name, err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return buf.String(), code, page
	case <-time.After(30 * time.Second):
		p.t.Fatalf("fcm login did not finish after the browser was done:\n%s", buf.String())
	}
	return "", 0, page
}

// oidcFlags starts the test OpenID provider for the daemon at daemonListen
// and returns the daemon's flags for it (the client secret goes through the
// environment, as the README's systemd setup gives it); @example.com may log in.
func oidcFlags(t *testing.T) []string {
	t.Helper()
	op, err := oidctest.Start(oidctest.Options{ClientID: "fcm-e2e", ClientSecret: "fcm-e2e-secret",
		RedirectURIs: []string{"http://" + daemonListen + "/oauth2/callback"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(op.Close)
	t.Setenv("GOOGLE_CLIENT_SECRET", "fcm-e2e-secret")
	return []string{"--oidc-issuer", op.Issuer(), "--oidc-client-id", "fcm-e2e", "--allow", "@example.com"}
}

// TestUsers: people log in with OIDC (a real provider, a real browser, the
// real CLI) and see and touch only their own VMs; the admin sees all with
// owners; logout and users rm revoke at once.
func TestUsers(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonHV(t, "qemu", dataDir, append(oidcFlags(t), "--max-vms-per-user", "1", "--git-listen", usersGitListen)...)
	b := browsertest.New(t)
	admin := &client.Client{Host: "http://" + daemonListen, Token: d.token()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	alice, bob, carol := newPerson(t, "alice"), newPerson(t, "bob"), newPerson(t, "carol")
	for _, x := range []struct {
		p *person
		u oidctest.User
	}{{alice, oidctest.Alice}, {bob, oidctest.Bob}} {
		out, code, _ := x.p.login(b, x.u)
		if code != 0 || !strings.Contains(out, "Logged in to http://"+daemonListen+" as "+x.u.Email) {
			t.Fatalf("fcm login as %s: exit %d:\n%s\ndaemon log:\n%s", x.p.name, code, out, tail(d.log(), 3000))
		}
		for _, f := range []string{".fcm-token", ".fcm-host"} {
			if fi, err := os.Stat(filepath.Join(x.p.home, f)); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s's ~/%s after login: %v %v", x.p.name, f, fi, err)
			}
		}
	}
	if out := alice.must("whoami"); !strings.Contains(out, "alice@example.com (Alice Liddell)") || !strings.Contains(out, "role:  user") ||
		!strings.Contains(out, "host:  http://"+daemonListen) {
		t.Errorf("alice's fcm whoami:\n%s", out)
	}

	// carol is not allowed: the page and the CLI say so, and nothing is made.
	out, code, page := carol.login(b, oidctest.Carol)
	if code == 0 || !strings.Contains(out, "carol@other.org may not log in") || !strings.Contains(page.Error, "carol@other.org may not log in") {
		t.Errorf("carol's login: exit %d:\n%s\npage: %+v", code, out, page)
	}
	if _, err := os.Stat(filepath.Join(carol.home, ".fcm-token")); err == nil {
		t.Errorf("carol got a token file")
	}
	if users, err := admin.ListUsers(ctx); err != nil || len(users.Users) != 2 {
		t.Errorf("users after carol was refused: %+v, %v", users, err)
	}

	// Each makes a VM; a second is over the quota.
	alice.must("create", "--name", "alice-app")
	if out, code := bob.fcm("create", "--name", "alice-app"); code == 0 || !strings.Contains(out, "alice-app") || strings.Contains(out, "alice@") {
		t.Errorf("bob takes alice's name: exit %d:\n%s", code, out)
	}
	bob.must("create", "--name", "bob-app")
	if out, code := alice.fcm("create", "--name", "alice-two"); code == 0 || !strings.Contains(out, "you have 1 VMs, the most this host allows per user") {
		t.Errorf("alice's second VM (quota 1): exit %d:\n%s", code, out)
	}
	aliceAPI := &client.Client{Host: "http://" + daemonListen, Token: alice.token()}
	if _, err := aliceAPI.CreateSession(ctx, "alice-app", "brook"); err != nil {
		t.Fatal(err)
	}

	// bob sees nothing of alice's and can touch none of it.
	if out := bob.must("ls"); strings.Contains(out, "alice-app") || !strings.Contains(out, "bob-app") || strings.Contains(out, "OWNER") {
		t.Errorf("bob's fcm ls:\n%s", out)
	}
	// Nor her checkpoints: listing, taking, removing, restoring or forking
	// them is a 404, as for a VM that does not exist.
	alice.must("checkpoint", "create", "alice-app", "-m", "alice's")
	for _, args := range [][]string{{"logs", "alice-app"}, {"stop", "alice-app"}, {"destroy", "alice-app"}, {"config", "alice-app"}, {"console", "ls", "alice-app"},
		{"checkpoint", "ls", "alice-app"}, {"checkpoint", "create", "alice-app"}, {"checkpoint", "rm", "alice-app", "v1"},
		{"restore", "alice-app", "v1", "--yes"}, {"fork", "alice-app", "--from", "v1"}, {"fork", "alice-app"}} {
		if out, code := bob.fcm(args...); code == 0 || !strings.Contains(out, `no vm named "alice-app"`) {
			t.Errorf("bob: fcm %v: exit %d:\n%s", args, code, out)
		}
	}
	bobAPI := &client.Client{Host: "http://" + daemonListen, Token: bob.token()}
	var apiErr *api.Error
	if _, err := bobAPI.Checkpoints(ctx, "alice-app"); !errors.As(err, &apiErr) || apiErr.Code != api.CodeNotFound {
		t.Errorf("bob listing alice's checkpoints through the API: %v", err)
	}
	if out := alice.must("checkpoint", "ls", "alice-app"); !strings.Contains(out, "alice's") {
		t.Errorf("alice's checkpoints after bob's tries:\n%s", out)
	}
	// The audit trail: alice's logins and changes are hers to read, with who
	// and the result; bob's refused tries on her VM never reached it and are
	// nowhere; bob reads none of hers; the admin reads all.
	var evs []api.AuditEvent
	for _, line := range strings.Split(strings.TrimSpace(alice.must("events", "--json")), "\n") {
		var e api.AuditEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("fcm events --json: %v: %q", err, line)
		}
		evs = append(evs, e)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if e.Who != "alice@example.com" {
			t.Errorf("alice reads an event of %s: %+v", e.Who, e)
		}
		seen[e.Action+" "+e.Result] = true
	}
	for _, want := range []string{"login ok", "create ok", "checkpoint ok"} {
		if !seen[want] {
			t.Errorf("alice's events lack %q: %+v", want, evs)
		}
	}
	if out := bob.must("events"); strings.Contains(out, "alice@example.com") || !strings.Contains(out, "bob-app") {
		t.Errorf("bob reads alice's events:\n%s", out)
	}
	if out, _ := d.cli(t.TempDir(), "events", "alice-app"); !strings.Contains(out, "alice@example.com") || !strings.Contains(out, "checkpoint (v1)") {
		t.Errorf("the admin's fcm events alice-app:\n%s", out)
	}
	// --follow prints a new event within a second of the change.
	follow := exec.Command(os.Getenv("FCM_BIN"), "events", "--follow")
	follow.Env = append(os.Environ(), "FCM_HOST=http://"+daemonListen, "FCM_TOKEN="+d.token())
	var followed syncBuffer
	follow.Stdout, follow.Stderr = &followed, &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer follow.Process.Kill()
	time.Sleep(time.Second)
	alice.must("checkpoint", "create", "alice-app")
	done := time.Now()
	for !strings.Contains(followed.String(), "checkpoint (v2)") && time.Since(done) < time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(followed.String(), "checkpoint (v2)") {
		t.Errorf("fcm events --follow printed no new event within a second:\n%s", followed.String())
	}
	ws, resp, err := websocket.Dial(ctx, "ws://"+daemonListen+"/v1/vms/alice-app/sessions/brook/attach",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + bob.token()}}})
	if err == nil {
		ws.CloseNow()
		t.Errorf("bob attached to alice's console session")
	} else if resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("bob attaching to alice's session: %v (%v)", err, resp)
	}
	work := t.TempDir()
	d.mustGit(work, "init", "-q", "-b", "main")
	d.commit(work, "bob's", map[string]string{"Procfile": "web: true\n"})
	out, code = d.gitWith(work, nil, "push", "http://bob:"+bob.token()+"@"+daemonListen+"/git/alice-app.git", "main")
	if code == 0 || !strings.Contains(out, `no app named "alice-app"`) {
		t.Errorf("bob's git push over HTTPS to alice's app: exit %d:\n%s", code, out)
	}
	keys := t.TempDir()
	key, _ := sshKey(t, keys, "bob")
	bob.must("keys", "add", filepath.Join(keys, "bob.pub"))
	out, code = d.gitWith(work, []string{"GIT_SSH_COMMAND=ssh -i " + key + " -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p 12223"},
		"push", "ssh://git@"+usersGitListen+"/alice-app.git", "main")
	if code == 0 || !strings.Contains(out, `no app named "alice-app"`) {
		t.Errorf("bob's git push over SSH to alice's app: exit %d:\n%s", code, out)
	}
	var bobKeys []api.Key
	if err := json.Unmarshal([]byte(bob.must("keys", "ls", "--json")), &bobKeys); err != nil || len(bobKeys) != 1 {
		t.Fatalf("bob's keys: %v %+v", err, bobKeys)
	}
	bob.must("keys", "rm", bobKeys[0].Fingerprint)
	d.mustCLI(work, "users", "allow", "@new.example")
	d.mustCLI(work, "users", "deny", "@new.example")

	// The admin sees both, with their owners.
	out = d.mustCLI(work, "ls")
	if !regexp.MustCompile(`(?m)^alice-app\s.*alice@example\.com`).MatchString(out) || !regexp.MustCompile(`(?m)^bob-app\s.*bob@example\.com`).MatchString(out) ||
		!strings.Contains(out, "OWNER") {
		t.Errorf("admin's fcm ls:\n%s", out)
	}

	// bob logs out: that token is refused at once.
	bobToken := bob.token()
	if out := bob.must("logout"); !strings.Contains(out, "revoked") {
		t.Errorf("bob's fcm logout:\n%s", out)
	}
	if _, err := (&client.Client{Host: "http://" + daemonListen, Token: bobToken}).ListVMs(ctx); err == nil || !strings.Contains(err.Error(), "invalid token") {
		t.Errorf("bob's token after logout: %v", err)
	}

	// The admin revokes alice's login; she is removed, her VM kept for the
	// admin: her token is refused at once.
	toks, err := admin.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	aliceToken := ""
	for _, tk := range toks {
		if tk.User == "alice@example.com" {
			aliceToken = tk.ID
		}
	}
	d.mustCLI(work, "token", "revoke", aliceToken)
	out = d.mustCLI(work, "users", "rm", "alice@example.com", "--vms", "keep")
	if !strings.Contains(out, "alice@example.com") {
		t.Errorf("fcm users rm:\n%s", out)
	}
	if _, err := aliceAPI.ListVMs(ctx); err == nil || !strings.Contains(err.Error(), "invalid token") {
		t.Errorf("alice's token after users rm: %v", err)
	}
	if vms, err := admin.ListVMs(ctx); err != nil || len(vms) != 2 || owner(vms, "alice-app") != "admin" {
		t.Errorf("VMs after alice was removed (kept): %+v, %v", vms, err)
	}
	d.mustCLI(work, "destroy", "alice-app")
	if out, code := d.cli(work, "users", "rm", "bob@example.com"); code == 0 || !strings.Contains(out, "--vms") {
		t.Errorf("users rm of bob, who owns a VM, without --vms and no terminal: exit %d:\n%s", code, out)
	}
	d.mustCLI(work, "users", "rm", "bob@example.com", "--vms", "destroy")
	if vms, err := admin.ListVMs(ctx); err != nil || len(vms) != 0 {
		t.Errorf("VMs after bob was removed (destroyed): %+v, %v", vms, err)
	}

	// Each change above is in the trail once, with who made it and how it
	// went, refusals included (the other kinds: where tests make them).
	wantEventsOnce(t, d.auditEvents(t),
		"login by alice@example.com: ok", "login by bob@example.com: ok",
		"login by carol@other.org: carol@other.org may not log in to this fcm host: ask its admin to run 'fcm users allow carol@other.org'",
		"create by alice@example.com on alice-app: ok",
		`create by bob@example.com: vm "alice-app": already exists`,
		"create by alice@example.com: you have 1 VMs, the most this host allows per user (1, fcm daemon --max-vms-per-user): destroy one first (fcm destroy <vm>), or ask this host's admin",
		"create by bob@example.com on bob-app: ok",
		"checkpoint by alice@example.com on alice-app (v1): ok",
		"key add by bob@example.com ("+bobKeys[0].Fingerprint+"): ok", "key rm by bob@example.com ("+bobKeys[0].Fingerprint+"): ok",
		"users allow by admin (@new.example): ok", "users deny by admin (@new.example): ok",
		"logout by bob@example.com: ok", "token revoke by admin ("+aliceToken+"): ok",
		"users rm by admin (alice@example.com): ok", "destroy by admin on alice-app: ok",
		"users rm by admin (bob@example.com): HTTP 409", "users rm by admin (bob@example.com): ok")
}

func owner(vms []api.VM, name string) string {
	for _, v := range vms {
		if v.Name == name {
			return v.Owner
		}
	}
	return ""
}

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth/browsertest"
	"github.com/fcmhost/fcm/internal/auth/oidctest"
	"github.com/fcmhost/fcm/internal/client"
)

// exitOf waits (at most a minute) for cmd and returns its exit status.
func exitOf(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		return 0
	case <-time.After(time.Minute):
		t.Fatalf("%v still runs after a minute", cmd.Args)
	}
	return -1
}

// TestTenants_NameChangesHands: what alice queued on her VM (a push waiting
// behind her own blocked deploy, a config change) never lands in bob's VM that
// takes the name after hers is destroyed: the waiters are refused, bob's app
// starts empty (no repository content, releases, config vars or files of
// alice's), and bob's own first deploy is v1.
func TestTenants_NameChangesHands(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	// Names free at once (--name-hold 0): the name changing hands is the case.
	d := startDaemonHV(t, "qemu", dataDir, append(oidcFlags(t), "--name-hold", "0")...)
	b := browsertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	alice, bob := newPerson(t, "alice"), newPerson(t, "bob")
	for _, x := range []struct {
		p *person
		u oidctest.User
	}{{alice, oidctest.Alice}, {bob, oidctest.Bob}} {
		if out, code, _ := x.p.login(b, x.u); code != 0 {
			t.Fatalf("fcm login as %s: exit %d:\n%s", x.p.name, code, out)
		}
	}
	const name = "handover"
	alice.must("create", "--name", name)
	remoteOf := func(p *person) string {
		return "http://" + p.name + ":" + p.token() + "@" + daemonListen + "/git/" + name + ".git"
	}

	// Push 1: its release command holds the app's lock.
	first := t.TempDir()
	d.mustGit(first, "init", "-q", "-b", "main")
	d.commit(first, "alice 1", map[string]string{"Procfile": "web: python3 -m http.server 3000\nrelease: echo alice-release-waits; sleep 600\n",
		"alice.txt": "alice's\n"})
	gitAs := append(append(withoutFCMEnv(), gitEnv...), "HOME="+first)
	push1, _ := startPush(t, first, gitAs, remoteOf(alice), "alice-release-waits")
	t.Cleanup(func() { syscall.Kill(-push1.Process.Pid, syscall.SIGKILL) })
	// Push 2 and a config change wait behind it.
	second := t.TempDir()
	d.mustGit(second, "init", "-q", "-b", "main")
	d.commit(second, "alice 2", map[string]string{"Procfile": "web: python3 -m http.server 3000\n", "alice2.txt": "alice's too\n"})
	push2, out2 := startPush(t, second, gitAs, remoteOf(alice), "-----> Waiting: a deploy of")
	t.Cleanup(func() { syscall.Kill(-push2.Process.Pid, syscall.SIGKILL) })
	aliceAPI := &client.Client{Host: "http://" + daemonListen, Token: alice.token()}
	cfgDone := make(chan error, 1)
	go func() {
		_, err := aliceAPI.ChangeConfig(ctx, name, api.ConfigChange{Set: map[string]string{"ALICE_SECRET": "alice-only"}})
		cfgDone <- err
	}()
	time.Sleep(time.Second) // the change reaches the lock

	alice.must("destroy", name, "--yes")
	bob.must("create", "--name", name)

	if code := exitOf(t, push2); code == 0 || !strings.Contains(out2.String(), `no app named "`+name+`"`) {
		t.Errorf("alice's waiting push: exit %d:\n%s", code, out2.String())
	}
	if code := exitOf(t, push1); code == 0 {
		t.Errorf("alice's first push succeeded though her VM was destroyed")
	}
	select {
	case err := <-cfgDone:
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("alice's queued config change: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("alice's config change still waits")
	}

	// bob's app is his alone, and empty.
	bobAPI := &client.Client{Host: "http://" + daemonListen, Token: bob.token()}
	if rels, err := bobAPI.Releases(ctx, name); err != nil || len(rels) != 0 {
		t.Errorf("bob's releases: %+v %v", rels, err)
	}
	if cfg, err := bobAPI.Config(ctx, name); err != nil || len(cfg) != 0 {
		t.Errorf("bob's config vars: %v %v", cfg, err)
	}
	if out := d.mustGit(first, "ls-remote", remoteOf(bob)); strings.TrimSpace(out) != "" {
		t.Errorf("bob's repository has refs: %q", out)
	}
	if out, code := bob.fcm("run", "-a", name, "--", "true"); code == 0 || !strings.Contains(out, "no release yet") {
		t.Errorf("fcm run in bob's new VM: exit %d: %s", code, out)
	}
	mine := t.TempDir()
	d.mustGit(mine, "init", "-q", "-b", "main")
	d.commit(mine, "bob 1", map[string]string{"Procfile": "web: python3 -m http.server 3000\n", "bob.txt": "bob's\n"})
	out, code := d.gitWith(mine, nil, "push", remoteOf(bob), "main")
	if code != 0 || !strings.Contains(out, "Deploy successful! v1 is live") {
		t.Fatalf("bob's first push: exit %d:\n%s", code, out)
	}
	out = bob.must("run", "-a", name, "--", "sh", "-c", "find / -xdev -name 'alice*.txt' 2>/dev/null; echo secret=$ALICE_SECRET; ls /srv/app/builds")
	if strings.Contains(out, "alice") || !regexp.MustCompile(`(?m)^secret=\n1\s*$`).MatchString(out) {
		t.Errorf("bob's VM after his first deploy:\n%s", out)
	}
	// Nothing of alice's app is left on the host either.
	if entries, _ := os.ReadDir(filepath.Join(dataDir, "apps")); len(entries) != 1 {
		t.Errorf("apps on the host: %v (want bob's alone)", entries)
	}
}

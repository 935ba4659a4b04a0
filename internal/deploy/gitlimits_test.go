package deploy

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/store"
)

// gitClient is alice's git against an sshFixture, over HTTP and SSH, in a
// work tree of its own.
type gitClient struct {
	t    *testing.T
	f    *sshFixture
	env  []string
	work string
	http string // alice's HTTP remote of app
	ssh  string // her SSH remote of app
}

// newLimitsFixture is an sshFixture whose service also serves git over HTTP
// and the hook's callback (/internal/push) on loopback, adjusted by adjust;
// and alice's git with one commit in her work tree.
func newLimitsFixture(t *testing.T, adjust func(*Service)) *gitClient {
	t.Helper()
	var svc atomic.Pointer[Service]
	mux := http.NewServeMux()
	mux.Handle("/git/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { svc.Load().GitHandler().ServeHTTP(w, r) }))
	mux.Handle("/internal/push", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { svc.Load().PushHandler().ServeHTTP(w, r) }))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f := newSSHFixtureWith(t, func(s *Service) {
		s.DaemonURL = srv.URL
		if adjust != nil {
			adjust(s)
		}
	})
	svc.Store(f.svc)
	secret := store.NewSecret()
	f.svc.Store.Update(func(tx *store.Tx) error { return tx.PutToken(secret, &store.Token{ID: "alice", Name: "alice"}) })
	_, port, _ := net.SplitHostPort(f.addr)
	c := &gitClient{t: t, f: f, work: t.TempDir(),
		http: strings.Replace(srv.URL, "http://", "http://fcm:"+secret+"@", 1) + "/git/app.git",
		ssh:  "ssh://git@127.0.0.1:" + port + "/app.git"}
	c.env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0", "GIT_AUTHOR_NAME=Ada",
		"GIT_AUTHOR_EMAIL=ada@example.com", "GIT_COMMITTER_NAME=Ada", "GIT_COMMITTER_EMAIL=ada@example.com",
		"GIT_SSH_COMMAND=ssh -F /dev/null -i "+f.aliceFile+" -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p "+port)
	c.must(c.work, "init", "-q", "-b", "main")
	c.commit(c.work, "index.html", []byte("hello\n"))
	return c
}

func (c *gitClient) cmd(dir string, args ...string) *exec.Cmd {
	cmd := exec.Command("git", args...)
	cmd.Dir, cmd.Env = dir, append(c.env, "HOME="+dir)
	return cmd
}

func (c *gitClient) run(dir string, args ...string) (string, error) {
	out, err := c.cmd(dir, args...).CombinedOutput()
	return string(out), err
}

func (c *gitClient) must(dir string, args ...string) string {
	c.t.Helper()
	out, err := c.run(dir, args...)
	if err != nil {
		c.t.Fatalf("git %v: %v:\n%s", args, err, out)
	}
	return out
}

func (c *gitClient) commit(dir, name string, content []byte) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.must(dir, "add", name)
	c.must(dir, "commit", "-q", "-m", name)
}

// setHook makes the pre-receive hook run script (sh) from now on.
func (c *gitClient) setHook(script string) {
	c.t.Helper()
	// The copy the hook runs (Prepare installed it from HookBin).
	if err := os.WriteFile(c.f.svc.hookBin(), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		c.t.Fatal(err)
	}
}

// safeBuffer is a buffer a process writes while a test reads it.
type safeBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// random is n bytes no compression shrinks.
func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// files lists what is under dir, relative to it.
func files(t *testing.T, dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// TestGitPush_SizeLimit: a pack over --max-push-size is refused with git's
// message, over HTTP and SSH, and nothing of it is kept.
func TestGitPush_SizeLimit(t *testing.T) {
	c := newLimitsFixture(t, func(s *Service) { s.Git.MaxPushBytes = 4 << 20 })
	c.must(c.work, "push", c.http, "main")
	objects := filepath.Join(c.f.svc.RepoPath("aaaa1111"), "objects")
	before := strings.Join(files(t, objects), "\n")
	c.commit(c.work, "big.bin", random(t, 8<<20))
	for _, remote := range []string{c.http, c.ssh} {
		out, err := c.run(c.work, "push", remote, "main")
		t.Logf("push over %s:\n%s", remote[:4], out)
		if err == nil || !strings.Contains(out, "remote: fatal: pack exceeds maximum allowed size") || !strings.Contains(out, "[remote rejected] main -> main") {
			t.Errorf("push of 8 MiB over %s with a 4 MiB limit: %v:\n%s", remote[:4], err, out)
		}
		if after := strings.Join(files(t, objects), "\n"); after != before {
			t.Errorf("after the refused push over %s, objects/ holds:\n%s\nwant what it held before:\n%s", remote[:4], after, before)
		}
	}
	// Under the limit it goes.
	c.f.svc.Git.MaxPushBytes = 16 << 20
	if out := c.must(c.work, "push", c.ssh, "main"); !strings.Contains(out, "main -> main") {
		t.Errorf("push under the limit:\n%s", out)
	}
}

// TestGitPush_Concurrency: a user has at most MaxPushesPerUser receive-packs
// at once, the host MaxPushes; an app receives one pack at a time, the next
// waiting until the first's hook has called back.
func TestGitPush_Concurrency(t *testing.T) {
	c := newLimitsFixture(t, func(s *Service) { s.Git.MaxPushesPerUser = 1 })
	gate := filepath.Join(c.f.dir, "gate")
	// The hook waits for the gate file: its push stays in progress.
	c.setHook("cat >/dev/null\necho hook waits\nwhile [ ! -e '" + gate + "' ]; do sleep 0.05; done\necho hook done\n")
	start := func(remote string) (*exec.Cmd, *safeBuffer) {
		out := &safeBuffer{}
		cmd := c.cmd(c.work, "push", remote, "main")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, out
	}
	waitFor := func(want string, outs ...*safeBuffer) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			n := 0
			for _, o := range outs {
				if strings.Contains(o.String(), want) {
					n++
				}
			}
			if n == len(outs) {
				return
			}
			if time.Now().After(deadline) {
				for _, o := range outs {
					t.Log(o.String())
				}
				t.Fatalf("the pushes never printed %q", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	first, firstOut := start(c.http)
	waitFor("hook waits", firstOut)
	for _, remote := range []string{c.http, c.ssh} {
		out, err := c.run(c.work, "push", remote, "main")
		t.Logf("push over %s:\n%s", remote[:4], out)
		if err == nil || !strings.Contains(out, "fcm: 1 pushes to your apps are in progress, the most at once (fcm daemon --max-pushes-per-user 1)") {
			t.Errorf("a second push over %s while one is in progress: %v:\n%s", remote[:4], err, out)
		}
	}
	t.Run("the host's cap", func(t *testing.T) {
		c.f.svc.Git.MaxPushesPerUser, c.f.svc.Git.MaxPushes = 0, 1
		defer func() { c.f.svc.Git.MaxPushesPerUser, c.f.svc.Git.MaxPushes = 0, 0 }()
		out, err := c.run(c.work, "push", c.ssh, "main")
		if err == nil || !strings.Contains(out, "fcm: the host is receiving 1 pushes, the most it takes at once") {
			t.Errorf("a push over the host's cap: %v:\n%s", err, out)
		}
	})
	t.Run("one pack at a time per app", func(t *testing.T) {
		// The first push's hook never called back: its pack counts as being
		// received, and a second push of the app waits.
		c.commit(c.work, "one.txt", []byte("1\n"))
		second, secondOut := start(c.ssh)
		done := make(chan error, 1)
		go func() { done <- second.Wait() }()
		select {
		case err := <-done:
			t.Fatalf("the second push did not wait: %v:\n%s", err, secondOut.String())
		case <-time.After(1500 * time.Millisecond):
		}
		os.WriteFile(gate, nil, 0o644)
		if err := first.Wait(); err != nil {
			t.Errorf("the first push: %v:\n%s", err, firstOut.String())
		}
		if err := <-done; err != nil || !strings.Contains(secondOut.String(), "hook done") {
			t.Errorf("the second push, once the first was done: %v:\n%s", err, secondOut.String())
		}
	})
	t.Run("a hook's call frees the app for the next push", func(t *testing.T) {
		os.Remove(gate)
		c.f.svc.Git.MaxPushesPerUser = 2
		// The hook calls back (with a ref the daemon refuses: nothing is
		// deployed), then waits for the gate. Its token is good once.
		c.setHook("cat >/dev/null\n" +
			`call() { curl -s -o /dev/null -w '%{http_code}\n' -X POST -H "Authorization: Bearer $FCM_PUSH_TOKEN" -H "Fcm-Ref: refs/heads/x" "$FCM_DAEMON_URL/internal/push"; }` +
			"\necho first call $(call)\necho second call $(call)\nwhile [ ! -e '" + gate + "' ]; do sleep 0.05; done\necho hook done\n")
		c.commit(c.work, "two.txt", []byte("2\n"))
		first, firstOut := start(c.http)
		c.commit(c.work, "three.txt", []byte("3\n"))
		second, secondOut := start(c.ssh)
		waitFor("second call", firstOut, secondOut)
		os.WriteFile(gate, nil, 0o644)
		first.Wait()
		second.Wait()
		for _, out := range []string{firstOut.String(), secondOut.String()} {
			if !strings.Contains(out, "first call 400") || !strings.Contains(out, "second call 403") {
				t.Errorf("the hook's calls: want 400 (bad ref) then 403 (the token was used):\n%s", out)
			}
		}
	})
}

// TestGitPush_Quota: a push is refused once the owner's repositories use
// their quota, and may send no more than what is left of it.
func TestGitPush_Quota(t *testing.T) {
	c := newLimitsFixture(t, nil)
	c.must(c.work, "push", c.ssh, "main")
	used := diskUsage(c.f.svc.RepoPath("aaaa1111"))
	if used <= 0 {
		t.Fatalf("the repository uses %d bytes", used)
	}
	c.f.svc.Git.MaxRepoBytesPerUser = used + 1<<20
	c.commit(c.work, "big.bin", random(t, 3<<20))
	out, err := c.run(c.work, "push", c.ssh, "main")
	if err == nil || !strings.Contains(out, "pack exceeds maximum allowed size") {
		t.Errorf("a 3 MiB push with 1 MiB of quota left: %v:\n%s", err, out)
	}
	c.f.svc.Git.MaxRepoBytesPerUser = used
	for _, remote := range []string{c.http, c.ssh} {
		out, err := c.run(c.work, "push", remote, "main")
		if err == nil || !strings.Contains(out, "fcm: your apps' repositories use") || !strings.Contains(out, "--max-repo-size-per-user") {
			t.Errorf("a push over %s with the quota used: %v:\n%s", remote[:4], err, out)
		}
	}
	if got := diskUsage(c.f.svc.RepoPath("aaaa1111")); got != used {
		t.Errorf("the refused pushes changed the repository's size from %d to %d", used, got)
	}
}

func TestCheckPushUpdate(t *testing.T) {
	a, b, z := strings.Repeat("a", 40), strings.Repeat("b", 40), zeroRev
	a64 := strings.Repeat("c", 64)
	for _, tc := range []struct {
		old, new, ref, fail string
	}{
		{z, a, "refs/heads/main", ""},
		{a, b, "refs/heads/master", ""},
		{strings.Repeat("0", 64), a64, "refs/heads/main", ""},
		{z, a, "refs/heads/feature", "bad ref"},
		{z, a, "refs/tags/v1", "bad ref"},
		{z, a, "main", "bad ref"},
		{z, a, "refs/heads/main\n", "bad ref"},
		{z, a, "", "bad ref"},
		{z, z, "refs/heads/main", "bad commit id"},
		{z, "HEAD", "refs/heads/main", "bad commit id"},
		{z, "--upload-pack=x", "refs/heads/main", "bad commit id"},
		{z, strings.ToUpper(a), "refs/heads/main", "bad commit id"},
		{z, a[:39], "refs/heads/main", "bad commit id"},
		{"", a, "refs/heads/main", "bad old commit id"},
		{"HEAD~1", a, "refs/heads/main", "bad old commit id"},
		{z, a64, "refs/heads/main", "bad old commit id"},
	} {
		err := CheckPushUpdate(RefUpdate{Old: tc.old, New: tc.new, Ref: tc.ref})
		if tc.fail == "" && err != nil || tc.fail != "" && (err == nil || !strings.Contains(err.Error(), tc.fail)) {
			t.Errorf("%q %q %q: %v, want %q", tc.old, tc.new, tc.ref, err, tc.fail)
		}
	}
}

// TestGit_RunsAsGitUser: git (receive-pack, its hook, upload-pack) runs as
// the git user, with none of the daemon's environment; the repositories are
// its, including one root made before.
func TestGit_RunsAsGitUser(t *testing.T) {
	const uid = DefaultGitUID
	t.Setenv("GOOGLE_CLIENT_SECRET", "s3cret")
	t.Setenv("FCM_TOKEN", "daemon-token")
	c := newLimitsFixture(t, func(s *Service) {
		s.Git.UID, s.Git.GID = uid, uid
		// The git user must reach the data dir and the hook: the test's
		// directories are 0700.
		for d := s.DataDir; d != os.TempDir(); d = filepath.Dir(d) {
			os.MkdirAll(d, 0o711)
			os.Chmod(d, 0o711)
		}
		// A repository made by root, as before git had a user of its own.
		if out, err := exec.Command("git", "init", "-q", "--bare", "-b", "main", s.RepoPath("aaaa1111")).CombinedOutput(); err != nil {
			t.Fatalf("git init: %v: %s", err, out)
		}
	})
	c.setHook("cat >/dev/null\necho uid=$(id -u) gid=$(id -g) groups=$(id -G)\nenv | sort | sed 's/^/env: /'\n")
	for _, remote := range []string{c.http, c.ssh} {
		c.commit(c.work, "f-"+remote[:4], []byte(remote))
		out := c.must(c.work, "push", remote, "main")
		want := fmt.Sprintf("remote: uid=%d gid=%d groups=%d", uid, uid, uid)
		if !strings.Contains(out, want) {
			t.Errorf("push over %s: the hook lacks %q:\n%s", remote[:4], want, out)
		}
		for _, bad := range []string{"s3cret", "daemon-token", "GOOGLE_", "FCM_TOKEN"} {
			if strings.Contains(out, bad) {
				t.Errorf("push over %s: git's environment has %q:\n%s", remote[:4], bad, out)
			}
		}
		for _, good := range []string{"env: FCM_PUSH_TOKEN=", "env: FCM_DAEMON_URL=", "env: PATH="} {
			if !strings.Contains(out, good) {
				t.Errorf("push over %s: git's environment lacks %q:\n%s", remote[:4], good, out)
			}
		}
	}
	c.must(c.work, "clone", "-q", c.ssh, filepath.Join(c.work, "clone"))
	repos := filepath.Dir(c.f.svc.RepoPath("aaaa1111"))
	if fi, err := os.Stat(repos); err != nil || fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != uid {
		t.Errorf("repos/: %v %v", fi.Mode(), err)
	}
	filepath.Walk(repos, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Sys().(*syscall.Stat_t).Uid != uid {
			t.Errorf("%s is owned by uid %d, not the git user", p, fi.Sys().(*syscall.Stat_t).Uid)
		}
		return nil
	})
}

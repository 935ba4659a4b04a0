package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/crypto/ssh"
)

func TestParseGitCommand(t *testing.T) {
	for _, tc := range []struct {
		in, service, name, fail string
	}{
		{"git-receive-pack 'sshapp.git'", "git-receive-pack", "sshapp", ""},
		{"git-receive-pack '/sshapp.git'", "git-receive-pack", "sshapp", ""},
		{"git-receive-pack 'sshapp'", "git-receive-pack", "sshapp", ""},
		{"git-receive-pack '/sshapp.git/'", "git-receive-pack", "sshapp", ""},
		{"git-upload-pack '/cosmic-nova.git'", "git-upload-pack", "cosmic-nova", ""},
		{"git-upload-pack cosmic-nova.git", "git-upload-pack", "cosmic-nova", ""},
		{"git receive-pack '/sshapp.git'", "git-receive-pack", "sshapp", ""},
		{"ls -la", "", "", "fcm serves git only"},
		{"", "", "", "fcm serves git only"},
		{"git-upload-archive '/sshapp.git'", "", "", "fcm serves git only"},
		{"git-receive-pack '../etc/passwd'", "", "", "not a repository of fcm"},
		{"git-receive-pack '/repos/sshapp.git'", "", "", "not a repository of fcm"},
		{"git-receive-pack 'a'\\''b.git'", "", "", "not a repository of fcm"},
		{"git-receive-pack 'Bad_Name.git'", "", "", "not a repository of fcm"},
		{"git-receive-pack 'fcm.git'", "", "", "reserved"},
		{"git-receive-pack ''", "", "", "not a repository of fcm"},
		{"git-receive-pack 'a.git' 'b.git'", "", "", "not a repository of fcm"},
		{"git-receive-pack '~alice/app.git'", "", "", "not a repository of fcm"},
	} {
		service, name, err := ParseGitCommand(tc.in)
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.fail)
			}
			continue
		}
		if err != nil || service != tc.service || name != tc.name {
			t.Errorf("%q = %q, %q, %v; want %q, %q", tc.in, service, name, err, tc.service, tc.name)
		}
	}
}

// sshFixture is a git SSH server on loopback over a store with two owners:
// alice (app "app", key alice) and bob (app "bobs").
type sshFixture struct {
	svc       *Service
	addr      string
	dir       string
	alice     ssh.Signer
	aliceFile string
	stranger  ssh.Signer
}

func newSSHFixture(t *testing.T) *sshFixture { return newSSHFixtureWith(t, nil) }

// newSSHFixtureWith is newSSHFixture with adjust called on the service
// before it prepares its repositories and serves.
func newSSHFixtureWith(t *testing.T, adjust func(*Service)) *sshFixture {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &sshFixture{dir: dir}
	alicePEM, alice, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	f.alice, f.aliceFile = alice, filepath.Join(dir, "alice_key")
	if err := os.WriteFile(f.aliceFile, alicePEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, f.stranger, err = guest.NewKey(); err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx *store.Tx) error {
		tx.PutToken(store.NewSecret(), &store.Token{ID: "alice", Name: "alice"})
		tx.PutToken(store.NewSecret(), &store.Token{ID: "bob", Name: "bob"})
		tx.InsertVM(&store.VM{ID: "aaaa1111", Name: "app", Owner: "alice", State: "running"})
		tx.InsertVM(&store.VM{ID: "bbbb2222", Name: "bobs", Owner: "bob", State: "running"})
		return tx.InsertKey(&store.Key{Fingerprint: ssh.FingerprintSHA256(alice.PublicKey()), Owner: "alice",
			Type: alice.PublicKey().Type(), Line: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(alice.PublicKey())))})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The hook records what a push gives it and accepts the push.
	hook := filepath.Join(dir, "hook.sh")
	os.WriteFile(hook, []byte("#!/bin/sh\nenv | grep ^FCM_ > '"+dir+"/hookenv'\ncat >/dev/null\necho hook ran\n"), 0o755)
	f.svc = &Service{DataDir: filepath.Join(dir, "data"), Store: st, HookBin: hook, DaemonURL: "http://127.0.0.1:9",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if adjust != nil {
		adjust(f.svc)
	}
	if err := f.svc.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, hostKey, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.svc.ServeSSH(ctx, ln, hostKey) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeSSH: %v", err)
		}
	})
	return f
}

func (f *sshFixture) dial(user string, key ssh.Signer) (*ssh.Client, error) {
	return ssh.Dial("tcp", f.addr, &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second})
}

// exec1 runs command in a new session and returns its stderr and exit status.
func exec1(t *testing.T, c *ssh.Client, command string) (string, int) {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	err = sess.Run(command)
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return stderr.String(), 0
	case errors.As(err, &ee):
		return stderr.String(), ee.ExitStatus()
	}
	t.Fatalf("%s: %v", command, err)
	return "", 0
}

func TestGitSSH_Auth(t *testing.T) {
	f := newSSHFixture(t)
	if _, err := f.dial("git", f.stranger); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := f.dial("root", f.alice); err == nil {
		t.Error("user root was let in")
	}
	c, err := f.dial("git", f.alice)
	if err != nil {
		t.Fatalf("alice's key: %v", err)
	}
	defer c.Close()

	t.Run("a missing app and another owner's answer alike", func(t *testing.T) {
		for _, name := range []string{"nosuch", "bobs"} {
			for _, verb := range []string{"git-receive-pack", "git-upload-pack"} {
				stderr, code := exec1(t, c, fmt.Sprintf("%s '/%s.git'", verb, name))
				if code != 1 || stderr != fmt.Sprintf("no app named %q\n", name) {
					t.Errorf("%s %s: exit %d, %q", verb, name, code, stderr)
				}
			}
		}
		if _, err := os.Stat(f.svc.RepoPath("bbbb2222")); err == nil {
			t.Error("bob's repository was made for alice's request")
		}
	})
	t.Run("only git commands", func(t *testing.T) {
		for _, cmd := range []string{"ls /", "git-receive-pack '../../etc.git'", "sh -c id"} {
			if stderr, code := exec1(t, c, cmd); code != 1 || stderr == "" {
				t.Errorf("%q: exit %d, %q", cmd, code, stderr)
			}
		}
	})
	t.Run("no shell, no pty, no forwarding", func(t *testing.T) {
		sess, _ := c.NewSession()
		if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err == nil {
			t.Error("pty granted")
		}
		var stderr bytes.Buffer
		sess.Stderr = &stderr
		sess.Shell()
		err := sess.Wait()
		if !strings.Contains(stderr.String(), "no shell") || err == nil {
			t.Errorf("shell: %v, %q", err, stderr.String())
		}
		if _, err := c.Dial("tcp", "127.0.0.1:22"); err == nil {
			t.Error("direct-tcpip channel accepted")
		}
	})
	t.Run("a key removed after connecting", func(t *testing.T) {
		c2, err := f.dial("git", f.alice)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		fp := ssh.FingerprintSHA256(f.alice.PublicKey())
		var k *store.Key
		f.svc.Store.Update(func(tx *store.Tx) (err error) {
			if k, err = tx.KeyByFingerprint(fp); err != nil {
				return err
			}
			return tx.DeleteKey(fp)
		})
		defer f.svc.Store.Update(func(tx *store.Tx) error { return tx.InsertKey(k) })
		if stderr, code := exec1(t, c2, "git-upload-pack '/app.git'"); code != 1 || !strings.Contains(stderr, "no longer added") {
			t.Errorf("exit %d, %q", code, stderr)
		}
	})
}

func TestGitSSH_PushAndClone(t *testing.T) {
	f := newSSHFixture(t)
	_, port, _ := net.SplitHostPort(f.addr)
	work := t.TempDir()
	env := append(os.Environ(), "HOME="+work, "GIT_CONFIG_NOSYSTEM=1", "GIT_AUTHOR_NAME=Ada", "GIT_AUTHOR_EMAIL=ada@example.com",
		"GIT_COMMITTER_NAME=Ada", "GIT_COMMITTER_EMAIL=ada@example.com",
		"GIT_SSH_COMMAND=ssh -F /dev/null -i "+f.aliceFile+" -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p "+port)
	git := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v:\n%s", args, err, out)
		}
		return string(out)
	}
	git(work, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(work, "index.html"), []byte("hello\n"), 0o644)
	git(work, "add", "index.html")
	git(work, "commit", "-q", "-m", "hello")
	out := git(work, "push", "ssh://git@127.0.0.1:"+port+"/app.git", "main")
	if !strings.Contains(out, "remote: hook ran") || !strings.Contains(out, "main -> main") {
		t.Errorf("push output:\n%s", out)
	}
	hookEnv, _ := os.ReadFile(filepath.Join(f.dir, "hookenv"))
	if !strings.Contains(string(hookEnv), "FCM_DAEMON_URL=http://127.0.0.1:9") || !strings.Contains(string(hookEnv), "FCM_PUSH_TOKEN=") {
		t.Errorf("the hook's environment: %q", hookEnv)
	}
	clone := filepath.Join(t.TempDir(), "clone")
	git(work, "clone", "-q", "ssh://git@127.0.0.1:"+port+"/app", clone)
	if b, _ := os.ReadFile(filepath.Join(clone, "index.html")); string(b) != "hello\n" {
		t.Errorf("clone has index.html = %q", b)
	}
}

func TestGitSSH_ClosedChannelKillsGit(t *testing.T) {
	f := newSSHFixture(t)
	c, err := f.dial("git", f.alice)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdout, _ := sess.StdoutPipe()
	sess.StdinPipe() // held open: receive-pack waits for commands
	if err := sess.Start("git-receive-pack '/app.git'"); err != nil {
		t.Fatal(err)
	}
	// The advertisement's first pkt-line says git is running.
	buf := make([]byte, 4)
	if _, err := io.ReadFull(stdout, buf); err != nil {
		t.Fatal(err)
	}
	pattern := "receive-pack " + f.svc.RepoPath("aaaa1111")
	if exec.Command("pgrep", "-f", pattern).Run() != nil {
		t.Fatal("receive-pack is not running")
	}
	sess.Close()
	deadline := time.Now().Add(5 * time.Second)
	for exec.Command("pgrep", "-f", pattern).Run() == nil {
		if time.Now().After(deadline) {
			t.Fatal("receive-pack still runs after its channel closed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestGitSSH_HandshakeLimits: beyond the handshakes allowed at once, from one
// address or in all, a new connection is closed at once, before the server
// says anything; a finished handshake frees its place.
func TestGitSSH_HandshakeLimits(t *testing.T) {
	f := newSSHFixtureWith(t, func(s *Service) { s.Git.SSHHandshakes, s.Git.SSHHandshakesPerIP = 4, 2 })
	// open connects from 127.0.0.<from> and returns the connection and the
	// first line the server sent ("" when it closed the connection at once).
	open := func(from int) (net.Conn, string) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(from))}, Timeout: 5 * time.Second}
		nc, err := d.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, err := nc.Read(buf)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read from 127.0.0.%d: %v", from, err)
		}
		return nc, strings.TrimSpace(string(buf[:n]))
	}
	const banner = "SSH-2.0-fcm"
	a1, l1 := open(1)
	a2, l2 := open(1)
	_, l3 := open(1)
	if l1 != banner || l2 != banner || l3 != "" {
		t.Errorf("three handshakes from one address, 2 allowed: the server said %q, %q, %q", l1, l2, l3)
	}
	a4, l4 := open(2)
	a5, l5 := open(3)
	_, l6 := open(4)
	if l4 != banner || l5 != banner || l6 != "" {
		t.Errorf("handshakes from other addresses, 4 allowed in all: the server said %q, %q, %q", l4, l5, l6)
	}
	// A handshake ending (the client went away) frees its place.
	a1.Close()
	var a6 net.Conn
	deadline := time.Now().Add(5 * time.Second)
	for {
		var l string
		if a6, l = open(4); l == banner {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed handshake did not free its place")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Authenticated connections hold no place: three of alice's from one
	// address, then one more handshake from it.
	for _, c := range []net.Conn{a2, a4, a5, a6} {
		c.Close()
	}
	for i := 0; i < 3; i++ {
		var c *ssh.Client
		for deadline := time.Now().Add(5 * time.Second); ; {
			var err error
			if c, err = f.dial("git", f.alice); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("alice's connection %d: %v", i, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		defer c.Close()
	}
	if _, l := open(1); l != banner {
		t.Errorf("with three authenticated connections from 127.0.0.1, a handshake from it: the server said %q", l)
	}
}

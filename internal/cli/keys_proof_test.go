package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/daemon"
	"github.com/fcmhost/fcm/internal/store"
)

// keysDaemon runs a real daemon (its API on a real store) and points the CLI
// at it with a user's token; ssh-agent is off unless the test starts one.
func keysDaemon(t *testing.T) (home string) {
	t.Helper()
	home = t.TempDir()
	st, err := store.Open(filepath.Join(t.TempDir(), "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	secret := store.NewSecret()
	if err := st.Update(func(tx *store.Tx) error { return tx.PutToken(secret, &store.Token{ID: "alice"}) }); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer((&daemon.Server{Store: st, Version: "test"}).Handler())
	t.Cleanup(srv.Close)
	t.Setenv("HOME", home)
	t.Setenv("FCM_HOST", srv.URL)
	t.Setenv("FCM_TOKEN", secret)
	t.Setenv("SSH_AUTH_SOCK", "")
	return home
}

// sshKeygen makes a key pair of type typ at path (and path.pub).
func sshKeygen(t *testing.T, typ, path, comment string) (fp string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o700)
	args := []string{"-q", "-t", typ, "-N", "", "-C", comment, "-f", path}
	if typ == "rsa" {
		args = append(args, "-b", "2048")
	}
	if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	out, err := exec.Command("ssh-keygen", "-l", "-f", path+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[1]
}

// TestKeysAdd_ProvesTheKey: fcm keys add signs the daemon's challenge with
// ssh-keygen, with the private key beside the .pub or in ssh-agent, and
// says in one line when it has neither.
func TestKeysAdd_ProvesTheKey(t *testing.T) {
	home := keysDaemon(t)
	ed := sshKeygen(t, "ed25519", filepath.Join(home, ".ssh", "id_ed25519"), "ada@laptop")
	if out, err := runCLI(nil, "keys", "add"); err != nil || out != "Key added: "+ed+" (ada@laptop)\n" {
		t.Fatalf("fcm keys add: %v\n%s", err, out)
	}
	if _, err := runCLI(nil, "keys", "add"); err == nil || !strings.Contains(err.Error(), "key "+ed+" is already added to your account") {
		t.Errorf("added again: %v", err)
	}

	other := t.TempDir()
	rsa := sshKeygen(t, "rsa", filepath.Join(other, "work"), "ada@work")
	if out, err := runCLI(nil, "keys", "add", filepath.Join(other, "work.pub")); err != nil || out != "Key added: "+rsa+" (ada@work)\n" {
		t.Errorf("fcm keys add work.pub (RSA): %v\n%s", err, out)
	}

	lone := sshKeygen(t, "ed25519", filepath.Join(other, "lone"), "")
	os.Remove(filepath.Join(other, "lone"))
	_, err := runCLI(nil, "keys", "add", filepath.Join(other, "lone.pub"))
	want := "cannot prove you hold key " + lone + ": " + filepath.Join(other, "lone") + " does not exist and ssh-agent does not hold it"
	if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Errorf("a .pub without its private key: %v, want one line with %q", err, want)
	}
	pub, _ := os.ReadFile(filepath.Join(other, "lone.pub"))
	if _, err := runCLI(strings.NewReader(string(pub)), "keys", "add", "-"); err == nil || !strings.Contains(err.Error(), "it came from stdin and ssh-agent does not hold it") {
		t.Errorf("stdin without an agent: %v", err)
	}
	if _, err := runCLI(strings.NewReader("hello"), "keys", "add", "-"); err == nil || !strings.Contains(err.Error(), "not an SSH public key") {
		t.Errorf("not a key: %v", err)
	}

	// In ssh-agent, from stdin, with no private key on disk.
	agentKey := filepath.Join(other, "agent")
	fp := sshKeygen(t, "ed25519", agentKey, "ada@agent")
	startAgent(t, agentKey)
	os.Remove(agentKey)
	pub, _ = os.ReadFile(agentKey + ".pub")
	if out, err := runCLI(strings.NewReader(string(pub)), "keys", "add", "-"); err != nil || out != "Key added: "+fp+" (ada@agent)\n" {
		t.Errorf("fcm keys add - with the key in ssh-agent: %v\n%s", err, out)
	}

	out, err := runCLI(nil, "keys", "ls")
	if err != nil || strings.Count(out, "SHA256:") != 3 || !strings.Contains(out, ed) || !strings.Contains(out, rsa) || !strings.Contains(out, fp) || strings.Contains(out, lone) {
		t.Errorf("fcm keys ls: %v\n%s", err, out)
	}
}

// startAgent runs a real ssh-agent for the test, holding key.
func startAgent(t *testing.T, key string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 100 {
			t.Fatal("ssh-agent did not make its socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Setenv("SSH_AUTH_SOCK", sock)
	if out, err := exec.Command("ssh-add", "-q", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
}

// A daemon that asks to sign something else than a challenge in its own
// namespace (a git commit, another host's challenge) gets no signature.
func TestKeysAdd_SignsOnlyItsOwnChallenges(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv("FCM_TOKEN", "fcm_x")
	sshKeygen(t, "ed25519", filepath.Join(home, ".ssh", "id_ed25519"), "")
	good := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	for _, c := range []struct{ challenge, namespace string }{
		{good, "git"},
		{good, "fcm-keys-add@elsewhere.example.com"},
		{"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n", "fcm-keys-add@127.0.0.1"},
	} {
		var posted bool
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/keys" {
				posted = true
			}
			json.NewEncoder(w).Encode(api.KeyChallenge{Challenge: c.challenge, Namespace: c.namespace})
		}))
		t.Setenv("FCM_HOST", srv.URL)
		_, err := runCLI(nil, "keys", "add")
		if err == nil || !strings.Contains(err.Error(), "refused") || posted {
			t.Errorf("asked to sign %q in %q: %v (posted a key: %v)", c.challenge, c.namespace, err, posted)
		}
		srv.Close()
	}
}

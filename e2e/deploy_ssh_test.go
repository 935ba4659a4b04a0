package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sshGitListen is where the daemon of TestDeploySSH serves git over SSH.
const sshGitListen = "127.0.0.1:12222"

// sshGit runs git in dir with ssh using only the private key at key.
func (d *daemonProc) sshGit(dir, key string, args ...string) (string, int) {
	d.t.Helper()
	return d.gitWith(dir, []string{"GIT_SSH_COMMAND=ssh -i " + key +
		" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p 12222"}, args...)
}

// sshKey makes an ed25519 key pair in dir and returns the private key's path
// and its fingerprint.
func sshKey(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	key := filepath.Join(dir, name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ada@"+name, "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	out, err := exec.Command("ssh-keygen", "-l", "-f", key+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	return key, strings.Fields(string(out))[1]
}

// TestDeploySSH: git push over SSH with a key added by `fcm keys add` deploys
// like HTTPS does; unknown and removed keys are refused, and so is an app that
// does not exist.
func TestDeploySSH(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonHV(t, "qemu", dataDir, "--git-listen", sshGitListen)
	hostKey := filepath.Join(dataDir, "git_host_ed25519")
	if fi, err := os.Stat(hostKey); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("host key %s: %v %v", hostKey, fi, err)
	}
	if !strings.Contains(d.log(), "Git over SSH at ssh://git@"+sshGitListen+"/<app>.git") {
		t.Errorf("the daemon does not say where git over SSH is:\n%s", d.log())
	}
	work := t.TempDir()
	d.mustGit(work, "init", "-q", "-b", "main")
	d.mustCLI(work, "create", "--name", "sshapp")
	vm := d.vms(work)["sshapp"]

	keys := t.TempDir()
	key, fp := sshKey(t, keys, "key")
	out := d.mustCLI(keys, "keys", "add", "key.pub")
	if !strings.Contains(out, "Key added: "+fp+" (ada@key)") {
		t.Errorf("fcm keys add key.pub:\n%s", out)
	}
	if out, code := d.cli(keys, "keys", "add", "key.pub"); code == 0 || !strings.Contains(out, "is already added to your account") {
		t.Errorf("the same key added twice: exit %d:\n%s", code, out)
	}
	if out := d.mustCLI(keys, "keys", "ls"); !strings.Contains(out, "FINGERPRINT") || !strings.Contains(out, fp) || !strings.Contains(out, "ada@key") {
		t.Errorf("fcm keys ls:\n%s", out)
	}
	if out, code := d.cli(keys, "keys", "add"); code == 0 || !strings.Contains(out, "id_ed25519.pub") || !strings.Contains(out, "ssh-keygen -t ed25519") {
		t.Errorf("fcm keys add without a key in ~/.ssh: exit %d:\n%s", code, out)
	}

	remote := "ssh://git@" + sshGitListen + "/sshapp.git"
	d.commit(work, "hello", map[string]string{
		"Procfile":   "web: python3 -m http.server 3000\n",
		"index.html": "<h1>Hello over SSH</h1>\n",
	})
	out, code := d.sshGit(work, key, "push", remote, "main")
	t.Logf("git push %s main:\n%s", remote, out)
	if code != 0 || !strings.Contains(out, "Deploy successful!") {
		t.Fatalf("push over SSH: exit %d:\n%s\ndaemon log:\n%s", code, out, tail(d.log(), 4000))
	}
	url := fmt.Sprintf("http://%s:3000/", vm.IP)
	if code, body, err := httpBody(url); err != nil || code != 200 || !strings.Contains(body, "<h1>Hello over SSH</h1>") {
		t.Fatalf("GET %s = %d %q %v", url, code, body, err)
	}

	t.Run("an unknown key is refused", func(t *testing.T) {
		stranger, _ := sshKey(t, t.TempDir(), "stranger")
		out, code := d.sshGit(work, stranger, "push", remote, "main")
		if code == 0 || !strings.Contains(out, "Permission denied") {
			t.Errorf("push with an unknown key: exit %d:\n%s", code, out)
		}
	})
	t.Run("no app named", func(t *testing.T) {
		out, code := d.sshGit(work, key, "push", "ssh://git@"+sshGitListen+"/nosuch.git", "main")
		if code == 0 || !strings.Contains(out, `no app named "nosuch"`) {
			t.Errorf("push to nosuch.git: exit %d:\n%s", code, out)
		}
	})
	t.Run("a removed key is refused", func(t *testing.T) {
		if out := d.mustCLI(keys, "keys", "rm", fp); !strings.Contains(out, "Key removed: "+fp) {
			t.Errorf("fcm keys rm:\n%s", out)
		}
		if out := d.mustCLI(keys, "keys", "ls"); !strings.Contains(out, "No SSH keys") {
			t.Errorf("fcm keys ls after rm:\n%s", out)
		}
		d.commit(work, "v2", map[string]string{"index.html": "<h1>Not deployed</h1>\n"})
		out, code := d.sshGit(work, key, "push", remote, "main")
		if code == 0 || !strings.Contains(out, "Permission denied") {
			t.Errorf("push after fcm keys rm: exit %d:\n%s", code, out)
		}
		if _, body, _ := httpBody(url); !strings.Contains(body, "Hello over SSH") {
			t.Errorf("after a refused push the app serves %q", body)
		}
	})
	d.mustCLI(work, "destroy", "sshapp")
}

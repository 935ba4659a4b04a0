package deploy

import (
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/store"
)

// TestGitHTTP_PushAndClone: the HTTP transport runs the same git as SSH.
func TestGitHTTP_PushAndClone(t *testing.T) {
	f := newSSHFixture(t)
	secret := store.NewSecret()
	f.svc.Store.Update(func(tx *store.Tx) error { return tx.PutToken(secret, &store.Token{ID: "alice", Name: "alice"}) })
	srv := httptest.NewServer(f.svc.GitHandler())
	defer srv.Close()
	remote := strings.Replace(srv.URL, "http://", "http://fcm:"+secret+"@", 1) + "/git/app.git"
	work := t.TempDir()
	env := append(os.Environ(), "HOME="+work, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0", "GIT_AUTHOR_NAME=Ada",
		"GIT_AUTHOR_EMAIL=ada@example.com", "GIT_COMMITTER_NAME=Ada", "GIT_COMMITTER_EMAIL=ada@example.com")
	git := func(dir string, args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(dir string, args ...string) string {
		t.Helper()
		out, err := git(dir, args...)
		if err != nil {
			t.Fatalf("git %v: %v:\n%s", args, err, out)
		}
		return out
	}
	must(work, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(work, "index.html"), []byte("hello\n"), 0o644)
	must(work, "add", "index.html")
	must(work, "commit", "-q", "-m", "hello")
	if out := must(work, "push", remote, "main"); !strings.Contains(out, "remote: hook ran") {
		t.Errorf("push output:\n%s", out)
	}
	clone := filepath.Join(t.TempDir(), "clone")
	must(work, "clone", "-q", remote, clone)
	if b, _ := os.ReadFile(filepath.Join(clone, "index.html")); string(b) != "hello\n" {
		t.Errorf("clone has index.html = %q", b)
	}
	bobs := strings.Replace(remote, "/app.git", "/bobs.git", 1)
	if out, err := git(work, "push", bobs, "main"); err == nil || !strings.Contains(out, `no app named "bobs"`) {
		t.Errorf("push to bob's app: %v:\n%s", err, out)
	}
}

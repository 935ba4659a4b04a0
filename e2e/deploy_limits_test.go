package e2e

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/fcmhost/fcm/internal/deploy"
)

// TestDeploy_Limits: what git pushes may cost the host. A push larger than
// --max-push-size is refused with git's message and nothing of it stays in
// repos/; one user's push beyond --max-pushes-per-user is refused while the
// first deploys; and git runs as the unprivileged git user, never root.
func TestDeploy_Limits(t *testing.T) {
	dataDir := shortTempDir(t)
	cleanupVMs(t, dataDir)
	d := startDaemonHV(t, "qemu", dataDir, "--max-push-size", "20M", "--max-pushes-per-user", "1")
	work := t.TempDir()
	d.mustGit(work, "init", "-q", "-b", "main")
	d.commit(work, "start", map[string]string{"README": "limits\n"})
	d.mustCLI(work, "create", "--name", "limits")
	repo := filepath.Join(dataDir, "repos", d.vms(work)["limits"].ID+".git")
	d.mustGit(work, "ls-remote", "fcm") // the repository exists from here on

	t.Run("a push over --max-push-size is refused and nothing kept", func(t *testing.T) {
		big := make([]byte, 40<<20) // twice the limit, incompressible
		rand.Read(big)
		writeFiles(t, work, map[string]string{"Procfile": "web: python3 -m http.server 3000\n", "big.bin": string(big)})
		d.mustGit(work, "add", "-A")
		d.mustGit(work, "commit", "-q", "-m", "big")
		before, beforeSize := tree(t, repo)
		out, code := d.git(work, "push", "fcm", "main")
		t.Logf("git push of 40 MiB with --max-push-size 20M:\n%s", out)
		if code == 0 || !strings.Contains(out, "remote: fatal: pack exceeds maximum allowed size") || !strings.Contains(out, "[remote rejected] main -> main") {
			t.Errorf("push of 40 MiB: exit %d:\n%s", code, out)
		}
		after, afterSize := tree(t, repo)
		if !slices.Equal(before, after) || afterSize != beforeSize {
			t.Errorf("the repository held %d bytes in %v before the refused push, %d bytes in %v after", beforeSize, before, afterSize, after)
		}
		if out := d.mustCLI(work, "releases"); strings.Contains(out, "v1") {
			t.Errorf("the refused push made a release:\n%s", out)
		}
		d.mustGit(work, "reset", "-q", "--hard", "HEAD~1")
	})

	t.Run("a user's second push at once is refused; git runs as the git user", func(t *testing.T) {
		d.commit(work, "slow", map[string]string{"Procfile": "web: python3 -m http.server 3000\nrelease: echo release-runs; sleep 10\n",
			"index.html": "<h1>limits</h1>\n"})
		first, firstOut := d.pushUntil(t, work, "release-runs")
		// The running receive-pack and hook, from /proc.
		procs := gitProcs(t, repo)
		if len(procs) == 0 {
			t.Errorf("no git process on %s found during the push", repo)
		}
		for pid, uids := range procs {
			if uids != fmt.Sprintf("%d %d %d %d", deploy.DefaultGitUID, deploy.DefaultGitUID, deploy.DefaultGitUID, deploy.DefaultGitUID) {
				t.Errorf("pid %d on the repository runs as uids %q, want the git user %d", pid, uids, deploy.DefaultGitUID)
			}
		}
		other := filepath.Join(t.TempDir(), "other")
		remote := "http://fcm:" + d.token() + "@" + daemonListen + "/git/limits.git"
		d.mustGit(filepath.Dir(other), "clone", "-q", work, other)
		d.commit(other, "second", map[string]string{"second.txt": "2\n"})
		out, code := d.git(other, "push", remote, "main")
		t.Logf("a second push while the first deploys:\n%s", out)
		if code == 0 || !strings.Contains(out, "fcm: 1 pushes to your apps are in progress, the most at once (fcm daemon --max-pushes-per-user 1)") {
			t.Errorf("the second push: exit %d:\n%s", code, out)
		}
		if err := first.Wait(); err != nil || !strings.Contains(firstOut.String(), "Deploy successful! v1 is live") {
			t.Errorf("the first push: %v\n%s", err, firstOut.String())
		}
		filepath.Walk(filepath.Join(dataDir, "repos"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Sys().(*syscall.Stat_t).Uid != deploy.DefaultGitUID {
				t.Errorf("%s is owned by uid %d, not the git user", p, fi.Sys().(*syscall.Stat_t).Uid)
			}
			return nil
		})
		// Once the first is done, the next push goes.
		d.mustGit(other, "pull", "-q", "--no-rebase", "--no-edit", remote, "main")
		if out := d.mustGit(other, "push", remote, "main"); !strings.Contains(out, "Deploy successful! v2 is live") {
			t.Errorf("a push after the first:\n%s", out)
		}
	})
}

// tree lists the files under dir with their sizes, and their total size.
func tree(t *testing.T, dir string) ([]string, int64) {
	t.Helper()
	var out []string
	var total int64
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, fmt.Sprintf("%s:%d", rel, fi.Size()))
		total += fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, total
}

// gitProcs returns the processes whose command line names repo (git
// receive-pack, its hook's git), each with its Uid line from /proc (real,
// effective, saved, filesystem).
func gitProcs(t *testing.T, repo string) map[int]string {
	t.Helper()
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), "receive-pack") || !strings.Contains(string(cmdline), repo) {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
				out[pid] = strings.Join(strings.Fields(rest), " ")
			}
		}
	}
	return out
}

package deploy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// DefaultGitUID is the uid (and gid) git runs as: no user of the host's, just
// below the hypervisors' range (vmm.UIDBase), and owning every repository.
// Git parses what people push; as this uid, a flaw in it reaches only the
// repositories, never the daemon, the VMs or the host.
const DefaultGitUID = vmm.UIDBase - 1

// defaultPath is git's PATH when the daemon has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// reposDir holds every app's bare repository.
func (s *Service) reposDir() string { return filepath.Join(s.DataDir, "repos") }

// repoOf is vm's repository.
func (s *Service) repoOf(vm *store.VM) string { return s.RepoPath(vm.ID) }

// gitEnv is git's whole environment: none of the daemon's (its OIDC secret,
// FCM_* settings) but an allow-list, plus extra (GIT_PROTOCOL, the hook's
// FCM_PUSH_TOKEN and FCM_DAEMON_URL).
func (s *Service) gitEnv(extra ...string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	env := []string{"PATH=" + path, "HOME=" + s.reposDir()}
	if lang := os.Getenv("LANG"); lang != "" {
		env = append(env, "LANG="+lang)
	}
	return append(env, extra...)
}

// gitCommand is git with args run as the git user (GitOptions.UID) with
// gitEnv: every git the daemon runs on a repository goes through it, so
// nothing in a repository (its config, hooks) is ever acted on as root.
func (s *Service) gitCommand(args ...string) *exec.Cmd {
	cmd := exec.Command("git", args...)
	cmd.Env = s.gitEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	s.asGitUser(cmd.SysProcAttr)
	return cmd
}

// asGitUser makes a process started with attr run as the git user, with no
// supplementary groups.
func (s *Service) asGitUser(attr *syscall.SysProcAttr) {
	if s.Git.UID != 0 {
		attr.Credential = &syscall.Credential{Uid: uint32(s.Git.UID), Gid: uint32(s.Git.GID), Groups: []uint32{}}
	}
}

// prepareRepos makes the repositories' directory the git user's (0700) and
// checks that this user can reach it and run the hook. At the first start
// with a git user, the repositories root made are given to it.
func (s *Service) prepareRepos(hookBin string) error {
	if err := s.ensureReposDir(); err != nil {
		return err
	}
	if s.Git.UID == 0 {
		return nil
	}
	uid, gid := s.Git.UID, s.Git.GID
	for p, read := range map[string]bool{s.reposDir(): false, filepath.Join(s.hooksDir(), "pre-receive"): true, hookBin: false} {
		if err := reachableBy(p, uid, gid, read); err != nil {
			return fmt.Errorf("git runs as uid %d: %w", uid, err)
		}
	}
	var n int
	err := filepath.WalkDir(s.reposDir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != uid || int(st.Gid) != gid) {
			n++
			return os.Lchown(p, uid, gid) // a symlink itself, never its target
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("give the repositories to the git user %d: %w", uid, err)
	}
	if n > 0 {
		s.Log.Info("gave the repositories' files to the git user", "files", n, "uid", uid)
	}
	return nil
}

// ensureReposDir makes the repositories' directory, 0700 and the git user's.
func (s *Service) ensureReposDir() error {
	dir := s.reposDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory: remove it", dir)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	if s.Git.UID != 0 {
		return os.Lchown(dir, s.Git.UID, s.Git.GID)
	}
	return nil
}

// reachableBy checks that uid/gid can search every directory up to path, and
// search (a directory) or run (a file) path itself, and with read read it (a
// script); the error says what to change.
func reachableBy(path string, uid, gid int, read bool) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		m := fi.Mode().Perm()
		if !(m&0o001 != 0 || int(st.Uid) == uid && m&0o100 != 0 || int(st.Gid) == gid && m&0o010 != 0) {
			return fmt.Errorf("%s (mode %04o, owner %d) does not let it search or run it: chmod o+x %s", p, m, st.Uid, p)
		}
		if p == abs && read && m&0o004 == 0 && !(int(st.Uid) == uid && m&0o400 != 0) {
			return errors.New(p + " is not readable by it: chmod o+r " + p)
		}
		if p == "/" {
			return nil
		}
	}
}

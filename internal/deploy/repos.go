package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/store"
)

// An app's host side is keyed by its VM's id, never its name (a destroyed
// VM's name may be someone else's next): its bare repository is
// <data>/repos/<vm id>.git (the git user's), its releases' transcripts are in
// <data>/apps/<vm id>/ (root's).

func (s *Service) appDir(vmID string) string { return filepath.Join(s.DataDir, "apps", vmID) }

// RepoPath is where the bare repository of the VM with id vmID lives.
func (s *Service) RepoPath(vmID string) string { return filepath.Join(s.reposDir(), vmID+".git") }

func (s *Service) hooksDir() string { return filepath.Join(s.DataDir, "git-hooks") }

// Prepare writes the hooks every repository uses (they call back into this
// binary), marks releases a daemon stop cut short as failed, moves what was
// kept by VM name before apps were keyed by id, and removes the apps of VMs
// that no longer exist.
func (s *Service) Prepare(ctx context.Context) error {
	if err := os.MkdirAll(s.hooksDir(), 0o755); err != nil {
		return err
	}
	bin, err := s.installHookBin()
	if err != nil {
		return fmt.Errorf("the hook's fcm binary: %w", err)
	}
	hook := fmt.Sprintf("#!/bin/sh\n# fcm: build and release the pushed tree before the branch moves.\nexec '%s' hook pre-receive\n", bin)
	if err := os.WriteFile(filepath.Join(s.hooksDir(), "pre-receive"), []byte(hook), 0o755); err != nil {
		return err
	}
	if err := s.prepareRepos(bin); err != nil { // gituser.go: the git user's
		return err
	}
	// A release still pending was cut short by the daemon stopping: its push
	// failed with it, and the release before it kept serving.
	var apps []string
	err = s.Store.Update(func(tx *store.Tx) error {
		var cut []*store.Release
		err := tx.AllReleases(func(r *store.Release) error {
			if r.Status == store.ReleasePending {
				cut = append(cut, r)
			}
			return nil
		})
		for _, r := range cut {
			r.Status, r.Reason, r.FinishedAt = store.ReleaseFailed, "interrupted: the daemon stopped during the release", time.Now().UTC()
			s.Log.Info("release interrupted by a daemon stop", "vm_id", r.VM, "version", r.Version)
			if err := tx.PutRelease(r); err != nil {
				return err
			}
		}
		if err != nil {
			return err
		}
		apps, err = tx.Apps()
		return err
	})
	if err != nil {
		return err
	}
	vms, err := s.Store.ListVMs()
	if err != nil {
		return err
	}
	byID := map[string]bool{}
	for _, v := range vms {
		byID[v.ID] = true
		s.moveLegacy(v)
	}
	// Repositories of VMs that are gone (kept by id, or by name from before).
	repos, _ := os.ReadDir(s.reposDir())
	for _, e := range repos {
		if id, ok := strings.CutSuffix(e.Name(), ".git"); !ok || !byID[id] {
			s.Log.Info("removing the repository of a VM that no longer exists", "repo", e.Name())
			os.RemoveAll(filepath.Join(s.reposDir(), e.Name()))
		}
	}
	entries, _ := os.ReadDir(filepath.Join(s.DataDir, "apps"))
	for _, e := range entries {
		apps = append(apps, e.Name())
	}
	for _, id := range apps {
		if !byID[id] {
			s.Log.Info("removing the app of a VM that no longer exists", "vm_id", id)
			s.Forget(id)
		}
	}
	return nil
}

// moveLegacy moves v's repository and transcripts from where they were kept
// by name (repos/<name>.git, releases/<name>/) to where they are by id.
func (s *Service) moveLegacy(v *store.VM) {
	moves := [][2]string{
		{filepath.Join(s.DataDir, "repos", v.Name+".git"), s.RepoPath(v.ID)},
		{filepath.Join(s.DataDir, "releases", v.Name), s.outputDir(v.ID)},
	}
	for _, m := range moves {
		if fi, err := os.Lstat(m[0]); err != nil || !fi.IsDir() {
			continue
		}
		if _, err := os.Stat(m[1]); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(m[1]), 0o700); err == nil {
			err = os.Rename(m[0], m[1])
			s.Log.Info("moved to the app's directory", "vm", v.Name, "from", m[0], "to", m[1], "err", err)
		}
	}
}

// EnsureRepo makes the bare repository of the VM with id vmID if it does not exist yet.
func (s *Service) EnsureRepo(ctx context.Context, vmID string) error {
	p := s.RepoPath(vmID)
	if _, err := os.Stat(filepath.Join(p, "HEAD")); err == nil {
		return nil
	}
	tmp := p + ".tmp"
	os.RemoveAll(tmp)
	if err := s.ensureReposDir(); err != nil {
		return err
	}
	// Made by the git user, who owns every repository. A push's size limit
	// and hooks are given on receive-pack's command line (runGit), where the
	// repository's config cannot undo them; fsckObjects is also here for
	// whoever runs git on it by hand.
	cmds := [][]string{
		{"init", "-q", "--bare", "-b", "main", tmp},
		{"-C", tmp, "config", "receive.denyDeletes", "true"},
		{"-C", tmp, "config", "receive.denyNonFastForwards", "false"},
		{"-C", tmp, "config", "receive.fsckObjects", "true"},
	}
	for _, c := range cmds {
		if out, err := s.gitCommand(c...).CombinedOutput(); err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("git %s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	return os.Rename(tmp, p)
}

// CopyApp gives the VM with id to, a fork of from's, from's app: a copy of
// its repository (so that a push to the fork sends only what is new) and of
// its releases' transcripts, and its releases and config vars made up to upTo
// (all when zero; see store.Tx.CopyApp). A VM without an app gets nothing.
func (s *Service) CopyApp(ctx context.Context, from, to string, upTo time.Time) error {
	copies := [][2]string{{s.RepoPath(from), s.RepoPath(to)}, {s.appDir(from), s.appDir(to)}}
	for _, c := range copies {
		if _, err := os.Lstat(c[0]); errors.Is(err, os.ErrNotExist) {
			continue
		}
		tmp := c[1] + ".tmp"
		os.RemoveAll(tmp)
		// -a keeps the git user's ownership; a reflink where the data dir can.
		if out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", c[0], tmp).CombinedOutput(); err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("copy %s: %w: %s", c[0], err, out)
		}
		if err := os.Rename(tmp, c[1]); err != nil {
			os.RemoveAll(tmp)
			return err
		}
	}
	return s.Store.Update(func(tx *store.Tx) error { return tx.CopyApp(from, to, upTo) })
}

// Forget removes the app of the VM with id vmID: its repository, releases,
// transcripts and config vars; work waiting for it gives up and pushes to it
// in progress end.
func (s *Service) Forget(vmID string) error {
	s.release(vmID)
	os.RemoveAll(s.RepoPath(vmID))
	os.RemoveAll(s.appDir(vmID))
	return s.Store.Update(func(tx *store.Tx) error { return tx.DeleteApp(vmID) })
}

// hookBin is the copy of the fcm binary the pre-receive hook runs.
func (s *Service) hookBin() string { return filepath.Join(s.hooksDir(), "fcm") }

// installHookBin copies the fcm binary the hook runs (HookBin) into the hooks
// directory, root's and 0755, and returns the copy's path: the hook runs as
// the git user, who may not reach the daemon's own binary (under a home
// directory, or a build directory that is 0700). The copy is replaced when
// HookBin's size or time changed.
func (s *Service) installHookBin() (string, error) {
	dst := s.hookBin()
	src, err := os.Stat(s.HookBin)
	if err != nil {
		return "", err
	}
	if cur, err := os.Stat(dst); err == nil && cur.Size() == src.Size() && cur.ModTime().Equal(src.ModTime()) {
		return dst, nil
	}
	in, err := os.Open(s.HookBin)
	if err != nil {
		return "", err
	}
	defer in.Close()
	tmp := dst + ".new"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o755)
	}
	if err == nil {
		err = os.Chtimes(tmp, src.ModTime(), src.ModTime())
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return dst, nil
}

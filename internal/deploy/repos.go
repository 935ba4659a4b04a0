package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/store"
)

// RepoPath is where VM name's bare repository lives.
func (s *Service) RepoPath(name string) string { return filepath.Join(s.DataDir, "repos", name+".git") }

func (s *Service) hooksDir() string { return filepath.Join(s.DataDir, "git-hooks") }

// Prepare writes the hooks every repository uses (they call back into this
// binary) and removes repositories and releases whose VM no longer exists.
func (s *Service) Prepare(ctx context.Context, vmExists func(string) bool) error {
	if err := os.MkdirAll(s.hooksDir(), 0o755); err != nil {
		return err
	}
	hook := fmt.Sprintf("#!/bin/sh\n# fcm: build and release the pushed tree before the branch moves.\nexec '%s' hook pre-receive\n", s.HookBin)
	if err := os.WriteFile(filepath.Join(s.hooksDir(), "pre-receive"), []byte(hook), 0o755); err != nil {
		return err
	}
	if err := s.prepareRepos(); err != nil { // gituser.go: the git user's
		return err
	}
	// A release still pending was cut short by the daemon stopping: its push
	// failed with it, and the release before it kept serving.
	err := s.Store.Update(func(tx *store.Tx) error {
		var cut []*store.Release
		err := tx.AllReleases(func(r *store.Release) error {
			if r.Status == store.ReleasePending {
				cut = append(cut, r)
			}
			return nil
		})
		for _, r := range cut {
			r.Status, r.Reason, r.FinishedAt = store.ReleaseFailed, "interrupted: the daemon stopped during the release", time.Now().UTC()
			s.Log.Info("release interrupted by a daemon stop", "vm", r.VM, "version", r.Version)
			if err := tx.PutRelease(r); err != nil {
				return err
			}
		}
		return err
	})
	if err != nil {
		return err
	}
	entries, _ := os.ReadDir(filepath.Join(s.DataDir, "repos"))
	for _, e := range entries {
		name := strings.TrimSuffix(e.Name(), ".git")
		if !vmExists(name) {
			s.Log.Info("removing the repository of a VM that no longer exists", "vm", name)
			s.Forget(name)
		}
	}
	return nil
}

// EnsureRepo makes VM name's bare repository if it does not exist yet.
func (s *Service) EnsureRepo(ctx context.Context, name string) error {
	p := s.RepoPath(name)
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

// Forget removes VM name's repository, releases and config vars.
func (s *Service) Forget(name string) error {
	os.RemoveAll(s.RepoPath(name))
	os.RemoveAll(s.outputDir(name))
	return s.Store.Update(func(tx *store.Tx) error { return tx.DeleteApp(name) })
}

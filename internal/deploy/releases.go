package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/release"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/crypto/ssh"
)

// Errors the API maps to status codes.
var (
	ErrInvalid = errors.New("invalid request")
	ErrFailed  = errors.New("release failed")
	ErrNone    = errors.New("no release")
	ErrBusy    = errors.New("busy")
)

// Releases lists vm's releases, newest first, marking the current one.
func (s *Service) Releases(vm *store.VM) ([]api.Release, error) {
	var all []*store.Release
	if err := s.Store.View(func(tx *store.Tx) (err error) { all, err = tx.Releases(vm.ID); return }); err != nil {
		return nil, err
	}
	cur := current(all)
	out := []api.Release{}
	for i := len(all) - 1; i >= 0; i-- {
		out = append(out, toAPI(all[i], cur))
	}
	return out, nil
}

// LastRelease is vm's newest release (nil for none), read alone: what the
// status page shows of each VM. Current is set when it is the one serving.
func (s *Service) LastRelease(vm *store.VM) (*api.Release, error) {
	var last *store.Release
	if err := s.Store.View(func(tx *store.Tx) (err error) { last, err = tx.LastRelease(vm.ID); return }); err != nil || last == nil {
		return nil, err
	}
	a := toAPI(last, nil)
	a.Current = last.Status == store.ReleaseSucceeded
	return &a, nil
}

func toAPI(r, cur *store.Release) api.Release {
	return api.Release{Version: r.Version, Description: r.Description, Commit: r.Commit, User: r.User,
		Status: r.Status, Reason: r.Reason, Current: cur != nil && r.Version == cur.Version, CreatedAt: r.CreatedAt}
}

// current is the last release that succeeded.
func current(all []*store.Release) *store.Release {
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Status == store.ReleaseSucceeded {
			return all[i]
		}
	}
	return nil
}

// Rollback makes a new release that runs an earlier release's build with that
// release's config vars (version 0: the one before the current).
func (s *Service) Rollback(ctx context.Context, vm *store.VM, user string, version int) (*api.Release, error) {
	vm, unlock, err := s.lock(ctx, vm, "a rollback by "+user+" is in progress", io.Discard)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var all []*store.Release
	if err := s.Store.View(func(tx *store.Tx) (err error) { all, err = tx.Releases(vm.ID); return }); err != nil {
		return nil, err
	}
	cur := current(all)
	if cur == nil {
		return nil, fmt.Errorf("%s has no release to roll back from: %w", vm.Name, ErrNone)
	}
	var target *store.Release
	for i := len(all) - 1; i >= 0; i-- {
		r := all[i]
		if version == 0 && r.Status == store.ReleaseSucceeded && r.Version < cur.Version && r.Build != cur.Build {
			target = r
			break
		}
		if version != 0 && r.Version == version {
			target = r
		}
	}
	switch {
	case target == nil && version == 0:
		return nil, fmt.Errorf("%s has no earlier release to roll back to: %w", vm.Name, ErrNone)
	case target == nil:
		return nil, fmt.Errorf("%s has no release v%d (the last %d are kept): %w", vm.Name, version, store.KeepReleases, store.ErrNotFound)
	case target.Status != store.ReleaseSucceeded:
		return nil, fmt.Errorf("v%d %s, so it cannot be rolled back to: %w", target.Version, target.Status, ErrInvalid)
	}
	var env map[string]string
	if err := s.Store.View(func(tx *store.Tx) (err error) { env, err = tx.ReleaseEnv(target); return }); err != nil {
		return nil, err
	}
	return s.activate(ctx, vm, true, func(r *store.Release, _ map[string]string) {
		r.Description, r.Commit, r.Build, r.Env, r.User = fmt.Sprintf("Rollback to v%d", target.Version), target.Commit, target.Build, env, user
	}, env)
}

// configKeyRE is what a config var may be called: a letter or _ first, then
// letters, digits and _, plus the . : / - that tools' own variables use
// (bundler's BUNDLE_MIRROR__HTTPS://RUBYGEMS__ORG/).
var configKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.:/-]*$`)

// Bounds on an app's config vars: each is passed in every release's
// environment and stored with it.
const (
	MaxConfigVars  = 1000
	MaxConfigValue = 64 << 10
	MaxConfigSize  = 1 << 20 // names and values together
	maxConfigName  = 256
)

// checkConfig refuses vars beyond the bounds.
func checkConfig(c map[string]string) error {
	if len(c) > MaxConfigVars {
		return fmt.Errorf("%d config vars: an app may have at most %d: %w", len(c), MaxConfigVars, ErrInvalid)
	}
	total := 0
	for k, v := range c {
		if len(v) > MaxConfigValue {
			return fmt.Errorf("config var %s is %d KiB: a value may be at most %d KiB: %w", k, len(v)>>10, MaxConfigValue>>10, ErrInvalid)
		}
		total += len(k) + len(v)
	}
	if total > MaxConfigSize {
		return fmt.Errorf("config vars of %d KiB: an app's may total at most %d KiB: %w", total>>10, MaxConfigSize>>10, ErrInvalid)
	}
	return nil
}

// SetConfig changes vm's config vars; when the app has a release, it makes a
// new one with them and restarts the processes into it.
func (s *Service) SetConfig(ctx context.Context, vm *store.VM, user string, change api.ConfigChange) (*api.Config, error) {
	var names []string
	for k := range change.Set {
		if !configKeyRE.MatchString(k) || len(k) > maxConfigName {
			return nil, fmt.Errorf("config var name %q: use letters, digits, _ and . : / - (a letter or _ first, at most %d): %w", k, maxConfigName, ErrInvalid)
		}
		if k == "PORT" {
			return nil, fmt.Errorf("PORT is set by fcm (the VM's port): %w", ErrInvalid)
		}
		names = append(names, k)
	}
	for _, k := range change.Unset {
		if !configKeyRE.MatchString(k) || len(k) > maxConfigName {
			return nil, fmt.Errorf("config var name %q: %w", k, ErrInvalid)
		}
		names = append(names, k)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("nothing to set or unset: %w", ErrInvalid)
	}
	slices.Sort(names)
	verb := "Set"
	if len(change.Set) == 0 {
		verb = "Unset"
	}
	vm, unlock, err := s.lock(ctx, vm, "a config change by "+user+" is in progress", io.Discard)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var cfg map[string]string
	var cur *store.Release
	err = s.Store.Update(func(tx *store.Tx) error {
		c, err := tx.Config(vm.ID)
		if err != nil {
			return err
		}
		for k, v := range change.Set {
			c[k] = v
		}
		for _, k := range change.Unset {
			delete(c, k)
		}
		if err := checkConfig(c); err != nil {
			return err
		}
		cfg = c
		all, err := tx.Releases(vm.ID)
		cur = current(all)
		if err != nil || cur != nil {
			return err // the release below stores the vars once it succeeded
		}
		return tx.PutConfig(vm.ID, c)
	})
	if err != nil || cur == nil {
		return &api.Config{Vars: cfg}, err
	}
	rel, err := s.activate(ctx, vm, true, func(r *store.Release, _ map[string]string) {
		r.Description, r.Commit, r.Build, r.Env, r.User = fmt.Sprintf("%s %s config vars", verb, strings.Join(names, ", ")), cur.Commit, cur.Build, cfg, user
	}, cfg)
	if err != nil {
		return nil, err
	}
	return &api.Config{Vars: cfg, Release: rel}, nil
}

// Config returns vm's config vars.
func (s *Service) Config(vm *store.VM) (map[string]string, error) {
	var cfg map[string]string
	err := s.Store.View(func(tx *store.Tx) (err error) { cfg, err = tx.Config(vm.ID); return })
	return cfg, err
}

// activate records a release made by fill (no build: it runs an existing one),
// switches the VM to it and, when it succeeds, makes cfg the app's config
// vars. The caller holds the app's lock, and vm is as read under it.
func (s *Service) activate(ctx context.Context, vm *store.VM, runRelease bool, fill func(*store.Release, map[string]string), cfg map[string]string) (*api.Release, error) {
	if vm.State != api.StateRunning {
		return nil, fmt.Errorf("%s is %s: start it first (fcm start %s): %w", vm.Name, vm.State, vm.Name, ErrInvalid)
	}
	last := &tail{size: 64 << 10}
	out := &lineWriter{w: last}
	rel, prev, err := s.newRelease(vm.ID, fill)
	if err != nil {
		return nil, err
	}
	defer out.record(s, vm.ID, rel.Version)()
	fmt.Fprintf(out, "-----> %s: %s v%d\n", rel.Description, vm.Name, rel.Version)
	spec := release.Spec{Version: rel.Version, Build: rel.Build, Commit: rel.Commit, Port: vm.Port, Env: rel.Env, RunRelease: runRelease}
	runErr := s.runGuest(context.WithoutCancel(ctx), vm, release.DeployRequest{Spec: spec}, nil, out)
	if err := s.finish(vm, rel, prev, runErr, out); err != nil {
		return nil, fmt.Errorf("v%d failed: %s (%s): %w", rel.Version, guest.Truncate([]byte(rel.Reason), 512), tailOf(last.String()), ErrFailed)
	}
	if err := s.Store.Update(func(tx *store.Tx) error { return tx.PutConfig(vm.ID, cfg) }); err != nil {
		return nil, err
	}
	a := toAPI(rel, rel)
	return &a, nil
}

// tailOf keeps the app's last output lines from a release's transcript.
func tailOf(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "       ") {
			lines = append(lines, guest.Truncate([]byte(strings.TrimSpace(l)), 200))
		}
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return "last output: " + strings.Join(lines, " | ")
}

// PS lists the app's processes.
func (s *Service) PS(ctx context.Context, vm *store.VM) ([]api.Process, error) {
	c, err := s.Guests.Shared(vm)
	if err != nil {
		return nil, err
	}
	out, err := c.Run(ctx, "/usr/sbin/fcm-init guest ps")
	if err != nil {
		return nil, err
	}
	procs := []api.Process{}
	return procs, json.Unmarshal(out, &procs)
}

// Restart starts the current release again beside itself and switches to it.
func (s *Service) Restart(ctx context.Context, vm *store.VM) error {
	vm, unlock, err := s.lock(ctx, vm, "a restart is in progress", io.Discard)
	if err != nil {
		return err
	}
	defer unlock()
	c, err := s.Guests.Shared(vm)
	if err != nil {
		return err
	}
	if out, err := c.Run(ctx, "/usr/sbin/fcm-init guest restart"); err != nil {
		return fmt.Errorf("restart %s: %v: %s: %w", vm.Name, err, bytes.TrimSpace(out), ErrFailed)
	}
	return nil
}

// shellQuote quotes args for the guest's shell.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// Logs writes the app's last n log lines to w and, with follow, new ones as
// they come until ctx ends.
func (s *Service) Logs(ctx context.Context, vm *store.VM, n int, follow bool, w io.Writer) error {
	args := []string{"tail", "-n", fmt.Sprint(n)}
	if follow {
		args = append(args, "-F")
	}
	args = append(args, release.LogFile)
	_, err := s.stream(ctx, vm, shellQuote(args)+" 2>/dev/null", nil, w)
	return err
}

// Run runs a one-off command in the current release and returns its exit status.
func (s *Service) Run(ctx context.Context, vm *store.VM, argv []string, w io.Writer) (int, error) {
	if len(argv) == 0 {
		return 0, fmt.Errorf("no command to run: %w", ErrInvalid)
	}
	return s.stream(ctx, vm, "/usr/sbin/fcm-init guest run -- "+shellQuote(argv), nil, w)
}

// stream runs cmd in the VM with its output (stdout and stderr) written to w as
// it comes, and returns its exit status; ctx ending stops it.
func (s *Service) stream(ctx context.Context, vm *store.VM, cmd string, stdin io.Reader, w io.Writer) (int, error) {
	if !s.startStream(vm) {
		return 0, fmt.Errorf("%s already streams %d logs or commands: end one first: %w", vm.Name, MaxStreams, ErrBusy)
	}
	defer s.endStream(vm)
	c, err := s.Guests.Shared(vm)
	if err != nil {
		return 0, err
	}
	// A write that fails (the client went away or stopped reading) ends it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w = &aliveWriter{w: w, gone: cancel}
	sess, err := c.Session(ctx)
	if err != nil {
		return 0, fmt.Errorf("connect to %s: %w", vm.Name, err)
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, w, w
	stop := context.AfterFunc(ctx, func() { sess.Signal(ssh.SIGKILL); sess.Close() })
	defer stop()
	err = sess.Run(cmd)
	var ee *ssh.ExitError
	switch {
	case ctx.Err() != nil:
		return 0, nil
	case errors.As(err, &ee):
		return ee.ExitStatus(), nil
	}
	return 0, err
}

// Output opens what a release printed (its build, release command, switch),
// at most MaxTranscript; the caller closes it.
func (s *Service) Output(vm *store.VM, version int) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(s.outputDir(vm.ID), fmt.Sprintf("v%d.log", version)), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s has no output of v%d (the last %d releases' are kept): %w", vm.Name, version, keepOutputs, store.ErrNotFound)
	}
	return f, err
}

// MaxStreams bounds the logs and one-off commands streaming from one VM at once.
const MaxStreams = 16

func (s *Service) startStream(vm *store.VM) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams == nil {
		s.streams = map[string]int{}
	}
	if s.streams[vm.ID] >= MaxStreams {
		return false
	}
	s.streams[vm.ID]++
	return true
}

func (s *Service) endStream(vm *store.VM) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams[vm.ID]--; s.streams[vm.ID] <= 0 {
		delete(s.streams, vm.ID)
	}
}

package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"

	"github.com/fcmhost/fcm/internal/store"
)

// gitRun is one run of `git receive-pack` or `git upload-pack` on a VM's
// repository, the same for git's HTTP and SSH transports: receive-pack gets
// fcm's hooks and the one-time token its pre-receive hook calls back with.
type gitRun struct {
	Service   string // git-receive-pack or git-upload-pack
	VM        *store.VM
	Token     *store.Token // who pushes
	Stateless bool         // --stateless-rpc (HTTP)
	Protocol  string       // GIT_PROTOCOL from the client, "" for none
	Stdin     io.Reader
	Stdout    io.Writer
	Stderr    io.Writer // nil: discarded
}

// errGitStart says git could not be started at all (nothing was written).
var errGitStart = errors.New("cannot run git")

// mayUse reports whether tok may use vm's repository: its owner, or an admin.
func mayUse(tok *store.Token, vm *store.VM) bool { return tok.Admin || vm.Owner == tok.Owner() }

// runGit runs g to its end. ctx ending (the client went away) kills git's
// process group, hook and build included. The error is git's exit (an
// *exec.ExitError), errGitStart, a *PushRefused (nothing was run), or ctx's.
func (s *Service) runGit(ctx context.Context, g gitRun) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.Live != nil {
		// Revoking the token (or its user, or the VM changing hands) ends it.
		defer s.Live(g.Token, g.VM.ID, func(string) { cancel() })()
	}
	repo := s.repoOf(g.VM)
	var extra []string
	if g.Protocol != "" {
		extra = append(extra, "GIT_PROTOCOL="+g.Protocol)
	}
	var args []string
	var p *push
	var limit int64
	if g.Service == "git-receive-pack" {
		adm, err := s.admitPush(ctx, g.VM)
		if err != nil {
			return err
		}
		defer adm.done()
		limit = adm.Limit
		// On the command line, so that no repository's config can undo them.
		args = []string{"-c", "core.hooksPath=" + s.hooksDir(), "-c", "receive.fsckObjects=true",
			"-c", fmt.Sprintf("receive.maxInputSize=%d", adm.Limit)}
		p = s.newPush(g.VM, g.Token, cancel)
		defer s.endPush(p)
		s.watchReceived(p.token, adm.freeApp)
		defer s.packReceived(p.token)
		extra = append(extra, "FCM_PUSH_TOKEN="+p.token, "FCM_DAEMON_URL="+s.DaemonURL)
	}
	args = append(args, strings.TrimPrefix(g.Service, "git-"))
	if g.Stateless {
		args = append(args, "--stateless-rpc")
	}
	args = append(args, repo)
	cmd := exec.Command("git", args...)
	cmd.Env = s.gitEnv(extra...)
	cmd.Stdout, cmd.Stderr = g.Stdout, g.Stderr
	// Its own process group, so a pusher who goes away takes the hook with it;
	// and gone with the daemon, so a push never outlives it. As the git user.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s.asGitUser(cmd.SysProcAttr)
	// A request body is read by exec, which Wait waits for: it must not be read
	// after the handler returns. An SSH channel is copied here instead: Wait
	// must not wait for a client that sends nothing more once git is done.
	var stdin io.WriteCloser
	if g.Stateless {
		cmd.Stdin = g.Stdin
	} else {
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			return fmt.Errorf("%w: %v", errGitStart, err)
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: %v", errGitStart, err)
	}
	if stdin != nil {
		go func() {
			io.Copy(stdin, g.Stdin)
			stdin.Close()
		}()
	}
	stop := context.AfterFunc(ctx, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer stop()
	err := cmd.Wait()
	if g.Stateless && limit > 0 && ctx.Err() == nil {
		// A pack over the limit ends receive-pack early, but HTTP clients read
		// its answer only once they have sent their request: up to the limit
		// (and a MiB) more is read and dropped, so that a push of up to twice
		// the limit gets git's message; then the connection is closed.
		io.Copy(io.Discard, io.LimitReader(g.Stdin, limit+1<<20))
	}
	if ctx.Err() != nil {
		err = ctx.Err()
	} else if err != nil {
		s.Log.Warn("git", "service", g.Service, "vm", g.VM.Name, "err", err)
	}
	var ref string
	if p != nil {
		s.mu.Lock()
		ref = p.deployedRef
		s.mu.Unlock()
	}
	if ref != "" {
		// Clones check out what runs.
		s.gitCommand("-C", repo, "symbolic-ref", "HEAD", ref).Run()
	}
	return err
}

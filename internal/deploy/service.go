// Package deploy is the host's side of git push deploys: a bare repository per
// VM served over git's smart HTTP protocol, the pre-receive hook's callback
// that builds the pushed tree inside the app's VM, releases (deploys, config
// changes, rollbacks) recorded in the store, and one deploy at a time per app.
package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/release"
	"github.com/fcmhost/fcm/internal/store"
	fcmvm "github.com/fcmhost/fcm/internal/vm"
	"golang.org/x/crypto/ssh"
)

// Guests gives SSH connections to VMs.
type Guests interface {
	// Shared returns the client a running VM's commands share (one
	// connection per VM, closed with the VM); callers do not close it.
	Shared(vm *store.VM) (*guest.Client, error)
}

// Service runs deploys.
type Service struct {
	DataDir   string
	Store     *store.Store
	Guests    Guests
	HookBin   string                 // the fcm binary the hook runs
	DaemonURL string                 // where the hook calls back, e.g. http://127.0.0.1:7777
	URL       func(*store.VM) string // the app's public URL, "" for none
	Log       *slog.Logger
	// MaxOutput and BuildTimeout bound each release: what it may print, how
	// long it may take (zero: DefaultMaxOutput, DefaultBuildTimeout).
	MaxOutput    int64
	BuildTimeout time.Duration
	// DiskReserve is the free space on DataDir's filesystem below which
	// pushes are refused (fcm daemon --disk-reserve; zero: the vm default).
	DiskReserve int64
	// Live, when set, records a git push or fetch of tok on VM vmID as a live
	// connection: end is called once the token may no longer act on it
	// (revoked, its user denied or removed); the returned func forgets it.
	Live func(tok *store.Token, vmID string, end func(reason string)) (forget func())
	// Awake, when set, returns a VM running, waking it first if it sleeps
	// (suspended), and counts it in use until done is called.
	Awake func(ctx context.Context, vm *store.VM) (woke *store.VM, done func(), err error)
	// Deployed, when set, is told of each deploy (a push's release) once it
	// ended: the app's VM, who pushed, the release and its commit, how it
	// went (err nil: released) and how long it took from its build's start.
	Deployed func(vm *store.VM, user string, version int, commit string, err error, took time.Duration)
	Git      GitOptions // git's limits and unprivileged user (gitlimits.go)
	gitState            // receive-packs and SSH handshakes in progress (gitlimits.go)

	mu     sync.Mutex
	pushes map[string]*push    // push token -> push
	locks  map[string]*appLock // vm id -> its deploy lock
	// abandoned holds the ids of VMs destroyed (or being destroyed): their
	// apps' locks are refused.
	abandoned map[string]bool
	streams   map[string]int // vm id -> logs and commands streaming from it
}

// diskReserve is the free space below which pushes are refused.
func (s *Service) diskReserve() int64 {
	if s.DiskReserve > 0 {
		return s.DiskReserve
	}
	return fcmvm.DefaultDiskReserve
}

// push is one receive-pack in progress; its hook proves itself with token.
type push struct {
	token       string
	vm          *store.VM // the VM as authorized when the push began
	user        string    // who pushes: an email, or "admin"
	cancel      func()    // ends the push: its git, hook and deploy
	deployedRef string    // set under Service.mu once the deploy succeeded
	unlock      func()    // the app's deploy lock, held until receive-pack is done
}

func (s *Service) newPush(vm *store.VM, tok *store.Token, cancel func()) *push {
	b := make([]byte, 24)
	rand.Read(b)
	p := &push{token: hex.EncodeToString(b), vm: vm, user: Person(s.Store, tok), cancel: cancel}
	s.mu.Lock()
	if s.pushes == nil {
		s.pushes = map[string]*push{}
	}
	s.pushes[p.token] = p
	s.mu.Unlock()
	return p
}

// endPush forgets p once its receive-pack has ended, and lets the next
// deploy of the app go: only now has git moved the branch (or not).
func (s *Service) endPush(p *push) {
	s.mu.Lock()
	delete(s.pushes, p.token)
	unlock := p.unlock
	p.unlock = nil
	s.mu.Unlock()
	if unlock != nil {
		unlock()
	}
}

// Person names who tok acts for in an app's records: the user's email, or
// "admin" for the admin token.
func Person(st *store.Store, tok *store.Token) string {
	if tok.User == "" {
		if tok.Admin {
			return "admin"
		}
		return tok.Name
	}
	var u *store.User
	if err := st.View(func(tx *store.Tx) (err error) { u, err = tx.User(tok.User); return }); err != nil || u.Email == "" {
		return tok.User
	}
	return u.Email
}

// PushHandler answers the pre-receive hook (POST /internal/push): the body is
// the pushed tree as a tar; the response streams the build's output and ends
// with the trailer Fcm-Exit.
func (s *Service) PushHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, upd, status, bad := s.takePush(r) // pushcheck.go: one-time token, checked headers
		if bad != nil {
			http.Error(w, bad.Error(), status)
			return
		}
		// The tree is read while the output is written.
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			s.Log.Warn("push: full duplex", "err", err)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Trailer", "Fcm-Exit")
		w.WriteHeader(http.StatusOK)
		// The pusher going away (the hook's connection closing, or a write
		// not taken within WriteTimeout) cancels the deploy: found by the
		// request's context, or by a write failing; quiet steps get a sign of
		// life every KeepAlive, so a write comes soon.
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		out := &lineWriter{w: &aliveWriter{w: ClientWriter{w}, gone: cancel}}
		stopAlive := out.keepAlive(ctx, KeepAlive)
		err := s.deploy(ctx, p, upd, r.Body, out)
		stopAlive()
		if ctx.Err() != nil {
			s.Log.Info("push canceled: the pusher went away", "vm", p.vm.Name, "vm_id", p.vm.ID)
		}
		code := "0"
		if err != nil {
			code = "1"
		} else {
			s.mu.Lock()
			p.deployedRef = r.Header.Get("Fcm-Ref")
			s.mu.Unlock()
		}
		w.Header().Set("Fcm-Exit", code)
	})
}

// KeepAlive is how long a deploy may be quiet before it prints a sign of life.
var KeepAlive = 20 * time.Second

func short(commit string) string {
	if len(commit) > 7 {
		return commit[:7]
	}
	return commit
}

// deploy builds tree in the VM as a new release and switches to it.
func (s *Service) deploy(ctx context.Context, p *push, upd RefUpdate, tree io.Reader, out *lineWriter) error {
	commit, ref := upd.New, upd.Ref
	vm, unlock, err := s.lock(ctx, p.vm, fmt.Sprintf("a deploy of %s by %s is in progress", short(commit), p.user), out)
	if errors.Is(err, store.ErrNotFound) {
		fmt.Fprintf(out, " !     no app named %q\n", p.vm.Name)
		return err
	}
	if err != nil {
		fmt.Fprintf(out, " !     %v\n", err)
		return err
	}
	// Held until receive-pack has moved the branch (endPush), so that a push
	// waiting behind this one sees where it went.
	s.mu.Lock()
	p.unlock = unlock
	s.mu.Unlock()
	// A push that waited for another must not undo it: git would refuse to move
	// the branch afterwards anyway, and the app would run what no branch holds.
	if now := s.refValue(vm.ID, ref); upd.Old != "" && now != upd.Old {
		fmt.Fprintf(out, " !     %s moved to %s while this push waited (another deploy): fetch, merge or rebase, and push again\n",
			strings.TrimPrefix(ref, "refs/heads/"), short(now))
		return fmt.Errorf("ref moved")
	}
	if s.Awake != nil {
		sleeping := vm.State == api.StateSuspended || vm.State == api.StateSuspending || vm.State == api.StateWaking
		if sleeping {
			fmt.Fprintf(out, "-----> Waking %s...\n", vm.Name)
		}
		t := time.Now()
		woke, done, err := s.Awake(ctx, vm)
		if err != nil {
			fmt.Fprintf(out, " !     %s could not be woken: %v; start it with 'fcm start %s', then push again\n", vm.Name, err, vm.Name)
			return err
		}
		defer done()
		if sleeping {
			fmt.Fprintf(out, "       %s is awake (%d ms)\n", vm.Name, time.Since(t).Milliseconds())
		}
		vm = woke
	}
	if vm.State == api.StatePaused {
		fmt.Fprintf(out, " !     %s is paused: %s; it resumes by itself once space is freed on the host, then push again\n", vm.Name, vm.Reason)
		return fmt.Errorf("vm paused")
	}
	if vm.State != api.StateRunning {
		fmt.Fprintf(out, " !     %s is %s: start it with 'fcm start %s', then push again\n", vm.Name, vm.State, vm.Name)
		return fmt.Errorf("vm not running")
	}
	if err := fcmvm.CheckFreeSpace(s.DataDir, s.diskReserve(), "the host's reserve"); err != nil {
		fmt.Fprintf(out, " !     %v: free some space on the host, then push again\n", err)
		return err
	}
	rel, prev, err := s.newRelease(vm.ID, func(r *store.Release, cfg map[string]string) {
		r.Description, r.Commit, r.Build, r.User, r.Env = "Deploy "+short(commit), commit, r.Version, p.user, cfg
	})
	if err != nil {
		return err
	}
	defer out.record(s, vm.ID, rel.Version)()
	fmt.Fprintf(out, "-----> Building %s v%d from %s (%s)\n", vm.Name, rel.Version, short(commit), strings.TrimPrefix(ref, "refs/heads/"))
	spec := release.Spec{Version: rel.Version, Build: rel.Build, Commit: commit, Port: vm.Port, Env: rel.Env, RunRelease: true}
	t := time.Now()
	err = s.runGuest(ctx, vm, release.DeployRequest{Spec: spec, Build: true}, tree, out)
	err = s.finish(vm, rel, prev, err, out)
	if s.Deployed != nil {
		s.Deployed(vm, p.user, rel.Version, commit, err, time.Since(t))
	}
	return err
}

// refValue is ref's commit in the repository of app vmID, the zero id when it has none.
func (s *Service) refValue(vmID, ref string) string {
	out, err := s.gitCommand("-C", s.RepoPath(vmID), "rev-parse", "--verify", "-q", ref).Output()
	if err != nil {
		return zeroRev
	}
	return strings.TrimSpace(string(out))
}

// newRelease records the next release of app vmID as pending; fill sets what
// it is, given the app's config vars. It also returns the current (last
// succeeded) release, nil if none.
func (s *Service) newRelease(vmID string, fill func(r *store.Release, cfg map[string]string)) (*store.Release, *store.Release, error) {
	var rel, prev *store.Release
	err := s.Store.Update(func(tx *store.Tx) error {
		all, err := tx.Releases(vmID)
		if err != nil {
			return err
		}
		cfg, err := tx.Config(vmID)
		if err != nil {
			return err
		}
		rel = &store.Release{VM: vmID, Version: 1, Status: store.ReleasePending, CreatedAt: time.Now().UTC()}
		if len(all) > 0 {
			rel.Version = all[len(all)-1].Version + 1
		}
		prev = current(all)
		fill(rel, cfg)
		return tx.PutRelease(rel)
	})
	return rel, prev, err
}

// finish records how a release ended and tells the person deploying.
func (s *Service) finish(vm *store.VM, rel, prev *store.Release, runErr error, out *lineWriter) error {
	rel.FinishedAt = time.Now().UTC()
	rel.Status = store.ReleaseSucceeded
	if runErr != nil {
		rel.Status = store.ReleaseFailed
		rel.Reason = out.reason
		if rel.Reason == "" || errors.Is(runErr, ErrOutputTooLarge) {
			rel.Reason = runErr.Error()
		}
	}
	if err := s.Store.Update(func(tx *store.Tx) error { return tx.PutRelease(rel) }); err != nil {
		return err
	}
	if runErr != nil {
		keeps := "nothing was running before, so nothing is served yet"
		if prev != nil {
			keeps = fmt.Sprintf("v%d keeps serving", prev.Version)
		}
		fmt.Fprintf(out, " !     Deploy failed: %s\n !     v%d was not released; %s.\n", rel.Reason, rel.Version, keeps)
		return runErr
	}
	fmt.Fprintf(out, "-----> Deploy successful! v%d is live\n", rel.Version)
	if u := s.URL(vm); u != "" {
		fmt.Fprintf(out, "       %s\n", u)
	}
	return nil
}

// runGuest runs the guest agent with req and (for a build) the tree, streaming
// its output to out; ctx ending, BuildTimeout passing or the output going
// over MaxOutput stops it in the guest.
func (s *Service) runGuest(ctx context.Context, vm *store.VM, req release.DeployRequest, tree io.Reader, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, s.buildTimeout())
	defer cancel()
	c, err := s.Guests.Shared(vm)
	if err != nil {
		return err
	}
	sess, err := c.Session(ctx)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", vm.Name, err)
	}
	defer sess.Close()
	stdin, err := sess.StdinPipe()
	if err != nil {
		return err
	}
	over := make(chan struct{})
	lim := &limited{w: out, max: s.maxOutput(), over: func() { close(over) }}
	sess.Stdout, sess.Stderr = lim, lim
	if err := sess.Start("/usr/sbin/fcm-init guest deploy"); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	go func() {
		// The request, then the tree; stdin stays open until the agent is done:
		// its end is the agent's signal to cancel.
		line, _ := json.Marshal(req)
		stdin.Write(append(line, '\n'))
		if tree != nil {
			io.Copy(stdin, tree)
		}
	}()
	stop := func() {
		stdin.Close()
		sess.Signal(ssh.SIGKILL)
		sess.Close()
	}
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("the build in %s failed: %w", vm.Name, err)
		}
		return nil
	case <-over:
		stop()
		return fmt.Errorf("the release printed more than %d MiB, so it was stopped: %w", s.maxOutput()>>20, ErrOutputTooLarge)
	case <-ctx.Done():
		stop()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("the release took longer than %s, so it was stopped", s.buildTimeout())
		}
		return errors.New("canceled: the pusher went away")
	}
}

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
)

// Guests opens SSH connections to VMs.
type Guests interface {
	Client(vm *store.VM) (*guest.Client, error)
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
	Git       GitOptions // git's limits and unprivileged user (gitlimits.go)
	gitState             // receive-packs and SSH handshakes in progress (gitlimits.go)

	mu     sync.Mutex
	pushes map[string]*push    // push token -> push
	locks  map[string]*appLock // vm name -> its deploy lock
}

// push is one receive-pack in progress; its hook proves itself with token.
type push struct {
	token       string
	vm          string
	user        string
	deployedRef string // set under Service.mu once the deploy succeeded
	unlock      func() // the app's deploy lock, held until receive-pack is done
}

// appLock serializes what changes an app's release, saying who holds it.
type appLock struct {
	ch     chan struct{}
	holder string
	since  time.Time
}

func (s *Service) newPush(vm string, tok *store.Token) *push {
	b := make([]byte, 24)
	rand.Read(b)
	p := &push{token: hex.EncodeToString(b), vm: vm, user: tok.Name}
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

// lock takes VM name's deploy lock, telling out when it has to wait.
func (s *Service) lock(ctx context.Context, name, what string, out io.Writer) (func(), error) {
	s.mu.Lock()
	if s.locks == nil {
		s.locks = map[string]*appLock{}
	}
	l := s.locks[name]
	if l == nil {
		l = &appLock{ch: make(chan struct{}, 1)}
		s.locks[name] = l
	}
	s.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
	default:
		s.mu.Lock()
		holder, since := l.holder, l.since
		s.mu.Unlock()
		fmt.Fprintf(out, "-----> Waiting: %s (%s ago); this one goes next\n", holder, time.Since(since).Round(time.Second))
		select {
		case l.ch <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.mu.Lock()
	l.holder, l.since = what, time.Now()
	s.mu.Unlock()
	return func() { <-l.ch }, nil
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
		// The pusher going away (the hook's connection closing) cancels the
		// deploy: found by the request's context, or by a write failing; quiet
		// steps get a sign of life every KeepAlive, so a write comes soon.
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		out := &lineWriter{w: &aliveWriter{w: flushWriter{w}, gone: cancel}}
		stopAlive := out.keepAlive(ctx, KeepAlive)
		err := s.deploy(ctx, p, upd, r.Body, out)
		stopAlive()
		if ctx.Err() != nil {
			s.Log.Info("push canceled: the pusher went away", "vm", p.vm)
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

// lineWriter remembers the last " !" line written, the reason a deploy failed,
// and when anything was last written.
type lineWriter struct {
	w      io.Writer
	mu     sync.Mutex
	reason string
	last   time.Time
	tee    io.Writer // the release's transcript on the host, once it has one
}

// record copies what follows into the release's transcript; the returned func
// closes it.
func (l *lineWriter) record(s *Service, vm string, version int) func() {
	f, err := s.createOutput(vm, version)
	if err != nil {
		s.Log.Warn("release output", "vm", vm, "version", version, "err", err)
		return func() {}
	}
	l.mu.Lock()
	l.tee = f
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		l.tee = nil
		l.mu.Unlock()
		f.Close()
	}
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.last = time.Now()
	for _, line := range strings.Split(string(p), "\n") {
		if r, ok := strings.CutPrefix(line, " !     "); ok && !strings.HasPrefix(r, "The app's last lines") {
			l.reason = strings.TrimSpace(r)
		}
	}
	if l.tee != nil {
		l.tee.Write(p)
	}
	l.mu.Unlock()
	return l.w.Write(p)
}

// keepAlive prints a line whenever nothing was written for every; the
// returned func stops it.
func (l *lineWriter) keepAlive(ctx context.Context, every time.Duration) func() {
	ctx, cancel := context.WithCancel(ctx)
	start := time.Now()
	l.mu.Lock()
	l.last = start
	l.mu.Unlock()
	go func() {
		tick := time.NewTicker(every / 4)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			l.mu.Lock()
			quiet := time.Since(l.last)
			l.mu.Unlock()
			if quiet >= every {
				fmt.Fprintf(l, "       ... still working (%s)\n", time.Since(start).Round(time.Second))
			}
		}
	}()
	return cancel
}

// aliveWriter calls gone once a write fails: the reader went away.
type aliveWriter struct {
	w    io.Writer
	gone func()
}

func (a *aliveWriter) Write(p []byte) (int, error) {
	n, err := a.w.Write(p)
	if err != nil {
		a.gone()
	}
	return n, err
}

func short(commit string) string {
	if len(commit) > 7 {
		return commit[:7]
	}
	return commit
}

// deploy builds tree in the VM as a new release and switches to it.
func (s *Service) deploy(ctx context.Context, p *push, upd RefUpdate, tree io.Reader, out *lineWriter) error {
	commit, ref := upd.New, upd.Ref
	unlock, err := s.lock(ctx, p.vm, fmt.Sprintf("a deploy of %s by %s is in progress", short(commit), p.user), out)
	if err != nil {
		return err
	}
	// Held until receive-pack has moved the branch (endPush), so that a push
	// waiting behind this one sees where it went.
	s.mu.Lock()
	p.unlock = unlock
	s.mu.Unlock()
	// A push that waited for another must not undo it: git would refuse to move
	// the branch afterwards anyway, and the app would run what no branch holds.
	if now := s.refValue(p.vm, ref); upd.Old != "" && now != upd.Old {
		fmt.Fprintf(out, " !     %s moved to %s while this push waited (another deploy): fetch, merge or rebase, and push again\n",
			strings.TrimPrefix(ref, "refs/heads/"), short(now))
		return fmt.Errorf("ref moved")
	}
	vm, err := s.Store.GetVM(p.vm)
	if err != nil {
		fmt.Fprintf(out, " !     no app named %q\n", p.vm)
		return err
	}
	if vm.State != api.StateRunning {
		fmt.Fprintf(out, " !     %s is %s: start it with 'fcm start %s', then push again\n", vm.Name, vm.State, vm.Name)
		return fmt.Errorf("vm not running")
	}
	if err := fcmvm.CheckFreeSpace(s.DataDir, fcmvm.DefaultDiskReserve, "the host's reserve"); err != nil {
		fmt.Fprintf(out, " !     %v: free some space on the host, then push again\n", err)
		return err
	}
	rel, prev, err := s.newRelease(vm.Name, func(r *store.Release, cfg map[string]string) {
		r.Description, r.Commit, r.Build, r.User, r.Env = "Deploy "+short(commit), commit, r.Version, p.user, cfg
	})
	if err != nil {
		return err
	}
	defer out.record(s, vm.Name, rel.Version)()
	fmt.Fprintf(out, "-----> Building %s v%d from %s (%s)\n", vm.Name, rel.Version, short(commit), strings.TrimPrefix(ref, "refs/heads/"))
	spec := release.Spec{Version: rel.Version, Build: rel.Build, Commit: commit, Port: vm.Port, Env: rel.Env, RunRelease: true}
	err = s.runGuest(ctx, vm, release.DeployRequest{Spec: spec, Build: true}, tree, out)
	return s.finish(vm, rel, prev, err, out)
}

// refValue is ref's commit in vm's repository, the zero id when it has none.
func (s *Service) refValue(vm, ref string) string {
	out, err := s.gitCommand("-C", s.RepoPath(vm), "rev-parse", "--verify", "-q", ref).Output()
	if err != nil {
		return zeroRev
	}
	return strings.TrimSpace(string(out))
}

// newRelease records the next release of vm as pending; fill sets what it is.
// It also returns the current (last succeeded) release, nil if none.
func (s *Service) newRelease(vm string, fill func(r *store.Release, cfg map[string]string)) (*store.Release, *store.Release, error) {
	var rel, prev *store.Release
	err := s.Store.Update(func(tx *store.Tx) error {
		all, err := tx.Releases(vm)
		if err != nil {
			return err
		}
		cfg, err := tx.Config(vm)
		if err != nil {
			return err
		}
		rel = &store.Release{VM: vm, Version: 1, Status: store.ReleasePending, CreatedAt: time.Now().UTC()}
		if len(all) > 0 {
			rel.Version = all[len(all)-1].Version + 1
		}
		for _, r := range all {
			if r.Status == store.ReleaseSucceeded {
				prev = r
			}
		}
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
		if rel.Reason == "" {
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
// its output; ctx ending cancels it in the guest.
func (s *Service) runGuest(ctx context.Context, vm *store.VM, req release.DeployRequest, tree io.Reader, out io.Writer) error {
	c, err := s.Guests.Client(vm)
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
	sess.Stdout, sess.Stderr = out, out
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
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("the build in %s failed: %w", vm.Name, err)
		}
		return nil
	case <-ctx.Done():
		stdin.Close()
		sess.Close()
		return errors.New("canceled: the pusher went away")
	}
}

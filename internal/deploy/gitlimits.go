package deploy

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/fcmhost/fcm/internal/store"
	fcmvm "github.com/fcmhost/fcm/internal/vm"
)

// Defaults of GitOptions, the daemon's flags.
const (
	DefaultMaxPushBytes        = 1 << 30 // fcm daemon --max-push-size
	DefaultMaxRepoBytesPerUser = 5 << 30 // --max-repo-size-per-user
	DefaultMaxPushesPerUser    = 3       // --max-pushes-per-user
	DefaultMaxPushes           = 16      // --max-pushes
)

// GitOptions bound what git pushes may cost the host, and say which
// unprivileged user git runs as. A zero limit is no limit.
type GitOptions struct {
	MaxPushBytes        int64 // the largest pack one push may send (receive.maxInputSize)
	MaxRepoBytesPerUser int64 // the most disk the repositories of one user's apps may use
	MaxPushesPerUser    int   // receive-packs at once for one user's apps
	MaxPushes           int   // receive-packs at once on the host
	// UID and GID git runs as; 0 runs it as the daemon's own user (tests).
	UID, GID int
	// SSH handshakes in progress at once, on the whole and per client address;
	// 0: DefaultSSHHandshakes and DefaultSSHHandshakesPerIP.
	SSHHandshakes, SSHHandshakesPerIP int
}

// gitState is what the limits count: receive-packs in progress and SSH
// handshakes. Its own lock, apart from Service.mu.
type gitState struct {
	gmu        sync.Mutex
	pushing    int                      // receive-packs on the host
	userPushes map[string]int           // owner -> receive-packs of their apps
	reserved   map[string]int64         // owner -> pack bytes in-flight pushes may still write
	apps       map[string]chan struct{} // vm id -> held while a push of it receives its pack
	receiving  map[string]func()        // push token -> frees its app's slot (once)
	handshakes int
	perIP      map[string]int
}

// PushRefused is a push turned away before git received anything: Msg says
// why and what to do, in a line for the person pushing.
type PushRefused struct{ Msg string }

func (e *PushRefused) Error() string { return e.Msg }

// admission is a push let in: its pack may be Limit bytes at most.
type admission struct {
	Limit   int64
	freeApp func() // the app's next push may send its pack (idempotent)
	release func() // gives back the host's and the owner's counts
}

// done is for once receive-pack has ended.
func (a *admission) done() {
	a.freeApp()
	a.release()
}

// admitPush lets one receive-pack of vm start, or says why not. The host's
// and the owner's count of pushes at once are checked first (refused when
// full); then a push of an app whose previous push is still sending its pack
// waits for it (until ctx ends); then the owner's repository quota and the
// host's free space give the pack's size limit, or refuse it.
func (s *Service) admitPush(ctx context.Context, vm *store.VM) (*admission, error) {
	owner := vm.Owner
	s.gmu.Lock()
	if err := s.fullLocked(owner); err != nil {
		s.gmu.Unlock()
		return nil, err
	}
	if s.userPushes == nil {
		s.userPushes, s.reserved, s.apps = map[string]int{}, map[string]int64{}, map[string]chan struct{}{}
	}
	s.pushing++
	s.userPushes[owner]++
	app := s.apps[vm.ID]
	if app == nil {
		app = make(chan struct{}, 1)
		s.apps[vm.ID] = app
	}
	s.gmu.Unlock()
	var reserved int64
	release := func() {
		s.gmu.Lock()
		defer s.gmu.Unlock()
		s.pushing--
		if s.userPushes[owner]--; s.userPushes[owner] <= 0 {
			delete(s.userPushes, owner)
		}
		if s.reserved[owner] -= reserved; s.reserved[owner] <= 0 {
			delete(s.reserved, owner)
		}
	}
	// One pack at a time per app: the next waits until this one has been
	// received (its hook called back) or refused.
	select {
	case app <- struct{}{}:
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
	var once sync.Once
	freeApp := func() { once.Do(func() { <-app }) }
	limit, err := s.pushLimit(owner)
	if err != nil {
		freeApp()
		release()
		return nil, err
	}
	s.gmu.Lock()
	reserved = limit
	s.reserved[owner] += limit
	s.gmu.Unlock()
	return &admission{Limit: limit, freeApp: freeApp, release: release}, nil
}

// fullLocked refuses a push by owner when the host, or owner, has the most
// pushes in progress it may. s.gmu is held.
func (s *Service) fullLocked(owner string) error {
	o := s.Git
	if o.MaxPushes > 0 && s.pushing >= o.MaxPushes {
		return &PushRefused{fmt.Sprintf("the host is receiving %d pushes, the most it takes at once: push again in a minute", s.pushing)}
	}
	if n := s.userPushes[owner]; o.MaxPushesPerUser > 0 && n >= o.MaxPushesPerUser {
		return &PushRefused{fmt.Sprintf("%d pushes to your apps are in progress, the most at once (fcm daemon --max-pushes-per-user %d): push again when one has finished", n, o.MaxPushesPerUser)}
	}
	return nil
}

// checkPush says why a push of vm would be refused now (a *PushRefused), nil
// when it would be let in; git's HTTP transport asks before git sends its pack.
func (s *Service) checkPush(vm *store.VM) error {
	s.gmu.Lock()
	err := s.fullLocked(vm.Owner)
	s.gmu.Unlock()
	if err != nil {
		return err
	}
	_, err = s.pushLimit(vm.Owner)
	return err
}

// watchReceived remembers what frees the app slot of the push with token.
func (s *Service) watchReceived(token string, free func()) {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	if s.receiving == nil {
		s.receiving = map[string]func(){}
	}
	s.receiving[token] = free
}

// packReceived frees the app slot of the push with token: its pack is in
// (its hook called back, or receive-pack ended), so the app's next push may
// send its own.
func (s *Service) packReceived(token string) {
	s.gmu.Lock()
	free := s.receiving[token]
	delete(s.receiving, token)
	s.gmu.Unlock()
	if free != nil {
		free()
	}
}

// pushLimit is the largest pack a push by owner may send now: --max-push-size,
// less when the owner's quota (their repositories' size, and what their
// other pushes may still write) leaves less; refused when it leaves nothing
// or the data dir lacks the room.
func (s *Service) pushLimit(owner string) (int64, error) {
	o := s.Git
	limit := o.MaxPushBytes
	if o.MaxRepoBytesPerUser > 0 {
		// The reservations first: a push ending between the two reads is then
		// counted twice, never not at all.
		s.gmu.Lock()
		reserved := s.reserved[owner]
		s.gmu.Unlock()
		used := s.repoUsage(owner)
		left := o.MaxRepoBytesPerUser - used - reserved
		if left <= 0 {
			return 0, &PushRefused{fmt.Sprintf("your apps' repositories use %s of your %s (fcm daemon --max-repo-size-per-user); %s more may be on its way in pushes in progress: destroy an app you no longer need, or ask the host's admin for more",
				size(used), size(o.MaxRepoBytesPerUser), size(reserved))}
		}
		if limit <= 0 || left < limit {
			limit = left
		}
	}
	need := s.diskReserve() + limit
	if limit <= 0 {
		need = s.diskReserve()
	}
	if err := fcmvm.CheckFreeSpace(s.DataDir, need, "the host's reserve and the largest push"); err != nil {
		return 0, &PushRefused{fmt.Sprintf("%v: the host is short of disk space, push again later", err)}
	}
	return limit, nil
}

// repoUsage is the disk the repositories of owner's apps use, in bytes.
func (s *Service) repoUsage(owner string) int64 {
	vms, err := s.Store.ListVMs()
	if err != nil {
		return 0
	}
	var n int64
	for _, v := range vms {
		if v.Owner == owner {
			n += diskUsage(s.repoOf(v))
		}
	}
	return n
}

// diskUsage is what the files under dir take on disk (allocated blocks).
func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// size writes n bytes for people: 1.5 GiB, 20 MiB.
func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", (n+1023)/1024)
}

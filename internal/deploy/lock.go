package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/fcmhost/fcm/internal/store"
)

// LockWait bounds how long a deploy, config change, rollback or restart waits
// for the one before it.
var LockWait = 10 * time.Minute

// appLock serializes what changes an app's release, saying who holds it.
type appLock struct {
	ch     chan struct{}
	dead   chan struct{} // closed when the app is forgotten: its waiters give up
	holder string
	since  time.Time
}

// gone is the error of work authorized for vm that finds, once it may act,
// that vm is no longer there: destroyed (its name perhaps someone else's now)
// or handed to another owner.
func gone(vm *store.VM) error {
	return fmt.Errorf("no app named %q: %w", vm.Name, store.ErrNotFound)
}

// lock takes vm's deploy lock (by its id), telling out when it has to wait,
// and then checks that vm is still the VM the work was authorized for: the
// same id, the same owner. It returns vm as stored now.
func (s *Service) lock(ctx context.Context, vm *store.VM, what string, out io.Writer) (*store.VM, func(), error) {
	s.mu.Lock()
	if s.abandoned[vm.ID] {
		s.mu.Unlock()
		return nil, nil, gone(vm)
	}
	if s.locks == nil {
		s.locks = map[string]*appLock{}
	}
	l := s.locks[vm.ID]
	if l == nil {
		l = &appLock{ch: make(chan struct{}, 1), dead: make(chan struct{})}
		s.locks[vm.ID] = l
	}
	s.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
	default:
		s.mu.Lock()
		holder, since := l.holder, l.since
		s.mu.Unlock()
		fmt.Fprintf(out, "-----> Waiting: %s (%s ago); this one goes next\n", holder, time.Since(since).Round(time.Second))
		wait := time.NewTimer(LockWait)
		defer wait.Stop()
		select {
		case l.ch <- struct{}{}:
		case <-l.dead:
			return nil, nil, gone(vm)
		case <-wait.C:
			return nil, nil, fmt.Errorf("%s is still busy after %s (%s): try again later: %w", vm.Name, LockWait, holder, ErrBusy)
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	unlock := func() { <-l.ch }
	cur, err := s.still(vm)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	s.mu.Lock()
	l.holder, l.since = what, time.Now()
	s.mu.Unlock()
	return cur, unlock, nil
}

// still returns vm as stored now, or gone(vm) when the record of its id is
// missing or has another owner.
func (s *Service) still(vm *store.VM) (*store.VM, error) {
	var cur *store.VM
	err := s.Store.View(func(tx *store.Tx) (err error) { cur, err = tx.VMByID(vm.ID); return })
	if errors.Is(err, store.ErrNotFound) || (err == nil && cur.Owner != vm.Owner) {
		return nil, gone(vm)
	}
	return cur, err
}

// Abandon ends the app of the VM with id vmID, which is being destroyed:
// what waits for its lock gives up, pushes in progress are canceled, and
// nothing takes its lock again (Revive undoes it, for a destroy that failed).
func (s *Service) Abandon(vmID string) { s.release(vmID) }

// Revive lets the app of vmID be worked on again after Abandon (its VM's
// destroy failed, so the VM is still there).
func (s *Service) Revive(vmID string) {
	s.mu.Lock()
	delete(s.abandoned, vmID)
	s.mu.Unlock()
}

// release ends the lock of app id and what waits or runs for it: waiters give
// up, pushes in progress are canceled and their hooks refused, and later
// locks of it are refused (VM ids are never reused).
func (s *Service) release(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.abandoned == nil {
		s.abandoned = map[string]bool{}
	}
	s.abandoned[id] = true
	if l := s.locks[id]; l != nil {
		close(l.dead)
		delete(s.locks, id)
	}
	for token, p := range s.pushes {
		if p.vm.ID == id {
			delete(s.pushes, token)
			if p.cancel != nil {
				p.cancel()
			}
		}
	}
}

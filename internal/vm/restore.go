package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// Restored is what a restore did: the checkpoint the VM is on now, and the
// automatic one of the state it replaced (a restore of that undoes it).
type Restored struct {
	VM   *store.VM
	From Checkpoint
	Undo Checkpoint
	// Took is fcm's time from the hypervisor's kill to the new disk in
	// place, before the guest's boot starts: Kill, the old hypervisor's
	// end, and Swap, the checkpoint's disk put in place, are in it.
	Took, Kill, Swap time.Duration
}

// swapNewExt names the copy of a checkpoint's disk a restore writes before
// it renames it over the VM's disk.
const swapNewExt = ".restore"

// checkpointAt reads checkpoint n of VM id's manifest.
func (m *Manager) checkpointAt(id, name string, n int) (Checkpoint, error) {
	cps, err := m.checkpoints(id)
	if err != nil {
		return Checkpoint{}, err
	}
	for _, c := range cps {
		if c.N == n {
			return c, nil
		}
	}
	return Checkpoint{}, fmt.Errorf("%w: vm %q has no checkpoint v%d (fcm checkpoint ls %s)", store.ErrNotFound, name, n, name)
}

// Restore puts VM name back on checkpoint n's disk. The state it replaces is
// saved first as a checkpoint of its own (Restored.Undo), so a restore can be
// undone. A running (or suspended) VM's hypervisor is killed: its memory
// belongs to the disk being replaced; it boots again on the restored disk. A
// stopped VM stays stopped. Every step is recorded before it acts, and the
// disk is replaced by a rename, so a crash leaves the VM on one whole disk,
// the old or the new. A non-empty id: as for Stop.
func (m *Manager) Restore(ctx context.Context, name, id string, n int, by string, progress Progress) (*Restored, error) {
	if progress == nil {
		progress = noProgress
	}
	cur, err := m.cfg.Store.GetVM(name)
	if err != nil {
		return nil, err
	}
	if id != "" && cur.ID != id {
		return nil, fmt.Errorf("%w: vm %q", store.ErrNotFound, name)
	}
	from, err := m.checkpointAt(cur.ID, name, n)
	if err != nil {
		return nil, err
	}
	switch cur.State {
	case api.StateRunning, api.StateStopped, api.StateSuspended, api.StateCrashed:
	default:
		return nil, fmt.Errorf("%w: vm %q is %s: a restore needs it running, stopped, suspended or crashed", ErrBadState, name, cur.State)
	}
	undo, err := m.createCheckpoint(ctx, name, cur.ID, Checkpoint{By: by, Auto: "before restoring " + from.ID()})
	if err != nil {
		return nil, fmt.Errorf("restore: the checkpoint of what it replaces: %w", err)
	}
	progress(cur, "checkpoint", fmt.Sprintf("%s holds the state being replaced: fcm restore %s %s undoes this", undo.ID(), name, undo.ID()))

	vm, op, prev, err := m.opFor(name, cur.ID, "restore", "restoring",
		api.StateRunning, api.StateStopped, api.StateSuspended, api.StateCrashed)
	if err != nil {
		return nil, err
	}
	ended := false
	defer func() {
		if !ended {
			m.end(name)
		}
	}()
	t := time.Now()
	if err := m.record(op, stepKill); err != nil {
		return nil, err
	}
	if err := m.killHypervisor(ctx, vm); err != nil {
		m.markError(vm.ID, op.ID, err)
		return nil, err
	}
	kill := time.Since(t)
	if err := m.record(op, stepSwap); err != nil {
		return nil, err
	}
	method, err := m.swapDisk(ctx, vm.ID, n)
	if err != nil {
		err = fmt.Errorf("restore vm %s: %w", name, err)
		// The old disk is still in place: the VM goes on from it as after a
		// crash, its undo checkpoint kept.
		if _, herr := m.halt(context.WithoutCancel(ctx), vm, op, died(err.Error(), time.Now())); herr != nil {
			m.markError(vm.ID, op.ID, herr)
		}
		return nil, err
	}
	took := time.Since(t)
	swap := took - kill
	progress(vm, "disk", fmt.Sprintf("on %s's disk (%s) in %s", from.ID(), method, took.Round(time.Millisecond)))
	t = time.Now()
	boot := prev != api.StateStopped && vm.DesiredState() == api.DesiredRunning
	out, err := m.haltTap(ctx, vm, op, to(api.StateStopped, ""), boot)
	if err != nil {
		m.markError(vm.ID, op.ID, err)
		return nil, err
	}
	m.log.Info("vm restored", "name", name, "checkpoint", from.ID(), "undo", undo.ID(), "copy", method,
		"kill", kill.Round(time.Microsecond), "swap", swap.Round(time.Microsecond), "unplug", time.Since(t).Round(time.Microsecond))
	ended = true
	m.end(name)
	if boot {
		if out, err = m.startAs(ctx, "start", name, vm.ID, progress); err != nil {
			return nil, fmt.Errorf("vm %s is on %s's disk, but its boot failed: %w", name, from.ID(), err)
		}
	}
	return &Restored{VM: out, From: from, Undo: *undo, Took: took, Kill: kill, Swap: swap}, nil
}

// killHypervisor ends VM vm's hypervisor at once, answering or not, with any
// standby waiting for it: what it holds in memory is about to be thrown away.
func (m *Manager) killHypervisor(ctx context.Context, vm *store.VM) error {
	m.dropStandby(vm.ID)
	inst, stray := m.liveInstance(ctx, vm)
	if inst == nil {
		m.setInstance(vm.ID, nil)
		return nil
	}
	err := killAndWait(ctx, inst)
	if stray != nil {
		vmm.Close(inst)
	}
	if err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	m.setInstance(vm.ID, nil)
	return nil
}

// swapDisk replaces VM id's disk with a copy of checkpoint n's: written
// beside it, flushed, then renamed over it, so the disk is whole at every
// moment. Its suspend image, made with the old disk, is discarded.
func (m *Manager) swapDisk(ctx context.Context, id string, n int) (disk.Method, error) {
	dst := filepath.Join(m.dir(id), dataFile)
	tmp := dst + swapNewExt
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	method, err := disk.Clone(ctx, filepath.Join(m.checkpointDir(id, n), dataFile), tmp)
	if err != nil {
		return "", err
	}
	if err := syncPath(tmp); err != nil {
		os.Remove(tmp)
		return "", err
	}
	m.discardImage(id)
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return method, syncPath(filepath.Dir(dst))
}

// resumeRestoreOp settles a restore a crash interrupted: a copy not yet
// renamed is removed, and the VM, on whichever whole disk it has, is left
// to boot again (restarting) if it should run, or stopped.
func (m *Manager) resumeRestoreOp(ctx context.Context, vm *store.VM, op *store.Op) error {
	os.Remove(filepath.Join(m.dir(vm.ID), dataFile+swapNewExt))
	_, err := m.halt(ctx, vm, op, again("interrupted", "its restore was interrupted by the daemon's restart", time.Now()))
	return err
}

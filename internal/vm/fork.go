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
)

// forkSource is what a fork copies: VM vm's current disk (n 0) or its
// checkpoint n.
type forkSource struct {
	vm *store.VM
	n  int
}

// Fork makes a new VM for owner, named newName (or a generated name), that
// boots on a copy of VM name's disk: its current disk (from 0), copied while
// it is still as for a checkpoint, or its checkpoint from. The fork has its
// own name, address, MAC, SSH host key and URL, the source's size and base,
// and shares nothing with it after the copy. It is a create in every other
// way (its op log, its undo on failure or after a crash). A non-empty id: as
// for Stop, of the source.
func (m *Manager) Fork(ctx context.Context, owner Owner, name, id string, from int, newName string, progress Progress) (*store.VM, error) {
	src, err := m.cfg.Store.GetVM(name)
	if err != nil {
		return nil, err
	}
	if id != "" && src.ID != id {
		return nil, fmt.Errorf("%w: vm %q", store.ErrNotFound, name)
	}
	if src.Layout != LayoutOverlay {
		return nil, invalidf("vm %s was made before bases were shared and cannot be forked: make a new vm and copy what it needs", name)
	}
	if from > 0 {
		if _, err := m.checkpointAt(src.ID, name, from); err != nil {
			return nil, err
		}
	} else if err := forkable(src); err != nil {
		return nil, err
	}
	req := api.CreateVMRequest{Name: newName, CPUs: src.CPUs, MemoryMiB: src.MemoryMiB, DiskBytes: src.DiskBytes,
		Port: src.Port, NoExpose: src.NoExpose, SuspendAfter: api.FormatSuspendAfter(src.SuspendAfter)}
	return m.create(ctx, owner, req, progress, &forkSource{vm: src, n: from})
}

// forkable refuses a VM whose disk cannot be copied now.
func forkable(v *store.VM) error {
	switch v.State {
	case api.StateRunning, api.StateStopped, api.StateSuspended, api.StateCrashed:
		return nil
	}
	return fmt.Errorf("%w: vm %q is %s: a fork of its disk needs it running, stopped, suspended or crashed", ErrBadState, v.Name, v.State)
}

// forkDisk puts a copy of src's disk in place of new VM vm's empty one, and
// says how in one line.
func (m *Manager) forkDisk(ctx context.Context, src *forkSource, vm *store.VM) (string, error) {
	t := time.Now()
	dst := filepath.Join(m.dir(vm.ID), dataFile)
	if src.n > 0 {
		method, err := cloneOver(ctx, filepath.Join(m.checkpointDir(src.vm.ID, src.n), dataFile), dst)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s's disk at v%d (%s) in %s", src.vm.Name, src.n, method, time.Since(t).Round(time.Millisecond)), nil
	}
	// Its current disk: the source is held still for the copy, as for a
	// checkpoint, under an op of its own that lets it run again after a crash.
	if err := m.begin(src.vm.Name, "forking"); err != nil {
		return "", err
	}
	defer m.end(src.vm.Name)
	cur, err := m.cfg.Store.GetVM(src.vm.Name)
	if err != nil || cur.ID != src.vm.ID {
		return "", fmt.Errorf("%w: vm %q went away", store.ErrNotFound, src.vm.Name)
	}
	if err := forkable(cur); err != nil {
		return "", err
	}
	op := &store.Op{ID: "checkpoint-" + cur.ID, Kind: "checkpoint", VMName: cur.Name, VMID: cur.ID,
		StartedAt: time.Now().UTC(), Steps: []string{stepCheckpointing}}
	if err := m.cfg.Store.Update(func(tx *store.Tx) error { return tx.PutOp(op) }); err != nil {
		return "", err
	}
	m.crashPoint(op.Kind, stepCheckpointing)
	var method disk.Method
	_, paused, err := m.stillDisk(ctx, cur, op, func() (err error) {
		method, err = cloneOver(ctx, filepath.Join(m.dir(cur.ID), dataFile), dst)
		return err
	})
	m.endOp(op)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s's disk (%s, %s paused) in %s", cur.Name, method, paused.Round(time.Millisecond), time.Since(t).Round(time.Millisecond)), nil
}

// cloneOver copies src to a file beside dst and renames it over dst.
func cloneOver(ctx context.Context, src, dst string) (disk.Method, error) {
	tmp := dst + ".fork"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	method, err := disk.Clone(ctx, src, tmp)
	if err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return method, nil
}

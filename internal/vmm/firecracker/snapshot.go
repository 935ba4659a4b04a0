package firecracker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/vmm"
)

var (
	_ vmm.Snapshotter = (*Driver)(nil)
	_ vmm.Pauser      = (*Instance)(nil)
)

// snapshotTimeout bounds a Full snapshot, which writes all of guest memory.
const snapshotTimeout = 5 * time.Minute

// WritesMemory says that Suspend writes the guest's memory to
// spec.MemoryFile itself (a Full snapshot): a Firecracker guest's memory is
// anonymous while it runs, so any running VM can be suspended.
func (d *Driver) WritesMemory() bool { return true }

// Suspend implements vmm.Snapshotter with Firecracker's snapshot API:
// PATCH /vm Paused, then PUT /snapshot/create (Full) of the device state and
// all guest memory into new files beside StateFile and spec.MemoryFile, which
// replace them once synced (a guest restored earlier still maps the old
// memory file privately: it must not change under it), then the process is
// killed: a paused guest cannot shut down, and it must never run on.
func (d *Driver) Suspend(ctx context.Context, inst vmm.Instance, spec vmm.Spec) error {
	fi, ok := inst.(*Instance)
	if !ok {
		return fmt.Errorf("vm %s: not a firecracker instance", spec.ID)
	}
	if spec.MemoryFile == "" {
		return fmt.Errorf("vm %s: no memory file to suspend into", spec.ID)
	}
	state := filepath.Join(spec.Dir, vmm.StateFile)
	stateNew, memNew := state+".new", spec.MemoryFile+".new"
	// Firecracker (as the VM's user) creates them: nothing of an earlier
	// attempt, nor a link planted there, may be written through.
	os.Remove(stateNew)
	os.Remove(memNew)
	if err := fi.api.do(ctx, "PATCH", "/vm", vmState{State: "Paused"}, nil); err != nil {
		return fmt.Errorf("vm %s: suspend: %w", spec.ID, err)
	}
	fail := func(err error) error {
		os.Remove(stateNew)
		os.Remove(memNew)
		if rerr := fi.Resume(context.WithoutCancel(ctx)); rerr != nil {
			err = fmt.Errorf("%w; and it could not run again: %v", err, rerr)
		}
		return fmt.Errorf("vm %s: suspend: %w", spec.ID, err)
	}
	if err := fi.api.withTimeout(snapshotTimeout).do(ctx, "PUT", "/snapshot/create", snapshotCreate{
		SnapshotType: "Full", SnapshotPath: stateNew, MemFilePath: memNew,
	}, nil); err != nil {
		return fail(err)
	}
	for _, p := range []string{memNew, stateNew} {
		if err := syncFile(p); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(memNew, spec.MemoryFile); err != nil {
		return fail(err)
	}
	if err := os.Rename(stateNew, state); err != nil {
		return fail(err)
	}
	syncFile(spec.Dir)
	// From here the files are the VM: the paused guest must not run again.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	fi.Kill()
	if err := fi.Wait(wctx); err != nil {
		return fmt.Errorf("vm %s: suspended, but firecracker (pid %d) did not exit: %w", spec.ID, fi.PID(), err)
	}
	os.Remove(filepath.Join(spec.Dir, SocketFile))
	os.Remove(filepath.Join(spec.Dir, PIDFile))
	return nil
}

// syncFile flushes a file (or directory) the VM's user wrote to disk; it is
// opened without following a link.
func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Restore implements vmm.Snapshotter: a fresh firecracker process, as Start
// makes it, and PUT /snapshot/load of StateFile with spec.MemoryFile as its
// File memory backend, which Firecracker maps privately (it never writes
// it; the guest's pages come from it on first touch, so the load does not
// grow with guest memory). The guest stays paused until Resume.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec) (vmm.Instance, error) {
	if spec.MemoryFile == "" {
		return nil, fmt.Errorf("vm %s: no memory file to restore", spec.ID)
	}
	state := filepath.Join(spec.Dir, vmm.StateFile)
	for _, p := range []string{state, spec.MemoryFile} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("vm %s: %w", spec.ID, err)
		}
	}
	inst, abort, err := d.launch(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := inst.api.withTimeout(time.Minute).do(ctx, "PUT", "/snapshot/load", snapshotLoad{
		SnapshotPath: state,
		MemBackend:   memBackend{BackendType: "File", BackendPath: spec.MemoryFile},
	}, nil); err != nil {
		// Firecracker ends after a failed load; abort reaps it.
		return nil, abort(fmt.Errorf("restore: %w", err))
	}
	d.log.Info("vm restored", "id", spec.ID, "pid", inst.PID(), "hypervisor", "firecracker", "uid", spec.UID)
	return inst, nil
}

// RunState implements vmm.Pauser: Firecracker's state (GET /) in lower
// case, "running" or "paused". Firecracker never pauses a guest by itself.
func (i *Instance) RunState(ctx context.Context) (string, error) {
	info, err := i.Info(ctx)
	if err != nil {
		return "", err
	}
	return strings.ToLower(info.State), nil
}

// Resume implements vmm.Pauser: PATCH /vm Resumed.
func (i *Instance) Resume(ctx context.Context) error {
	return i.api.do(ctx, "PATCH", "/vm", vmState{State: "Resumed"}, nil)
}

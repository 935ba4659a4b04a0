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
// PATCH /vm Paused, then PUT /snapshot/create of the device state and the
// guest's memory into new files, which replace the old ones once synced, then
// the process is killed: a paused guest cannot shut down, and it must never
// run on.
//
// A guest this process booted gets a Full snapshot: all of its memory, into
// a new memory file beside spec.MemoryFile. A guest it restored from
// spec.MemoryFile (which it maps privately: the file must not change under
// it) gets a Diff snapshot: only the pages written since the load (the
// driver always turns on dirty-page tracking), into a layer beside it
// (vmm.MemoryLayerSuffix), merged onto the memory file once the process is
// gone. Until then the layer belongs to the image, and Restore merges it.
func (d *Driver) Suspend(ctx context.Context, inst vmm.Instance, spec vmm.Spec) error {
	fi, ok := inst.(*Instance)
	if !ok {
		return fmt.Errorf("vm %s: not a firecracker instance", spec.ID)
	}
	if spec.MemoryFile == "" {
		return fmt.Errorf("vm %s: no memory file to suspend into", spec.ID)
	}
	kind, memOut := "Full", spec.MemoryFile
	if fi.restored {
		kind, memOut = "Diff", spec.MemoryFile+vmm.MemoryLayerSuffix
	}
	state := filepath.Join(spec.Dir, vmm.StateFile)
	stateNew, memNew := state+".new", memOut+".new"
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
		SnapshotType: kind, SnapshotPath: stateNew, MemFilePath: memNew,
	}, nil); err != nil {
		return fail(err)
	}
	for _, p := range []string{memNew, stateNew} {
		if err := syncFile(p); err != nil {
			return fail(err)
		}
	}
	if kind == "Full" {
		// A layer left from an earlier image is not this one's.
		if err := os.Remove(spec.MemoryFile + vmm.MemoryLayerSuffix); err != nil && !os.IsNotExist(err) {
			return fail(err)
		}
	}
	// The memory first: the state file's rename makes the image whole.
	if err := os.Rename(memNew, memOut); err != nil {
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
	written := fileBytes(memOut)
	if kind == "Diff" {
		if _, err := mergeLayer(spec.MemoryFile, memOut, spec.UID); err != nil {
			// The image holds the layer still: the wake merges it.
			d.log.Warn("vm suspended; its memory layer is merged at its wake", "id", spec.ID, "err", err)
		}
	}
	d.log.Info("vm suspended", "id", spec.ID, "hypervisor", "firecracker", "snapshot", kind, "memory_written_kib", written>>10)
	return nil
}

// fileBytes is how many bytes of path's are on disk (a sparse file's holes
// are not), or 0.
func fileBytes(path string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
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

// Restore implements vmm.Snapshotter: the memory layer of a Diff snapshot
// merged onto spec.MemoryFile if Suspend could not, a fresh firecracker
// process, as Start makes it, and PUT /snapshot/load of StateFile with
// spec.MemoryFile as its File memory backend, dirty-page tracking on, which Firecracker maps privately (it never writes
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
	if layer := spec.MemoryFile + vmm.MemoryLayerSuffix; fileExists(layer) {
		n, err := mergeLayer(spec.MemoryFile, layer, spec.UID)
		if err != nil {
			return nil, fmt.Errorf("vm %s: its memory layer: %w", spec.ID, err)
		}
		d.log.Info("vm's memory layer merged before its restore", "id", spec.ID, "kib", n>>10)
	}
	inst, abort, err := d.launch(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := inst.api.withTimeout(time.Minute).do(ctx, "PUT", "/snapshot/load", snapshotLoad{
		SnapshotPath:    state,
		MemBackend:      memBackend{BackendType: "File", BackendPath: spec.MemoryFile},
		TrackDirtyPages: true, // not saved in the snapshot: its next suspend is a Diff
	}, nil); err != nil {
		// Firecracker ends after a failed load; abort reaps it.
		return nil, abort(fmt.Errorf("restore: %w", err))
	}
	inst.restored = true
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

// Pause implements vmm.Pauser: PATCH /vm Paused. Firecracker's block
// devices (the default Sync engine) complete each request before the vCPU
// that made it runs on, so none is in flight once it answers.
func (i *Instance) Pause(ctx context.Context) error {
	return i.api.do(ctx, "PATCH", "/vm", vmState{State: "Paused"}, nil)
}

// Resume implements vmm.Pauser: PATCH /vm Resumed.
func (i *Instance) Resume(ctx context.Context) error {
	return i.api.do(ctx, "PATCH", "/vm", vmState{State: "Resumed"}, nil)
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// A VM's checkpoints are directories of checkpoints/<vm id>/ beside vms/ in
// its root (the store): v<N>/ holds data.img, a copy (a reflink where the
// store can) of the VM's disk when it was taken, and manifest.json. They are
// not in the VM's own directory, which belongs to its hypervisor's uid: a
// compromised hypervisor could rename or replace anything there. A checkpoint
// being made is v<N>.new until it is whole: its rename is its commit, so one
// a crash interrupted is never listed, and the next daemon removes it.
const (
	checkpointsDir   = "checkpoints"
	checkpointMeta   = "manifest.json"
	checkpointNewExt = ".new"
)

// Checkpoint is one of a VM's checkpoints as its directory records it.
type Checkpoint struct {
	N       int       `json:"n"`
	Created time.Time `json:"created"`
	Message string    `json:"message,omitempty"`
	By      string    `json:"by,omitempty"`   // who asked for it
	Auto    string    `json:"auto,omitempty"` // why fcm took it by itself
	// Bytes is what it holds that nothing else shares (filled when listed).
	Bytes int64 `json:"-"`
	// How its making went (filled when made): the guest's sync before it,
	// how long the guest was paused, and fcm's share of the time (all but
	// the sync).
	Sync, Paused, Took time.Duration `json:"-"`
}

// ID is how users name it: v<N>.
func (c Checkpoint) ID() string { return "v" + strconv.Itoa(c.N) }

// ParseCheckpointID reads v<N> (or N).
func ParseCheckpointID(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(s, "v"))
	if err != nil || n < 1 {
		return 0, invalidf("%q is not a checkpoint id: want v1, v2, ...", s)
	}
	return n, nil
}

// checkpointsOf is the directory of VM id's checkpoints.
func (m *Manager) checkpointsOf(id string) string {
	return filepath.Join(m.root(id), checkpointsDir, id)
}

// checkpointDir is checkpoint n's directory of VM id's.
func (m *Manager) checkpointDir(id string, n int) string {
	return filepath.Join(m.checkpointsOf(id), "v"+strconv.Itoa(n))
}

// writeCheckpoint copies VM id's disk into checkpoint c, whole or not at
// all. The caller keeps the disk still meanwhile (the VM paused or not
// running).
func (m *Manager) writeCheckpoint(ctx context.Context, id string, c Checkpoint) (disk.Method, error) {
	final := m.checkpointDir(id, c.N)
	tmp := final + checkpointNewExt
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Dir(tmp)), 0o700); err != nil {
		return "", err
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", err
	}
	fail := func(err error) (disk.Method, error) {
		os.RemoveAll(tmp)
		return "", err
	}
	method, err := disk.Clone(ctx, filepath.Join(m.dir(id), dataFile), filepath.Join(tmp, dataFile))
	if err != nil {
		return fail(err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fail(err)
	}
	if err := writeSynced(filepath.Join(tmp, checkpointMeta), b); err != nil {
		return fail(err)
	}
	if err := syncPath(filepath.Join(tmp, dataFile)); err != nil {
		return fail(err)
	}
	if _, err := os.Stat(final); err == nil {
		return fail(fmt.Errorf("checkpoint v%d of vm %s exists already", c.N, id))
	}
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	return method, syncPath(filepath.Dir(final))
}

// checkpoints lists VM id's whole checkpoints, oldest first, with what each
// holds of its own.
func (m *Manager) checkpoints(id string) ([]Checkpoint, error) {
	entries, err := os.ReadDir(m.checkpointsOf(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Checkpoint
	for _, e := range entries {
		n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "v"))
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "v") || err != nil {
			continue // v<N>.new: not whole
		}
		b, err := os.ReadFile(filepath.Join(m.checkpointsOf(id), e.Name(), checkpointMeta))
		if err != nil {
			return nil, err
		}
		var c Checkpoint
		if err := json.Unmarshal(b, &c); err != nil || c.N != n {
			return nil, fmt.Errorf("checkpoint %s of vm %s: a damaged manifest", e.Name(), id)
		}
		c.Bytes, _ = disk.Exclusive(filepath.Join(m.checkpointsOf(id), e.Name(), dataFile))
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N < out[j].N })
	return out, nil
}

// removeHalfCheckpoints removes the checkpoints of VM id a crash left half
// made.
func (m *Manager) removeHalfCheckpoints(id string) {
	matches, _ := filepath.Glob(filepath.Join(m.checkpointsOf(id), "v*"+checkpointNewExt))
	for _, p := range matches {
		m.log.Info("removing a checkpoint a crash left half made", "vm", id, "dir", p)
		os.RemoveAll(p)
	}
}

// pruneCheckpoints removes VM id's oldest checkpoints beyond keep, and
// returns the ids removed.
func (m *Manager) pruneCheckpoints(id string, keep int) ([]string, error) {
	cps, err := m.checkpoints(id)
	if err != nil || len(cps) <= keep {
		return nil, err
	}
	var gone []string
	for _, c := range cps[:len(cps)-keep] {
		if err := os.RemoveAll(m.checkpointDir(id, c.N)); err != nil {
			return gone, err
		}
		gone = append(gone, c.ID())
	}
	return gone, nil
}

// writeSynced writes a new file and flushes it to disk.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncPath flushes a file or directory to disk.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// DefaultKeepCheckpoints is how many checkpoints a VM keeps (fcm daemon
// --keep-checkpoints): a new one beyond it removes the oldest.
const DefaultKeepCheckpoints = 20

// CreateCheckpoint takes a checkpoint of VM name's disk, live: a running
// guest first syncs its filesystems, then is paused (its block requests in
// flight complete) for the moment of the copy, a reflink where the store can,
// and runs on. The disk is then as after a clean power cut at that moment. A
// stopped or suspended VM's disk is still already. A non-empty id: as for
// Stop.
func (m *Manager) CreateCheckpoint(ctx context.Context, name, id, message, by string) (*Checkpoint, error) {
	return m.createCheckpoint(ctx, name, id, Checkpoint{Message: message, By: by})
}

// createCheckpoint is CreateCheckpoint of a checkpoint with c's message, who
// and why; its number and time are filled in.
func (m *Manager) createCheckpoint(ctx context.Context, name, id string, c Checkpoint) (*Checkpoint, error) {
	if err := m.begin(name, "checkpointing"); err != nil {
		return nil, err
	}
	defer m.end(name)
	if err := m.checkStoreRoom(name); err != nil {
		return nil, err
	}
	var vm *store.VM
	op := &store.Op{Kind: "checkpoint", StartedAt: time.Now().UTC(), Steps: []string{stepCheckpointing}}
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		var err error
		if vm, err = tx.VM(name); err != nil {
			return err
		}
		if id != "" && vm.ID != id {
			return fmt.Errorf("%w: vm %q", store.ErrNotFound, name)
		}
		switch vm.State {
		case api.StateRunning, api.StateStopped, api.StateSuspended:
		default:
			return fmt.Errorf("%w: vm %q is %s: a checkpoint needs it running, stopped or suspended", ErrBadState, name, vm.State)
		}
		vm.LastCheckpoint++
		op.ID, op.VMName, op.VMID = "checkpoint-"+vm.ID, vm.Name, vm.ID
		if err := tx.PutVM(vm); err != nil {
			return err
		}
		return tx.PutOp(op)
	})
	if err != nil {
		return nil, err
	}
	m.crashPoint(op.Kind, stepCheckpointing)
	c.N, c.Created = vm.LastCheckpoint, time.Now().UTC()
	var method disk.Method
	t := time.Now()
	synced, paused, err := m.stillDisk(ctx, vm, op, func() (err error) {
		method, err = m.writeCheckpoint(ctx, vm.ID, c)
		return err
	})
	c.Sync, c.Paused, c.Took = synced, paused, time.Since(t)-synced
	m.endOp(op)
	if err != nil {
		return nil, fmt.Errorf("checkpoint of vm %s: %w", name, err)
	}
	m.log.Info("checkpoint created", "name", name, "checkpoint", c.ID(), "copy", method, "paused", paused.Round(time.Microsecond))
	if gone, err := m.pruneCheckpoints(vm.ID, m.keepCheckpoints()); err != nil {
		m.log.Warn("old checkpoints could not be removed", "name", name, "err", err)
	} else if len(gone) > 0 {
		m.log.Info("old checkpoints removed", "name", name, "removed", strings.Join(gone, ","))
	}
	return &c, nil
}

// stillDisk runs fn, a copy of VM vm's disk, while the disk is still: a
// running guest first syncs its filesystems, then is paused (recorded in op
// first, so that a crash lets it run again), its block requests in flight
// complete, and it runs on after fn. It returns how long the guest was paused
// (0 if it was not running).
func (m *Manager) stillDisk(ctx context.Context, vm *store.VM, op *store.Op, fn func() error) (synced, paused time.Duration, err error) {
	if vm.State != api.StateRunning {
		return 0, 0, fn()
	}
	inst, stray := m.liveInstance(ctx, vm)
	if stray != nil || inst == nil {
		return 0, 0, fmt.Errorf("%w: vm %q: its hypervisor is not running", ErrBadState, vm.Name)
	}
	p, ok := inst.(vmm.Pauser)
	if !ok {
		return 0, 0, invalidf("the %s driver cannot pause a vm for a copy of its disk", m.cfg.Driver.Name())
	}
	t := time.Now()
	m.sync(ctx, vm)
	synced = time.Since(t)
	if err := m.record(op, stepPause); err != nil {
		return synced, 0, err
	}
	t = time.Now()
	if err := p.Pause(ctx); err != nil {
		return synced, 0, fmt.Errorf("vm %s: pause for a copy of its disk: %w", vm.Name, err)
	}
	err = fn()
	rerr := p.Resume(context.WithoutCancel(ctx))
	paused = time.Since(t) // from the stop's request to the cont's answer
	if rerr != nil {
		m.log.Error("a vm paused for a copy of its disk did not run again", "name", vm.Name, "err", rerr)
		if err == nil {
			err = fmt.Errorf("vm %s: it did not run again after the copy of its disk: %w", vm.Name, rerr)
		}
	}
	return synced, paused, err
}

// keepCheckpoints is how many checkpoints a VM keeps.
func (m *Manager) keepCheckpoints() int {
	if m.cfg.KeepCheckpoints > 0 {
		return m.cfg.KeepCheckpoints
	}
	return DefaultKeepCheckpoints
}

// endOp removes a finished operation's record.
func (m *Manager) endOp(op *store.Op) {
	if err := m.cfg.Store.Update(func(tx *store.Tx) error { return tx.DeleteOp(op.ID) }); err != nil {
		m.log.Error("end operation", "op", op.ID, "err", err)
	}
}

// resumeCheckpointOp settles a checkpoint a crash interrupted: a guest
// paused for it runs again; the half-made checkpoint is removed (its number
// stays taken).
func (m *Manager) resumeCheckpointOp(ctx context.Context, vm *store.VM, op *store.Op) error {
	if slices.Contains(op.Steps, stepPause) {
		if inst, stray := m.liveInstance(ctx, vm); stray == nil && inst != nil {
			if p, ok := inst.(vmm.Pauser); ok {
				if st, err := p.RunState(ctx); err == nil && st == "paused" {
					if err := p.Resume(ctx); err != nil {
						return fmt.Errorf("vm %s, paused for a checkpoint: %w", vm.Name, err)
					}
					m.log.Info("vm paused for an interrupted checkpoint runs again", "name", vm.Name)
				}
			}
		}
	}
	m.removeHalfCheckpoints(vm.ID)
	m.endOp(op)
	return nil
}

// Checkpoints lists VM name's checkpoints, oldest first. A non-empty id: as
// for Stop.
func (m *Manager) Checkpoints(name, id string) ([]Checkpoint, error) {
	vm, err := m.cfg.Store.GetVM(name)
	if err != nil {
		return nil, err
	}
	if id != "" && vm.ID != id {
		return nil, fmt.Errorf("%w: vm %q", store.ErrNotFound, name)
	}
	return m.checkpoints(vm.ID)
}

// RemoveCheckpoint removes checkpoint n of VM name's. A non-empty id: as
// for Stop.
func (m *Manager) RemoveCheckpoint(name, id string, n int) error {
	if err := m.begin(name, "removing a checkpoint"); err != nil {
		return err
	}
	defer m.end(name)
	vm, err := m.cfg.Store.GetVM(name)
	if err != nil {
		return err
	}
	if id != "" && vm.ID != id {
		return fmt.Errorf("%w: vm %q", store.ErrNotFound, name)
	}
	dir := m.checkpointDir(vm.ID, n)
	if _, err := os.Stat(filepath.Join(dir, checkpointMeta)); err != nil {
		return fmt.Errorf("%w: vm %q has no checkpoint v%d", store.ErrNotFound, name, n)
	}
	// Renamed first: a crash midway leaves a half-made checkpoint, which is
	// removed, never a listed one with its disk half gone.
	if err := os.Rename(dir, dir+checkpointNewExt); err != nil {
		return err
	}
	return os.RemoveAll(dir + checkpointNewExt)
}

// checkStoreRoom refuses a checkpoint (ErrInsufficientStorage) when the
// filesystem VM name's disks are on, or the data dir's (which holds a loop
// store's file), has no more free than the reserve: a reflink takes nothing
// at first, but every block either side writes after it does.
func (m *Manager) checkStoreRoom(name string) error {
	v, err := m.cfg.Store.GetVM(name)
	if err != nil {
		return err
	}
	for _, dir := range []string{m.root(v.ID), m.cfg.DataDir} {
		free, err := m.freeSpace(dir)
		if err != nil {
			return err
		}
		if free <= m.cfg.DiskReserve {
			return &roomError{kind: ErrInsufficientStorage,
				msg: fmt.Sprintf("not enough disk space for a checkpoint on %s: %s free, not more than the %s reserve (fcm daemon --disk-reserve): remove old checkpoints (fcm checkpoint rm) or free space on the host",
					dir, gib(free), gib(m.cfg.DiskReserve))}
		}
	}
	return nil
}

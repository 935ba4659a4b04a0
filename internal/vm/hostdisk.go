package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
	"golang.org/x/sys/unix"
)

// HostDiskEvery is how often WatchHostDisk looks at the host's disk and the
// VMs' hypervisors.
const HostDiskEvery = 2 * time.Second

// ReasonHostDiskFull is the reason of a VM whose hypervisor paused it because
// a write to its disk failed for want of space on the host.
const ReasonHostDiskFull = "host disk full"

// StoreReserve is the room the store's file keeps allocated past its end
// (fallocate, its size unchanged), so that the store can record what happens
// (a VM paused, a refusal, a stop) when the host's disk is full: the store
// grows into blocks it holds already, which no guest can take.
const StoreReserve = 64 << 20

// StoreFile is the store's file in the data dir.
const StoreFile = "fcm.db"

// WatchHostDisk runs CheckHostDisk every HostDiskEvery until ctx ends; the
// daemon runs it in a goroutine.
func (m *Manager) WatchHostDisk(ctx context.Context) {
	t := time.NewTicker(HostDiskEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.CheckHostDisk(ctx)
		}
	}
}

// CheckHostDisk keeps the store's reserve, marks paused (ReasonHostDiskFull)
// each running VM whose hypervisor paused its guest on a host I/O error, and
// resumes those VMs once the data dir's filesystem has more than the disk
// reserve free again. A VM some operation is busy with is left to it.
func (m *Manager) CheckHostDisk(ctx context.Context) {
	free, err := m.freeSpace(m.cfg.DataDir)
	if err != nil {
		m.log.Warn("host disk", "err", err)
		return
	}
	m.KeepStoreReserve()
	vms, err := m.cfg.Store.ListVMs()
	if err != nil {
		m.log.Warn("host disk: list vms", "err", err)
		return
	}
	for _, vm := range vms {
		if vm.State != api.StateRunning && vm.State != api.StatePaused || m.isBusy(vm.Name) {
			continue
		}
		p, ok := m.instance(vm.ID).(vmm.Pauser)
		if !ok {
			continue // not running here, or a hypervisor that never pauses (Firecracker)
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		state, err := p.RunState(qctx)
		cancel()
		if err != nil {
			continue // gone or going: the VM's own watch follows its exit
		}
		switch {
		case state == vmm.RunStateIOError && vm.State == api.StateRunning:
			m.markPaused(vm, free)
		case state == vmm.RunStateIOError && free > m.cfg.DiskReserve:
			m.resumeGuest(ctx, vm, p, free)
		case state == "running" && vm.State == api.StatePaused:
			// Resumed by someone else (a QMP client), or a write that got
			// through at last: it runs.
			m.diskPauseState(vm, api.StatePaused, api.StateRunning, "", "resumed", "it runs again")
		}
	}
}

// markPaused records that vm's guest is paused for want of space on the host.
func (m *Manager) markPaused(vm *store.VM, free int64) {
	detail := fmt.Sprintf("a write to its disk failed: %s free on %s", humanBytes(free), m.cfg.DataDir)
	if m.diskPauseState(vm, api.StateRunning, api.StatePaused, ReasonHostDiskFull, "paused", detail) {
		m.log.Warn("vm paused: host disk full; it resumes when more than the reserve is free", "name", vm.Name,
			"free", humanBytes(free), "reserve", humanBytes(m.cfg.DiskReserve), "data_dir", m.cfg.DataDir)
	}
}

// resumeGuest lets a paused VM's guest run again now that there is space.
func (m *Manager) resumeGuest(ctx context.Context, vm *store.VM, p vmm.Pauser, free int64) {
	if err := m.begin(vm.Name, "resuming"); err != nil {
		return // an operation began meanwhile: next time
	}
	defer m.end(vm.Name)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := p.Resume(qctx)
	cancel()
	if err != nil {
		m.log.Warn("resume vm", "name", vm.Name, "err", err)
		return
	}
	if m.writeDiskPause(vm, api.StatePaused, api.StateRunning, "", "resumed", fmt.Sprintf("%s free on the host again", humanBytes(free))) {
		m.log.Info("vm resumed: host disk has space again", "name", vm.Name, "free", humanBytes(free))
	}
}

// diskPauseState moves vm from state from to state to, with reason and an event,
// unless an operation is busy with it; it reports whether it did.
func (m *Manager) diskPauseState(vm *store.VM, from, to, reason, kind, detail string) bool {
	if err := m.begin(vm.Name, "pausing"); err != nil {
		return false
	}
	defer m.end(vm.Name)
	return m.writeDiskPause(vm, from, to, reason, kind, detail)
}

// writeDiskPause is diskPauseState's store write; the caller holds vm's busy mark.
func (m *Manager) writeDiskPause(vm *store.VM, from, to, reason, kind, detail string) bool {
	changed := false
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		cur, err := tx.VM(vm.Name)
		if err != nil || cur.ID != vm.ID || cur.State != from {
			return err // gone, replaced, or moved on: nothing to do
		}
		cur.State, cur.Reason = to, reason
		cur.AddEvent(time.Now(), kind, detail)
		changed = true
		return tx.PutVM(cur)
	})
	if err != nil {
		m.log.Error("record vm state", "name", vm.Name, "state", to, "err", err)
		return false
	}
	return changed
}

// KeepStoreReserve keeps StoreReserve allocated past the end of the store's
// file (see StoreReserve), when the host has the space for it. The daemon
// calls it before it reconciles, and CheckHostDisk after each time the store
// has grown into its reserve.
func (m *Manager) KeepStoreReserve() {
	path := filepath.Join(m.cfg.DataDir, StoreFile)
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		m.reserveFailed(err)
		return
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		m.reserveFailed(err)
		return
	}
	want := st.Size + StoreReserve
	have := st.Blocks * 512
	if have >= want-StoreReserve/2 {
		return // still at least half the reserve
	}
	if free, err := m.freeSpace(m.cfg.DataDir); err != nil || free < want-have {
		m.reserveFailed(errors.New("not enough free space for it"))
		return
	}
	// Every hole of the file too: bolt grows it with ftruncate.
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, want); err != nil {
		m.reserveFailed(err)
		return
	}
	m.mu.Lock()
	m.reserveErr = ""
	m.mu.Unlock()
	m.log.Info("store: reserve allocated past the end of its file", "file", path, "reserve", humanBytes(StoreReserve))
}

// reserveFailed logs why the store's reserve could not be kept, once for
// each new reason.
func (m *Manager) reserveFailed(err error) {
	msg := err.Error()
	if errors.Is(err, unix.EOPNOTSUPP) {
		msg = "the filesystem cannot preallocate (fallocate)"
	}
	m.mu.Lock()
	same := m.reserveErr == msg
	m.reserveErr = msg
	m.mu.Unlock()
	if !same {
		m.log.Warn("store: cannot keep its reserve past the end of its file; when the host's disk is full it may fail to record changes", "err", msg)
	}
}

package vm

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/fcmhost/fcm/internal/vmm"
)

// snapDriver is the fake driver with QEMU's kind of suspend: the guest's RAM
// in the memory file while it runs.
type snapDriver struct{ fakeDriver }

func (d *snapDriver) Suspend(context.Context, vmm.Instance, vmm.Spec) error { return nil }
func (d *snapDriver) Restore(context.Context, vmm.Spec) (vmm.Instance, error) {
	return nil, vmm.ErrNotRunning
}

// TestReserveMemory: with the disk admission's default (promises within the
// free space), a VM's memory file is allocated whole before its hypervisor
// maps it, so a full disk cannot kill the guest with SIGBUS; overcommitted,
// it stays sparse.
func TestReserveMemory(t *testing.T) {
	m, _, _ := testManager(t)
	m.cfg.Driver = &snapDriver{}
	dir := t.TempDir()
	spec := vmm.Spec{ID: "m1", Dir: dir, MemoryMiB: 64, MemoryFile: filepath.Join(dir, MemoryFile)}
	if err := m.reserveMemory(spec); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(spec.MemoryFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Sys().(*syscall.Stat_t).Blocks * 512; st.Size() != 64<<20 || got < 64<<20 {
		t.Errorf("memory file: %d bytes, %d allocated; want 64 MiB, all allocated", st.Size(), got)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("memory file mode %v", st.Mode())
	}
	// A link planted in its place is not followed.
	os.Remove(spec.MemoryFile)
	target := filepath.Join(t.TempDir(), "elsewhere")
	os.WriteFile(target, nil, 0o600)
	os.Symlink(target, spec.MemoryFile)
	if err := m.reserveMemory(spec); err == nil {
		t.Error("reserveMemory followed a link")
	}
	os.Remove(spec.MemoryFile)

	m.cfg.DiskOvercommit = 2
	if err := m.reserveMemory(spec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spec.MemoryFile); err == nil {
		t.Error("overcommitted, the memory file was made ahead of the hypervisor")
	}
}

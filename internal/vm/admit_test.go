package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

// TestCreate_Admission: create is refused with a clear error, and nothing
// made, when a VM is above the host's maxima or the host lacks the disk or the
// memory for it.
func TestCreate_Admission(t *testing.T) {
	tests := []struct {
		name     string
		req      api.CreateVMRequest
		freeGiB  int64
		memMiB   int
		wantIs   error
		wantText string
	}{
		{"cpus above max", api.CreateVMRequest{CPUs: 9}, 100, 64 << 10, ErrInvalid, "cpus 9 is above this host's maximum of 8 per vm (fcm daemon --max-cpus)"},
		{"memory above max", api.CreateVMRequest{MemoryMiB: 20 << 10}, 100, 64 << 10, ErrInvalid, "--max-memory"},
		{"disk above max", api.CreateVMRequest{DiskBytes: 100 << 30}, 1000, 64 << 10, ErrInvalid, "disk size 100 GiB is above this host's maximum of 64 GiB per vm (fcm daemon --max-disk)"},
		{"disk space", api.CreateVMRequest{DiskBytes: 10 << 30}, 11, 64 << 10, ErrInsufficientStorage, "not enough disk space on "},
		{"memory", api.CreateVMRequest{MemoryMiB: 2048}, 100, 4096, ErrInsufficientCapacity, "not enough memory: vms that are not stopped have 2048 MiB, this one needs 2048 MiB, and the host has 3072 MiB for vms (MemTotal 4096 MiB less a 1024 MiB reserve)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _, _ := testManager(t)
			m.freeSpace = func(string) (int64, error) { return tt.freeGiB << 30, nil }
			m.memTotal = func() (int, error) { return tt.memMiB, nil }
			running := addVM(t, m, "busy", "aaaa1111", api.StateRunning)
			running.MemoryMiB = 2048
			m.cfg.Store.Update(func(tx *store.Tx) error { return tx.PutVM(running) })
			addVM(t, m, "idle", "bbbb2222", api.StateStopped) // not counted
			req := tt.req
			req.Name = "new"
			_, err := m.Create(context.Background(), "admin", req, nil)
			if !errors.Is(err, tt.wantIs) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("Create = %v, want %v with %q", err, tt.wantIs, tt.wantText)
			}
			if _, err := m.cfg.Store.GetVM("new"); !errors.Is(err, store.ErrNotFound) {
				t.Error("a refused create left a record")
			}
			m.cfg.Store.View(func(tx *store.Tx) error {
				if l, _ := tx.Leases(); len(l) != 2 {
					t.Errorf("leases after a refused create: %v", l)
				}
				return nil
			})
			if m.isBusy("new") || len(ops(t, m)) != 0 {
				t.Error("a refused create left its name busy or an op")
			}
		})
	}
}

// TestStart_Memory: start, too, refuses a VM the host has not the memory
// for, counting the others that are not stopped but not the VM itself.
func TestStart_Memory(t *testing.T) {
	m, d, _ := testManager(t)
	m.memTotal = func() (int, error) { return 3072, nil } // 2048 MiB for vms
	addVM(t, m, "a", "aaaa1111", api.StateRunning)
	addVM(t, m, "b", "bbbb2222", api.StateStopped)
	// 1024 + 1024 fits exactly: the start goes on (and fails in the fake driver).
	_, err := m.Start(context.Background(), "b", "", nil)
	if errors.Is(err, ErrInsufficientCapacity) || d.starts != 1 {
		t.Fatalf("a start within the memory did not reach the driver (%d starts): %v", d.starts, err)
	}
	m.memTotal = func() (int, error) { return 2048, nil }
	addVM(t, m, "c", "cccc3333", api.StateStopped)
	_, err = m.Start(context.Background(), "c", "", nil)
	if !errors.Is(err, ErrInsufficientCapacity) || !strings.Contains(err.Error(), "not enough memory") {
		t.Fatalf("Start beyond the memory = %v, want ErrInsufficientCapacity", err)
	}
	if vm := getVM(t, m, "c"); vm.State != api.StateStopped || len(ops(t, m)) != 0 {
		t.Errorf("a refused start left %s and ops %v", vm.State, ops(t, m))
	}
}

// TestCheckFree_Message: the message names the dir, what is free and what is
// needed.
func TestCheckFree_Message(t *testing.T) {
	err := checkFree(func(string) (int64, error) { return 3 << 29, nil }, "/var/lib/fcm", 4<<30, "a 2 GiB disk plus a 2 GiB reserve")
	want := "not enough disk space on /var/lib/fcm: 1.5 GiB free, need 4.0 GiB (a 2 GiB disk plus a 2 GiB reserve)"
	if err == nil || err.Error() != want || !errors.Is(err, ErrInsufficientStorage) {
		t.Errorf("err = %v\nwant %s", err, want)
	}
	if _, err := FreeSpace(t.TempDir()); err != nil {
		t.Error(err)
	}
	if n, err := memTotalMiB(); err != nil || n < 128 {
		t.Errorf("memTotalMiB = %d, %v", n, err)
	}
}

// TestPruneLogs: the newest 20 failed-create logs are kept, none older than a
// week, and other files are left alone.
func TestPruneLogs(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	for i := 0; i < 25; i++ {
		p := filepath.Join(dir, fmt.Sprintf("vm%02d-abcd%04d-console.log", i, i))
		os.WriteFile(p, []byte("x"), 0o600)
		mod := now.Add(-time.Duration(i) * time.Hour)
		if i == 3 {
			mod = now.Add(-8 * 24 * time.Hour)
		}
		os.Chtimes(p, mod, mod)
	}
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o600)
	os.Chtimes(filepath.Join(dir, "notes.txt"), now.Add(-30*24*time.Hour), now.Add(-30*24*time.Hour))
	pruneLogs(dir, now)
	// The age limit alone: a week-old log goes even when few are kept.
	old := t.TempDir()
	for i, age := range []time.Duration{time.Hour, 8 * 24 * time.Hour} {
		p := filepath.Join(old, fmt.Sprintf("vm%d-abcd000%d-console.log", i, i))
		os.WriteFile(p, []byte("x"), 0o600)
		os.Chtimes(p, now.Add(-age), now.Add(-age))
	}
	pruneLogs(old, now)
	if e, _ := os.ReadDir(old); len(e) != 1 || e[0].Name() != "vm0-abcd0000-console.log" {
		t.Errorf("after pruning by age: %v", e)
	}
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if len(left) != 21 { // the 20 newest logs (the week-old one is not among them), and notes.txt
		t.Errorf("left %d files: %v", len(left), left)
	}
	for _, gone := range []string{"vm03-abcd0003-console.log", "vm21-abcd0021-console.log", "vm24-abcd0024-console.log"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); err == nil {
			t.Errorf("%s kept", gone)
		}
	}
	for _, kept := range []string{"vm00-abcd0000-console.log", "vm20-abcd0020-console.log", "notes.txt"} {
		if _, err := os.Stat(filepath.Join(dir, kept)); err != nil {
			t.Errorf("%s removed", kept)
		}
	}
}

// TestOwnTap (L9): only tap_<8 of [a-z0-9]> on fcm's bridge or naming a VM id
// fcm knows is fcm's to remove.
func TestOwnTap(t *testing.T) {
	known := map[string]bool{"abcd1234": true}
	onBridge := func(tap string) bool { return tap == "tap_zzzz9999" || tap == "tap_other" }
	tests := []struct {
		tap  string
		want bool
	}{
		{"tap_abcd1234", true},  // a VM fcm knows
		{"tap_zzzz9999", true},  // on fcm's bridge
		{"tap_qqqq0000", false}, // fcm's form, but neither
		{"tap_other", false},    // on the bridge, not fcm's form
		{"tap_ABCD1234", false},
		{"tap_abcd12345", false},
		{"tap0", false},
		{"vnet0", false},
	}
	for _, tt := range tests {
		if got := ownTap(tt.tap, known, onBridge); got != tt.want {
			t.Errorf("ownTap(%s) = %v, want %v", tt.tap, got, tt.want)
		}
	}
}

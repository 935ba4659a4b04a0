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
		// 2 + 2 GiB promised to busy and idle (stopped ones count too), 2.5 asked: 6.5 > 8 - 2.
		{"disk promised to others", api.CreateVMRequest{DiskBytes: 2 << 30}, 8, 64 << 10, ErrInsufficientStorage,
			"this vm asks for 2.5 GiB (2.0 GiB disk, 0.5 GiB swap); 8.0 GiB is free less a 2.0 GiB reserve, 4.0 GiB is promised to the vms there are"},
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

// TestDiskRoom: a VM is admitted while what the VMs were promised and have not
// used, with its own disk and swap, fits the free space less the reserve times
// the overcommit ratio; a refusal gives every number and the flag.
func TestDiskRoom(t *testing.T) {
	const g = int64(1 << 30)
	tests := []struct {
		name                        string
		free, reserve, unused, disk int64
		ratio                       float64
		want                        string // "" when admitted
	}{
		{"empty host", 10 * g, 2 * g, 0, 2 * g, 1, ""},
		{"exactly fits", 10 * g, 2 * g, 5*g + g/2, 2 * g, 1, ""},
		{"one byte over", 10 * g, 2 * g, 5*g + g/2 + 1, 2 * g, 1,
			"not enough disk space on /d: this vm asks for 2.5 GiB (2.0 GiB disk, 0.5 GiB swap); 10.0 GiB is free less a 2.0 GiB reserve, " +
				"5.5 GiB is promised to the vms there are and not yet used by them, and with fcm daemon --disk-overcommit 1 the vms may be promised at most 8.0 GiB: " +
				"2.5 GiB is left (destroy a vm, ask for a smaller --disk, free space on the host, or raise --disk-overcommit at the risk of a full disk)"},
		// The measurement: 4.7 GiB free, two 2 GiB VMs made, a third asked.
		{"third of three 2G vms", 47 * g / 10, 0, 5 * g, 2 * g, 1, "5.0 GiB is promised"},
		{"overcommitted twice", 47 * g / 10, 0, 5 * g, 2 * g, 2, ""},
		{"below the reserve", g, 2 * g, 0, g, 10, "not enough disk space on /d: 1.0 GiB free, not more than the 2.0 GiB reserve (fcm daemon --disk-reserve): no new vms until space is freed on the host"},
		{"overcommit below one", 10 * g, 0, 0, 4 * g, 0.4, "at most 4.0 GiB: 4.0 GiB is left"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := diskRoom{dir: "/d", free: tt.free, reserve: tt.reserve, unused: tt.unused,
				disk: tt.disk, swap: g / 2, ratio: tt.ratio}.check()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInsufficientStorage) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant ErrInsufficientStorage with %q", err, tt.want)
			}
		})
	}
}

// TestCreate_DiskPromised: create counts what every VM (whatever its state)
// was promised less the host blocks its disk and swap files take already, and
// two creates that each fit alone are not both admitted.
func TestCreate_DiskPromised(t *testing.T) {
	m, _, _ := testManager(t)
	m.memTotal = func() (int, error) { return 64 << 10, nil }
	m.cfg.DiskReserve = 1 << 30
	// 2 GiB promised to each (addVM, no swap); a's guest has written 1 GiB of it.
	a := addVM(t, m, "a", "aaaa1111", api.StateRunning)
	addVM(t, m, "b", "bbbb2222", api.StateStopped)
	f, err := os.Create(filepath.Join(m.dir(a.ID), dataFile))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(a.DiskBytes) // sparse: only what is written counts
	if _, err := f.WriteAt(make([]byte, 1<<30), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := m.unusedPromise(a); got != 1<<30 {
		t.Fatalf("a's unused promise = %d, want 1 GiB", got)
	}
	// 1 + 2 GiB unused, 2.5 asked: 5.5 GiB must fit 6.5 - 1.
	m.freeSpace = func(string) (int64, error) { return 13 << 29, nil }
	_, err = m.Create(context.Background(), "admin", api.CreateVMRequest{Name: "c"}, nil)
	if errors.Is(err, ErrInsufficientStorage) {
		t.Fatalf("a create that fits was refused: %v", err)
	}
	// The create went on (and failed later in the fake driver); a second one
	// with 0.5 GiB less free is refused.
	m.freeSpace = func(string) (int64, error) { return 6 << 30, nil }
	_, err = m.Create(context.Background(), "admin", api.CreateVMRequest{Name: "d"}, nil)
	if !errors.Is(err, ErrInsufficientStorage) || !strings.Contains(err.Error(), "3.0 GiB is promised to the vms there are and not yet used by them") {
		t.Fatalf("Create = %v, want ErrInsufficientStorage counting 3 GiB unused", err)
	}
	m.cfg.DiskOvercommit = 2
	_, err = m.Create(context.Background(), "admin", api.CreateVMRequest{Name: "d"}, nil)
	if errors.Is(err, ErrInsufficientStorage) {
		t.Fatalf("with --disk-overcommit 2 the create was still refused: %v", err)
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

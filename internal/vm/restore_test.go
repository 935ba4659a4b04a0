package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

// TestRestore: a stopped VM's disk goes back to a checkpoint's and the VM
// stays stopped; what it replaced is an automatic checkpoint, whose restore
// undoes the first. A missing checkpoint is refused. A restore a crash
// interrupted leaves the VM on a whole disk, its half copy removed, and the
// VM to boot again since its owner wants it running.
func TestRestore(t *testing.T) {
	m, _, _ := testManager(t)
	ctx := context.Background()
	vm := addVM(t, m, "phoenix", "re01", api.StateStopped)
	data := filepath.Join(m.dir(vm.ID), dataFile)
	os.WriteFile(data, []byte("as it was"), 0o600)
	if _, err := m.CreateCheckpoint(ctx, "phoenix", "", "good", "ann"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(data, []byte("broken"), 0o600)

	var steps []string
	res, err := m.Restore(ctx, "phoenix", "", 1, "ann", func(_ *store.VM, step, msg string) { steps = append(steps, step+": "+msg) })
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(data); string(b) != "as it was" {
		t.Errorf("after the restore the disk holds %q", b)
	}
	if res.VM.State != api.StateStopped || res.From.ID() != "v1" || res.Undo.ID() != "v2" || res.Undo.Auto != "before restoring v1" {
		t.Errorf("restored: %s, from %s, undo %s (%q)", res.VM.State, res.From.ID(), res.Undo.ID(), res.Undo.Auto)
	}
	if len(steps) == 0 || !strings.Contains(steps[0], "fcm restore phoenix v2 undoes this") {
		t.Errorf("progress: %q", steps)
	}
	if _, err := m.Restore(ctx, "phoenix", "", 2, "ann", nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(data); string(b) != "broken" {
		t.Errorf("after undoing the restore the disk holds %q", b)
	}
	if _, err := m.Restore(ctx, "phoenix", "", 9, "ann", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("restore of a missing checkpoint: %v", err)
	}
	assertNoOps(t, m)

	// Killed after the copy was written, before its rename.
	setState(t, m, "phoenix", api.StateStopping)
	m.cfg.Store.UpdateVM("phoenix", func(v *store.VM) error { v.Desired = api.DesiredRunning; return nil })
	os.WriteFile(data+swapNewExt, []byte("half"), 0o600)
	op := &store.Op{ID: "restore-" + vm.ID, Kind: "restore", VMName: "phoenix", VMID: vm.ID, Steps: []string{stepRestoring, stepKill, stepSwap}}
	m.cfg.Store.Update(func(tx *store.Tx) error { return tx.PutOp(op) })
	if err := m.resume(ctx, op); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(data + swapNewExt); err == nil {
		t.Error("the half copy was left")
	}
	if b, _ := os.ReadFile(data); string(b) != "broken" {
		t.Errorf("after the interrupted restore the disk holds %q", b)
	}
	if v, _ := m.cfg.Store.GetVM("phoenix"); v.State != api.StateRestarting {
		t.Errorf("after the interrupted restore phoenix is %s, want restarting", v.State)
	}
	assertNoOps(t, m)
}

// TestCheckpointStoreFull: a checkpoint is refused, with the numbers, when
// the store has no more free than the reserve.
func TestCheckpointStoreFull(t *testing.T) {
	m, _, _ := testManager(t)
	m.cfg.DiskReserve = 2 << 30
	m.freeSpace = func(string) (int64, error) { return 1 << 30, nil }
	addVM(t, m, "full", "fu01", api.StateStopped)
	_, err := m.CreateCheckpoint(context.Background(), "full", "", "", "")
	if !errors.Is(err, ErrInsufficientStorage) || !strings.Contains(err.Error(), "1.0 GiB free, not more than the 2.0 GiB reserve") {
		t.Fatalf("checkpoint on a full store: %v", err)
	}
	if cps, _ := m.checkpoints("fu01"); len(cps) != 0 {
		t.Errorf("checkpoints after a refusal: %+v", cps)
	}
}

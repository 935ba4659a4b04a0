package vm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

// TestCheckpointFiles: a checkpoint holds the disk as it was when taken,
// whatever the VM writes after; one left half made (v<N>.new) is never
// listed and is removed; the oldest beyond keep are pruned; ids read as v<N>.
func TestCheckpointFiles(t *testing.T) {
	m, _, _ := testManager(t)
	ctx := context.Background()
	id := "ck01"
	if err := os.MkdirAll(m.dir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(m.dir(id), dataFile)
	write := func(s string) {
		if err := os.WriteFile(data, bytes.Repeat([]byte(s), 1<<16), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	when := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	for n, content := range []string{"one", "two", "three"} {
		write(content)
		if _, err := m.writeCheckpoint(ctx, id, Checkpoint{N: n + 1, Created: when, Message: "at " + content, By: "ann@example.com"}); err != nil {
			t.Fatal(err)
		}
	}
	write("later")
	if _, err := m.writeCheckpoint(ctx, id, Checkpoint{N: 2}); err == nil {
		t.Error("a second v2 was made")
	}
	// A crash in the middle of v4.
	half := m.checkpointDir(id, 4) + checkpointNewExt
	os.MkdirAll(half, 0o700)
	os.WriteFile(filepath.Join(half, dataFile), []byte("partial"), 0o600)

	cps, err := m.checkpoints(id)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range cps {
		ids = append(ids, c.ID())
	}
	if strings.Join(ids, ",") != "v1,v2,v3" {
		t.Fatalf("checkpoints %v, want v1,v2,v3", ids)
	}
	if c := cps[1]; c.Message != "at two" || c.By != "ann@example.com" || !c.Created.Equal(when) || c.Bytes <= 0 {
		t.Errorf("v2: %+v", c)
	}
	if got, _ := os.ReadFile(filepath.Join(m.checkpointDir(id, 2), dataFile)); !bytes.HasPrefix(got, []byte("twotwo")) {
		t.Errorf("v2's disk starts %q, want the disk as it was then", got[:6])
	}
	m.removeHalfCheckpoints(id)
	if _, err := os.Stat(half); err == nil {
		t.Error("a half-made checkpoint was left")
	}
	gone, err := m.pruneCheckpoints(id, 2)
	if err != nil || strings.Join(gone, ",") != "v1" {
		t.Errorf("pruned %v (%v), want v1", gone, err)
	}
	for _, s := range []string{"v3", "3"} {
		if n, err := ParseCheckpointID(s); err != nil || n != 3 {
			t.Errorf("ParseCheckpointID(%q) = %d, %v", s, n, err)
		}
	}
	for _, s := range []string{"", "v0", "vx", "-1", "v1.5"} {
		if _, err := ParseCheckpointID(s); err == nil {
			t.Errorf("ParseCheckpointID(%q) accepted", s)
		}
	}
}

// TestCreateCheckpoint: a running VM's guest syncs, is paused for the copy
// and runs on; numbers go on after a removal; a stopped VM needs no pause;
// a VM in another state is refused; past the number to keep the oldest go.
// A checkpoint interrupted while the guest was paused: the next daemon lets
// the guest run and removes the half-made checkpoint.
func TestCreateCheckpoint(t *testing.T) {
	m, _, _ := testManager(t)
	m.cfg.KeepCheckpoints = 2
	synced := 0
	m.sync = func(context.Context, *store.VM) { synced++ }
	ctx := context.Background()
	vm := addVM(t, m, "keeper", "ck02", api.StateRunning)
	inst := &pausingInstance{state: "running"}
	m.setInstance(vm.ID, inst)
	os.WriteFile(filepath.Join(m.dir(vm.ID), dataFile), []byte("disk"), 0o600)

	c, err := m.CreateCheckpoint(ctx, "keeper", "", "before the upgrade", "ann@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if c.ID() != "v1" || synced != 1 || inst.pauses != 1 || inst.resumes != 1 || inst.state != "running" {
		t.Errorf("checkpoint %s: synced %d, paused %d, resumed %d, now %s", c.ID(), synced, inst.pauses, inst.resumes, inst.state)
	}
	assertNoOps(t, m)
	for i := 0; i < 2; i++ {
		if _, err := m.CreateCheckpoint(ctx, "keeper", "", "", ""); err != nil {
			t.Fatal(err)
		}
	}
	cps, _ := m.checkpoints(vm.ID)
	if len(cps) != 2 || cps[0].ID() != "v2" || cps[1].ID() != "v3" {
		t.Errorf("after 3 checkpoints keeping 2: %+v", cps)
	}

	setState(t, m, "keeper", api.StateStopped)
	pauses := inst.pauses
	if c, err := m.CreateCheckpoint(ctx, "keeper", "", "", ""); err != nil || c.ID() != "v4" || inst.pauses != pauses {
		t.Errorf("a stopped vm's checkpoint: %v, %v, paused %d times more", c, err, inst.pauses-pauses)
	}
	setState(t, m, "keeper", api.StateStarting)
	if _, err := m.CreateCheckpoint(ctx, "keeper", "", "", ""); !errors.Is(err, ErrBadState) {
		t.Errorf("a starting vm's checkpoint: %v", err)
	}
	if _, err := m.CreateCheckpoint(ctx, "nobody", "", "", ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a missing vm's checkpoint: %v", err)
	}

	// A crash while the guest was paused for v5.
	setState(t, m, "keeper", api.StateRunning)
	inst.state = "paused"
	op := &store.Op{ID: "checkpoint-" + vm.ID, Kind: "checkpoint", VMName: "keeper", VMID: vm.ID, Steps: []string{stepCheckpointing, stepPause}}
	m.cfg.Store.Update(func(tx *store.Tx) error { return tx.PutOp(op) })
	half := m.checkpointDir(vm.ID, 5) + checkpointNewExt
	os.MkdirAll(half, 0o700)
	if err := m.resume(ctx, op); err != nil {
		t.Fatal(err)
	}
	if inst.state != "running" {
		t.Errorf("the guest paused for an interrupted checkpoint is %s", inst.state)
	}
	if _, err := os.Stat(half); err == nil {
		t.Error("the half-made checkpoint was left")
	}
	assertNoOps(t, m)
}

func setState(t *testing.T, m *Manager, name, state string) {
	t.Helper()
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		v, err := tx.VM(name)
		if err != nil {
			return err
		}
		v.State = state
		return tx.PutVM(v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func assertNoOps(t *testing.T, m *Manager) {
	t.Helper()
	m.cfg.Store.View(func(tx *store.Tx) error {
		if ops, _ := tx.Ops(); len(ops) != 0 {
			t.Errorf("operations left: %+v", ops)
		}
		return nil
	})
}

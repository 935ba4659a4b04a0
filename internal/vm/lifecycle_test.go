package vm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// TestDestroy_KillsHypervisorThatDoesNotAnswer (M4): a hypervisor that is
// alive but does not answer its control socket is killed before its tap, disk
// and lease go.
func TestDestroy_KillsHypervisorThatDoesNotAnswer(t *testing.T) {
	m, d, n := testManager(t)
	addVM(t, m, "web", "aaaa1111", api.StateRunning)
	cmd, adopt := hungHypervisor(t, m, "aaaa1111")
	d.adopt = adopt
	aliveAtUnplug := true
	n.onRemove = func(string) { aliveAtUnplug = alive(cmd.Process.Pid) }
	if err := m.Destroy(context.Background(), "web", ""); err != nil {
		t.Fatal(err)
	}
	if aliveAtUnplug {
		t.Error("the tap was removed while the hypervisor still ran")
	}
	if alive(cmd.Process.Pid) {
		t.Error("the hypervisor that did not answer was not killed")
	}
	if _, err := m.cfg.Store.GetVM("web"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("record after destroy: %v", err)
	}
	if _, err := os.Stat(m.dir("aaaa1111")); !os.IsNotExist(err) {
		t.Errorf("dir after destroy: %v", err)
	}
}

// TestStart_RefusesWhileHypervisorDoesNotAnswer (M4): start boots no second
// hypervisor on the disk of one still running, and leaves it running.
func TestStart_RefusesWhileHypervisorDoesNotAnswer(t *testing.T) {
	m, d, _ := testManager(t)
	addVM(t, m, "web", "aaaa1111", api.StateError)
	cmd, adopt := hungHypervisor(t, m, "aaaa1111")
	d.adopt = adopt
	_, err := m.Start(context.Background(), "web", "", nil)
	if err == nil || !errors.Is(err, ErrBadState) || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("Start = %v, want a refusal saying the hypervisor does not answer", err)
	}
	if d.starts != 0 {
		t.Error("a second hypervisor was started")
	}
	if !alive(cmd.Process.Pid) {
		t.Error("the running hypervisor was killed by a refused start")
	}
	if vm := getVM(t, m, "web"); vm.State != api.StateError {
		t.Errorf("state after the refused start = %s, want error as before", vm.State)
	}
	if len(ops(t, m)) != 0 {
		t.Errorf("ops left: %v", ops(t, m))
	}
	// Stop kills it; then start works.
	if _, err := m.Stop(context.Background(), "web", ""); err != nil {
		t.Fatal(err)
	}
	if alive(cmd.Process.Pid) {
		t.Error("stop did not kill the hypervisor that did not answer")
	}
}

// TestReconcile_UnresponsiveIsError (M4, M6): reconcile marks a VM whose
// hypervisor runs but does not answer error, not stopped, and leaves its tap.
func TestReconcile_UnresponsiveIsError(t *testing.T) {
	m, d, n := testManager(t)
	addVM(t, m, "web", "aaaa1111", api.StateRunning)
	cmd, adopt := hungHypervisor(t, m, "aaaa1111")
	d.adopt = adopt
	n.taps = []string{"tap_aaaa1111"}
	if err := m.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	vm := getVM(t, m, "web")
	if vm.State != api.StateError || !strings.Contains(vm.Reason, "does not answer") {
		t.Errorf("after reconcile: %s (%s), want error saying it does not answer", vm.State, vm.Reason)
	}
	if n.wasRemoved("tap_aaaa1111") {
		t.Error("the tap of a running hypervisor was removed")
	}
	if !alive(cmd.Process.Pid) {
		t.Error("reconcile killed the hypervisor")
	}
}

// TestReconcile_OneBadVMDoesNotStopTheRest (M6): a VM whose cleanup fails is
// marked error with the reason; the others are reconciled and Reconcile
// succeeds, so the daemon starts.
func TestReconcile_OneBadVMDoesNotStopTheRest(t *testing.T) {
	m, _, n := testManager(t)
	addVM(t, m, "bad", "aaaa1111", api.StateRunning)
	addVM(t, m, "good", "bbbb2222", api.StateRunning)
	addVM(t, m, "gone", "cccc3333", api.StateCreating)
	// An interrupted destroy whose tap cannot be removed, and a create to undo.
	m.cfg.Store.Update(func(tx *store.Tx) error {
		tx.PutOp(&store.Op{ID: "create-cccc3333", Kind: "create", VMName: "gone", VMID: "cccc3333", Steps: []string{stepLease}})
		return nil
	})
	n.fail["tap_aaaa1111"] = errors.New("netlink: device busy")
	if err := m.Reconcile(context.Background()); err != nil {
		t.Fatalf("Reconcile = %v, want nil (one bad vm must not stop the daemon)", err)
	}
	if vm := getVM(t, m, "bad"); vm.State != api.StateError || !strings.Contains(vm.Reason, "device busy") {
		t.Errorf("bad: %s (%s), want error with the netlink reason", vm.State, vm.Reason)
	}
	// Its hypervisor died while the daemon was down: a death, restarted.
	if vm := getVM(t, m, "good"); vm.State != api.StateRestarting || !strings.Contains(vm.Reason, "exited while the daemon was down") {
		t.Errorf("good: %s (%s), want restarting: its hypervisor exited while the daemon was down", vm.State, vm.Reason)
	}
	if _, err := m.cfg.Store.GetVM("gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the interrupted create was not undone: %v", err)
	}
	if len(ops(t, m)) != 0 {
		t.Errorf("ops left: %v", ops(t, m))
	}
}

// TestStop_FromEveryState (L3): stop works from every state a VM can be left
// in; a failed stop leaves error with the reason, and a retry stops it.
func TestStop_FromEveryState(t *testing.T) {
	for _, state := range []string{api.StateRunning, api.StateStarting, api.StateStopping, api.StateStopped, api.StateError, api.StateCreating} {
		t.Run(state, func(t *testing.T) {
			m, _, _ := testManager(t)
			addVM(t, m, "web", "aaaa1111", state)
			vm, err := m.Stop(context.Background(), "web", "")
			if err != nil {
				t.Fatal(err)
			}
			want := api.StateStopped
			if state == api.StateCreating {
				want = api.StateError // its create never finished: destroy it
			}
			if vm.State != want {
				t.Errorf("after stop: %s, want %s", vm.State, want)
			}
			if len(ops(t, m)) != 0 {
				t.Errorf("ops left: %v", ops(t, m))
			}
			if err := m.Destroy(context.Background(), "web", ""); err != nil {
				t.Errorf("destroy after stop: %v", err)
			}
		})
	}
	t.Run("failing", func(t *testing.T) {
		m, _, n := testManager(t)
		addVM(t, m, "web", "aaaa1111", api.StateStopping)
		n.fail["tap_aaaa1111"] = errors.New("netlink: no buffer space")
		if _, err := m.Stop(context.Background(), "web", ""); err == nil {
			t.Fatal("Stop succeeded although the tap could not be removed")
		}
		if vm := getVM(t, m, "web"); vm.State != api.StateError || !strings.Contains(vm.Reason, "no buffer space") {
			t.Errorf("after a failed stop: %s (%s), want error with the reason", vm.State, vm.Reason)
		}
		if len(ops(t, m)) != 0 {
			t.Errorf("ops left: %v", ops(t, m))
		}
		delete(n.fail, "tap_aaaa1111")
		if vm, err := m.Stop(context.Background(), "web", ""); err != nil || vm.State != api.StateStopped {
			t.Fatalf("retried stop: %v", err)
		}
		// A destroy that fails leaves error with the reason, and can be retried.
		n.fail["tap_aaaa1111"] = errors.New("netlink: no buffer space")
		if err := m.Destroy(context.Background(), "web", ""); err == nil {
			t.Fatal("Destroy succeeded although the tap could not be removed")
		}
		if vm := getVM(t, m, "web"); vm.State != api.StateError || !strings.Contains(vm.Reason, "no buffer space") {
			t.Errorf("after a failed destroy: %s (%s)", vm.State, vm.Reason)
		}
		delete(n.fail, "tap_aaaa1111")
		if err := m.Destroy(context.Background(), "web", ""); err != nil {
			t.Fatalf("retried destroy: %v", err)
		}
	})
}

// TestStart_FailedBootIsADeath (L3; self-healing): a start whose hypervisor
// fails leaves the VM restarting after the first backoff, with the reason,
// not starting; its owner wants it running.
func TestStart_FailedBootIsADeath(t *testing.T) {
	m, d, _ := testManager(t)
	addVM(t, m, "web", "aaaa1111", api.StateStopped)
	d.start = func(vmm.Spec) (vmm.Instance, error) { return nil, errors.New("kvm: permission denied") }
	if _, err := m.Start(context.Background(), "web", "", nil); err == nil {
		t.Fatal("Start succeeded")
	}
	vm := getVM(t, m, "web")
	if vm.State != api.StateRestarting || !strings.Contains(vm.Reason, "permission denied") || !strings.Contains(vm.Reason, "restart in 1s (1 of 5") {
		t.Errorf("after a failed start: %s (%s)", vm.State, vm.Reason)
	}
	if vm.Desired != api.DesiredRunning || len(vm.Deaths) != 1 {
		t.Errorf("after a failed start: desired %q, deaths %v; want running, one death", vm.Desired, vm.Deaths)
	}
	if len(ops(t, m)) != 0 {
		t.Errorf("ops left: %v", ops(t, m))
	}
}

// TestCreate_RacingDestroyLeavesNoGhost (L2): a create of a name a destroy is
// still finishing is refused and leaves no record, lease or op.
func TestCreate_RacingDestroyLeavesNoGhost(t *testing.T) {
	m, _, _ := testManager(t)
	// The destroy of "web" has committed (its record is gone) but not yet ended.
	if err := m.begin("web", "being destroyed"); err != nil {
		t.Fatal(err)
	}
	req := api.CreateVMRequest{Name: "web", CPUs: 1, MemoryMiB: 1024, DiskBytes: 2 << 30, Port: 3000}
	if _, _, err := reserve(t, m, req); !errors.Is(err, ErrBusy) {
		t.Fatalf("reserve during the destroy = %v, want ErrBusy", err)
	}
	m.cfg.Store.View(func(tx *store.Tx) error {
		if vms, _ := tx.VMs(); len(vms) != 0 {
			t.Errorf("ghost records: %v", vms)
		}
		if leases, _ := tx.Leases(); len(leases) != 0 {
			t.Errorf("ghost leases: %v", leases)
		}
		return nil
	})
	if len(ops(t, m)) != 0 {
		t.Errorf("ghost ops: %v", ops(t, m))
	}
	m.end("web") // the destroy ends
	vm, _, err := reserve(t, m, req)
	if err != nil {
		t.Fatal(err)
	}
	if !m.isBusy("web") {
		t.Error("a reserved name is not busy")
	}
	m.end(vm.Name)
	// A reserve that fails inside its transaction leaves the name free.
	req.Name = "web2"
	m.memTotal = func() (int, error) { return 1024, nil }
	if _, _, err := reserve(t, m, req); err == nil {
		t.Fatal("reserve beyond the host's memory succeeded")
	}
	if m.isBusy("web2") {
		t.Error("a failed reserve left its name busy")
	}
}

// fakeInstance counts Close calls.
type fakeInstance struct {
	closed int
}

func (f *fakeInstance) PID() int                       { return 42 }
func (f *fakeInstance) Shutdown(context.Context) error { return nil }
func (f *fakeInstance) Kill() error                    { return nil }
func (f *fakeInstance) Wait(context.Context) error     { return nil }
func (f *fakeInstance) Running() bool                  { return false }
func (f *fakeInstance) Close() error                   { f.closed++; return nil }

// TestSetInstance_ClosesReplaced (L5): an instance replaced or cleared has its
// pidfd closed, once.
func TestSetInstance_ClosesReplaced(t *testing.T) {
	m, _, _ := testManager(t)
	a, b := &fakeInstance{}, &fakeInstance{}
	m.setInstance("x", a)
	m.setInstance("x", a)
	if a.closed != 0 {
		t.Fatal("setting the same instance again closed it")
	}
	m.setInstance("x", b)
	m.setInstance("x", nil)
	if a.closed != 1 || b.closed != 1 {
		t.Errorf("closed a=%d b=%d, want 1 each", a.closed, b.closed)
	}
}

// TestRecord_OnlyListedSteps: every step an operation records is in Steps (the
// crash table kills the daemon at each), and an unlisted one is refused.
func TestRecord_OnlyListedSteps(t *testing.T) {
	m, _, _ := testManager(t)
	op := &store.Op{ID: "stop-x", Kind: "stop"}
	if err := m.record(op, "somewhere-new"); err == nil || !strings.Contains(err.Error(), "missing from vm.Steps") {
		t.Errorf("record of an unlisted step = %v", err)
	}
	seen := map[string]bool{}
	for _, s := range Steps {
		if seen[s.String()] {
			t.Errorf("step %s listed twice", s)
		}
		seen[s.String()] = true
		if err := m.record(&store.Op{ID: s.Op + "-x", Kind: s.Op}, s.Name); err != nil {
			t.Errorf("record %s: %v", s, err)
		}
	}
	for _, op := range []string{"create", "start", "stop", "destroy"} {
		if !isStep(op, map[string]string{"create": stepLease, "start": stepStarting, "stop": stepStopping, "destroy": stepDestroying}[op]) {
			t.Errorf("%s's first step is not listed", op)
		}
	}
}

// TestReconcile_KillsHypervisorWithoutRecord (L6, M4): a hypervisor still
// using the directory of a VM whose record is gone (an interrupted destroy, or
// one a daemon never wrote a pid file for) is killed before its directory is
// removed, both when an op names the VM and when only the directory is left.
func TestReconcile_KillsHypervisorWithoutRecord(t *testing.T) {
	m, _, _ := testManager(t)
	for _, id := range []string{"dddd4444", "eeee5555"} {
		if err := os.MkdirAll(m.dir(id), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	withOp, _ := hungHypervisor(t, m, "dddd4444")
	dirOnly, _ := hungHypervisor(t, m, "eeee5555")
	m.cfg.Store.Update(func(tx *store.Tx) error {
		return tx.PutOp(&store.Op{ID: "destroy-dddd4444", Kind: "destroy", VMName: "x", VMID: "dddd4444", Steps: []string{stepDestroying}})
	})
	if err := m.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []*exec.Cmd{withOp, dirOnly} {
		if alive(cmd.Process.Pid) {
			t.Errorf("the hypervisor of %s still runs", cmd.Args[0])
		}
	}
	for _, id := range []string{"dddd4444", "eeee5555"} {
		if _, err := os.Stat(m.dir(id)); !os.IsNotExist(err) {
			t.Errorf("dir %s left: %v", id, err)
		}
	}
	if len(ops(t, m)) != 0 {
		t.Errorf("ops left: %v", ops(t, m))
	}
}

// TestOps_ActOnlyOnTheVMLookedUp (L11): a stop, start or destroy that names a
// VM by name and the id its caller looked up does nothing to another VM that
// has taken the name since; it is not found, and no op or busy mark is left.
func TestOps_ActOnlyOnTheVMLookedUp(t *testing.T) {
	m, d, _ := testManager(t)
	addVM(t, m, "web", "bbbb2222", api.StateStopped) // the name's VM now; the caller saw aaaa1111
	if _, err := m.Start(context.Background(), "web", "aaaa1111", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Start with a stale id = %v, want not found", err)
	}
	if _, err := m.Stop(context.Background(), "web", "aaaa1111"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stop with a stale id = %v, want not found", err)
	}
	if err := m.Destroy(context.Background(), "web", "aaaa1111"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Destroy with a stale id = %v, want not found", err)
	}
	if vm := getVM(t, m, "web"); vm.ID != "bbbb2222" || vm.State != api.StateStopped {
		t.Errorf("the other vm after the refused ops: %s %s", vm.ID, vm.State)
	}
	if d.starts != 0 || len(ops(t, m)) != 0 {
		t.Errorf("starts %d, ops %v: want none", d.starts, ops(t, m))
	}
	// With its own id the op goes ahead.
	if err := m.Destroy(context.Background(), "web", "bbbb2222"); err != nil {
		t.Fatal(err)
	}
}

// reserve runs the first step of a create, with the current image and a fresh
// identity, as Create does.
func reserve(t *testing.T, m *Manager, req api.CreateVMRequest) (*store.VM, *store.Op, error) {
	t.Helper()
	b, err := m.cfg.Bases.Current(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ident, err := guest.NewIdentity(m.cfg.Key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	return m.reserve(Owner{ID: "admin"}, req, b.ID, ident, 0)
}

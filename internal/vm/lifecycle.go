package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// opFor records a new operation on vm and marks it busy; the caller must end().
func (m *Manager) opFor(name, kind, busyAs string, allowed ...string) (*store.VM, *store.Op, error) {
	if err := m.begin(name, busyAs); err != nil {
		return nil, nil, err
	}
	var vm *store.VM
	op := &store.Op{Kind: kind, StartedAt: time.Now().UTC()}
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		var err error
		if vm, err = tx.VM(name); err != nil {
			return err
		}
		if len(allowed) > 0 && !contains(allowed, vm.State) {
			return fmt.Errorf("%w: vm %q is %s", ErrBadState, name, vm.State)
		}
		op.ID, op.VMName, op.VMID = kind+"-"+vm.ID, vm.Name, vm.ID
		switch kind {
		case "start":
			vm.State = api.StateStarting
		case "stop":
			vm.State = api.StateStopping
		}
		if err := tx.PutVM(vm); err != nil {
			return err
		}
		return tx.PutOp(op)
	})
	if err != nil {
		m.end(name)
		return nil, nil, err
	}
	return vm, op, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Start boots a stopped VM and waits for SSH.
func (m *Manager) Start(ctx context.Context, name string, progress Progress) (*store.VM, error) {
	if progress == nil {
		progress = noProgress
	}
	vm, op, err := m.opFor(name, "start", "starting", api.StateStopped, api.StateError)
	if err != nil {
		return nil, err
	}
	defer m.end(name)
	vm, err = m.boot(ctx, vm, op, progress)
	if err != nil {
		m.halt(context.WithoutCancel(ctx), vm, op, api.StateError, err.Error())
		return nil, err
	}
	return vm, nil
}

// Stop powers a running VM off gracefully (Ctrl-Alt-Del), killing it after the
// stop timeout, and releases its tap. Its disk and address stay.
func (m *Manager) Stop(ctx context.Context, name string) (*store.VM, error) {
	vm, op, err := m.opFor(name, "stop", "stopping", api.StateRunning, api.StateError)
	if err != nil {
		return nil, err
	}
	defer m.end(name)
	return m.halt(ctx, vm, op, api.StateStopped, "")
}

// halt stops the hypervisor (if running), removes the tap, and leaves the VM in
// state with reason; it finishes stop and rolls back start.
func (m *Manager) halt(ctx context.Context, vm *store.VM, op *store.Op, state, reason string) (*store.VM, error) {
	if inst := m.liveInstance(ctx, vm); inst != nil {
		graceful, err := vmm.Stop(ctx, inst, m.cfg.StopTimeout)
		if err != nil {
			return vm, fmt.Errorf("stop vm %s: %w", vm.Name, err)
		}
		if !graceful {
			m.log.Warn("vm did not power off in time; killed", "name", vm.Name, "timeout", m.cfg.StopTimeout)
		}
	}
	m.setInstance(vm.ID, nil)
	if ip, err := netip.ParseAddr(vm.IP); err == nil {
		if err := m.cfg.Network.RemoveVM(ctx, vm.Tap, ip); err != nil {
			return vm, fmt.Errorf("stop vm %s: %w", vm.Name, err)
		}
	}
	var out *store.VM
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		cur, err := tx.VM(vm.Name)
		if err != nil {
			return err
		}
		cur.State, cur.Reason, cur.PID = state, reason, 0
		out = cur
		if err := tx.PutVM(cur); err != nil {
			return err
		}
		return tx.DeleteOp(op.ID)
	})
	return out, err
}

// liveInstance returns the VM's running hypervisor, adopting it from its pid
// file when this daemon did not start it; nil when none runs.
func (m *Manager) liveInstance(ctx context.Context, vm *store.VM) vmm.Instance {
	if inst := m.instance(vm.ID); inst != nil && inst.Running() {
		return inst
	}
	inst, err := m.cfg.Driver.Adopt(ctx, m.spec(vm))
	if err != nil {
		if !errors.Is(err, vmm.ErrNotRunning) && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("adopt", "name", vm.Name, "err", err)
		}
		return nil
	}
	return inst
}

// Destroy kills the VM and removes everything it had: hypervisor, tap, nft
// element, directory and disk, address lease and record.
func (m *Manager) Destroy(ctx context.Context, name string) error {
	vm, op, err := m.opFor(name, "destroy", "being destroyed")
	if err != nil {
		return err
	}
	defer m.end(name)
	m.log.Info("destroying vm", "name", vm.Name, "id", vm.ID)
	return m.teardown(ctx, vm.ID, vm, op.ID)
}

// teardown removes everything of VM id (vm may be nil when its record is gone).
// Each part tolerates being already gone, so it finishes any interrupted
// destroy or create.
func (m *Manager) teardown(ctx context.Context, id string, vm *store.VM, opID string) error {
	if vm != nil {
		if inst := m.liveInstance(ctx, vm); inst != nil {
			inst.Kill()
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := inst.Wait(wctx)
			cancel()
			if err != nil {
				return fmt.Errorf("destroy vm %s: hypervisor did not exit: %w", vm.Name, err)
			}
		}
		ip, _ := netip.ParseAddr(vm.IP)
		if err := m.cfg.Network.RemoveVM(ctx, vm.Tap, ip); err != nil {
			return fmt.Errorf("destroy vm %s: %w", vm.Name, err)
		}
	} else if err := m.cfg.Network.RemoveVM(ctx, "tap_"+id, netip.Addr{}); err != nil {
		return fmt.Errorf("destroy vm %s: %w", id, err)
	}
	m.setInstance(id, nil)
	if err := os.RemoveAll(m.dir(id)); err != nil {
		return fmt.Errorf("destroy vm %s: %w", id, err)
	}
	return m.cfg.Store.Update(func(tx *store.Tx) error {
		if err := tx.Release(id); err != nil {
			return err
		}
		if cur, err := tx.VMByID(id); err == nil {
			if err := tx.DeleteVM(cur.Name); err != nil {
				return err
			}
		}
		return tx.DeleteOp(opID)
	})
}

// undoCreate removes everything an interrupted or failed create may have made.
func (m *Manager) undoCreate(ctx context.Context, op *store.Op) error {
	var vm *store.VM
	m.cfg.Store.View(func(tx *store.Tx) error {
		vm, _ = tx.VMByID(op.VMID)
		return nil
	})
	return m.teardown(ctx, op.VMID, vm, op.ID)
}

// watch notices a VM whose hypervisor exits on its own (a guest poweroff or a
// crash) and marks it stopped.
func (m *Manager) watch(name, id string, inst vmm.Instance) {
	inst.Wait(context.Background())
	m.mu.Lock()
	_, busy := m.busy[name]
	current := m.instances[id] == inst
	if !busy && current {
		m.busy[name] = "stopping"
	}
	m.mu.Unlock()
	if busy || !current {
		return // an operation of ours stopped it and records the state itself
	}
	defer m.end(name)
	m.log.Warn("vm exited on its own", "name", name)
	vm, err := m.cfg.Store.GetVM(name)
	if err != nil || vm.ID != id {
		return
	}
	m.halt(context.Background(), vm, &store.Op{ID: "watch-" + id}, api.StateStopped, "the vm powered off or crashed")
}

package vm

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/names"
	"github.com/fcmhost/fcm/internal/store"
)

// Reconcile brings the host in line with the store after a (re)start: it
// finishes or rolls back interrupted operations, re-adopts running VMs (it never
// kills a VM because the daemon restarted), marks VMs that died meanwhile as
// stopped, and removes leaked taps, nft elements, leases and directories.
func (m *Manager) Reconcile(ctx context.Context) error {
	var ops []*store.Op
	if err := m.cfg.Store.View(func(tx *store.Tx) (err error) { ops, err = tx.Ops(); return }); err != nil {
		return err
	}
	for _, op := range ops {
		m.log.Info("resuming interrupted operation", "kind", op.Kind, "vm", op.VMName, "steps", op.Steps)
		var err error
		switch op.Kind {
		case "create", "destroy":
			err = m.undoCreate(ctx, op) // both end with the VM fully gone
		case "start", "stop":
			var vm *store.VM
			if vm, err = m.cfg.Store.GetVM(op.VMName); err == nil {
				_, err = m.halt(ctx, vm, op, api.StateStopped, "")
			}
		default:
			err = m.cfg.Store.Update(func(tx *store.Tx) error { return tx.DeleteOp(op.ID) })
		}
		if err != nil {
			return err
		}
	}

	vms, err := m.cfg.Store.ListVMs()
	if err != nil {
		return err
	}
	live := map[string]bool{} // taps and addresses of running VMs
	known := map[string]bool{}
	for _, vm := range vms {
		known[vm.ID] = true
		if vm.State != api.StateRunning {
			continue
		}
		inst := m.liveInstance(ctx, vm)
		if inst == nil {
			m.log.Warn("vm exited while the daemon was down", "name", vm.Name)
			if _, err := m.halt(ctx, vm, &store.Op{ID: "reconcile-" + vm.ID}, api.StateStopped, "exited while the daemon was down"); err != nil {
				return err
			}
			continue
		}
		m.log.Info("re-adopted running vm", "name", vm.Name, "pid", inst.PID())
		m.setInstance(vm.ID, inst)
		ip, _ := netip.ParseAddr(vm.IP)
		if err := m.cfg.Network.AddVM(ctx, vm.Tap, ip, parseMAC(vm.MAC)); err != nil { // idempotent: restores a lost element
			return err
		}
		live[vm.Tap], live[vm.IP] = true, true
		if vm.PID != inst.PID() {
			m.cfg.Store.UpdateVM(vm.Name, func(v *store.VM) error { v.PID = inst.PID(); return nil })
		}
		go m.watch(vm.Name, vm.ID, inst)
	}
	return m.removeLeaks(ctx, known, live)
}

func (m *Manager) removeLeaks(ctx context.Context, known, live map[string]bool) error {
	taps, err := m.cfg.Network.TapNames()
	if err != nil {
		return err
	}
	for _, tap := range taps {
		if !live[tap] {
			m.log.Info("removing leaked tap", "tap", tap)
			if err := m.cfg.Network.RemoveVM(ctx, tap, netip.Addr{}); err != nil {
				return err
			}
		}
	}
	if lister, ok := m.cfg.Network.(interface{ VMAddrs() ([]netip.Addr, error) }); ok {
		addrs, err := lister.VMAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if !live[a.String()] {
				m.log.Info("removing leaked nft element", "ip", a)
				if err := m.cfg.Network.RemoveVM(ctx, "", a); err != nil {
					return err
				}
			}
		}
	}
	err = m.cfg.Store.Update(func(tx *store.Tx) error {
		leases, err := tx.Leases()
		if err != nil {
			return err
		}
		for ip, id := range leases {
			if !known[id] {
				m.log.Info("releasing leaked lease", "ip", ip, "vm_id", id)
				if err := tx.Release(id); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(m.cfg.DataDir, "vms"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, e := range entries {
		if e.IsDir() && names.ValidID(e.Name()) && !known[e.Name()] && !strings.HasPrefix(e.Name(), ".") {
			m.log.Info("removing leaked vm directory", "dir", e.Name())
			if err := os.RemoveAll(m.dir(e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

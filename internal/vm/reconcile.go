package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/names"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/vishvananda/netlink"
)

// Reconcile brings the host in line with the store after a (re)start: it
// finishes or rolls back interrupted operations, re-adopts running VMs (it never
// kills a VM because the daemon restarted), marks VMs that died meanwhile as
// stopped, and removes leaked taps, nft elements, leases and directories.
//
// It works VM by VM and step by step: a VM that cannot be cleaned up (a hung
// hypervisor, a netlink or filesystem error, a failed store write) is marked
// error with the reason and logged, and the others are still reconciled. Only
// a store that cannot be read is an error.
func (m *Manager) Reconcile(ctx context.Context) error {
	m.hostRestarted = m.checkBootID()
	if m.hostRestarted {
		m.log.Warn("the host restarted since the daemon last ran: vms that should run are booted again")
	}
	pruneLogs(filepath.Join(m.cfg.DataDir, "logs"), time.Now())
	if err := m.cfg.Templates.Clean(); err != nil {
		m.log.Warn("disk templates: leftovers of an interrupted mkfs", "err", err)
	}
	var ops []*store.Op
	if err := m.cfg.Store.View(func(tx *store.Tx) (err error) { ops, err = tx.Ops(); return }); err != nil {
		return err
	}
	knewIDs := map[string]bool{} // every VM id the op log names
	for _, op := range ops {
		knewIDs[op.VMID] = true
		m.log.Info("resuming interrupted operation", "kind", op.Kind, "vm", op.VMName, "steps", op.Steps)
		if err := m.resume(ctx, op); err != nil {
			m.markError(op.VMID, op.ID, fmt.Errorf("could not finish the interrupted %s: %w", op.Kind, err))
		}
	}

	vms, err := m.cfg.Store.ListVMs()
	if err != nil {
		return err
	}
	live := map[string]bool{} // taps and addresses of VMs whose hypervisor runs
	known := map[string]bool{}
	for _, vm := range vms {
		known[vm.ID] = true
		m.reconcileVM(ctx, vm, live)
	}
	for id := range known {
		knewIDs[id] = true
	}
	m.removeLeaks(ctx, known, knewIDs, live)
	return nil
}

// resume finishes or undoes one interrupted operation, within a deadline.
func (m *Manager) resume(ctx context.Context, op *store.Op) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.StopTimeout+3*killWait)
	defer cancel()
	switch op.Kind {
	case "create", "destroy":
		return m.undoCreate(ctx, op) // both end with the VM fully gone
	case "suspend", "wake":
		vm, err := m.cfg.Store.GetVM(op.VMName)
		if errors.Is(err, store.ErrNotFound) {
			return m.cfg.Store.Update(func(tx *store.Tx) error { return tx.DeleteOp(op.ID) })
		}
		if err != nil {
			return err
		}
		return m.resumeSuspendOp(ctx, vm, op)
	case "checkpoint", "restore":
		vm, err := m.cfg.Store.GetVM(op.VMName)
		if errors.Is(err, store.ErrNotFound) {
			return m.cfg.Store.Update(func(tx *store.Tx) error { return tx.DeleteOp(op.ID) })
		}
		if err != nil {
			return err
		}
		if op.Kind == "restore" {
			return m.resumeRestoreOp(ctx, vm, op)
		}
		return m.resumeCheckpointOp(ctx, vm, op)
	case "start", "restart", "stop":
		vm, err := m.cfg.Store.GetVM(op.VMName)
		if errors.Is(err, store.ErrNotFound) {
			return m.cfg.Store.Update(func(tx *store.Tx) error { return tx.DeleteOp(op.ID) })
		}
		if err != nil {
			return err
		}
		set := to(api.StateStopped, "")
		if op.Kind != "stop" {
			set = again("interrupted", "its start was interrupted by the daemon's restart", time.Now())
		}
		_, err = m.halt(ctx, vm, op, set)
		return err
	}
	return m.cfg.Store.Update(func(tx *store.Tx) error { return tx.DeleteOp(op.ID) })
}

// reconcileVM re-adopts one VM's hypervisor, or records that it is gone, and
// marks the taps and addresses of every VM whose hypervisor runs in live.
func (m *Manager) reconcileVM(ctx context.Context, vm *store.VM, live map[string]bool) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.StopTimeout+killWait)
	defer cancel()
	m.removeHalfCheckpoints(vm.ID) // no operation runs yet
	inst, stray := m.liveInstance(ctx, vm)
	if inst != nil || vm.State == api.StateSuspended {
		// Nothing it uses is removed while it runs, or sleeps with its tap.
		live[vm.Tap], live[vm.IP] = true, true
	}
	switch {
	case stray != nil:
		vmm.Close(inst)
		m.log.Error("vm's hypervisor runs but cannot be managed", "name", vm.Name, "err", stray)
		m.markError(vm.ID, "", fmt.Errorf("%v; stop or destroy the vm to kill it", stray))
	case inst != nil && vm.State == api.StateSuspended && isStandby(ctx, inst):
		// A standby of the daemon's last run: it waits for this VM's wake.
		m.log.Info("re-adopted a standby hypervisor", "name", vm.Name, "pid", inst.PID())
		m.mu.Lock()
		delete(m.instances, vm.ID) // not the VM's running hypervisor
		m.mu.Unlock()
		m.keepStandby(vm.ID, inst)
	case inst != nil && (vm.State == api.StateRunning || vm.State == api.StatePaused):
		m.log.Info("re-adopted running vm", "name", vm.Name, "pid", inst.PID())
		ip, _ := netip.ParseAddr(vm.IP)
		if err := m.cfg.Network.AddVM(ctx, vm.Tap, ip, parseMAC(vm.MAC)); err != nil { // idempotent: restores a lost element
			m.markError(vm.ID, "", fmt.Errorf("re-adopted (pid %d) but its network could not be restored: %w", inst.PID(), err))
		}
		if vm.PID != inst.PID() {
			m.cfg.Store.UpdateVM(vm.Name, func(v *store.VM) error { v.PID = inst.PID(); return nil })
		}
		go m.watch(vm.Name, vm.ID, inst)
	case inst != nil:
		if vm.State != api.StateError {
			m.markError(vm.ID, "", fmt.Errorf("its hypervisor (pid %d) runs although the vm was %s; stop or destroy it", inst.PID(), vm.State))
		}
	case vm.State == api.StateRunning || vm.State == api.StatePaused:
		set := again("host-restart", "host restart", time.Now())
		if !m.hostRestarted {
			// Its hypervisor died while the daemon was down: a death, though
			// why is not known (it was not this daemon's child).
			set = died("its hypervisor exited while the daemon was down", time.Now())
		}
		m.log.Warn("vm's hypervisor is gone", "name", vm.Name, "host_restarted", m.hostRestarted, "desired", vm.DesiredState())
		if _, err := m.halt(ctx, vm, &store.Op{ID: "reconcile-" + vm.ID}, set); err != nil {
			m.markError(vm.ID, "", err)
		}
	case vm.State == api.StateSuspended && (m.hostRestarted || !m.hasImage(vm.ID)):
		// Its memory file was in the host's page cache, not on disk: a host
		// restart leaves an image that must not be woken.
		why := "its suspend image was lost in a host restart"
		if !m.hostRestarted {
			why = "its suspend image is gone"
		}
		m.log.Warn("vm cannot be woken; it boots cold", "name", vm.Name, "why", why)
		if _, err := m.halt(ctx, vm, &store.Op{ID: "reconcile-" + vm.ID}, again("host-restart", why, time.Now())); err != nil {
			m.markError(vm.ID, "", err)
		}
	case vm.State == api.StateStarting || vm.State == api.StateStopping || vm.State == api.StateCreating:
		m.markError(vm.ID, "", fmt.Errorf("its %s was interrupted", strings.TrimSuffix(vm.State, "ing")))
	}
}

// fcmTap is the form of the taps fcm makes: tap_ and a VM id.
var fcmTap = regexp.MustCompile(`^tap_[a-z0-9]{8}$`)

// ownTap says whether reconcile may remove tap: only taps of fcm's form that
// are on fcm's bridge or name a VM id fcm knows or knew; other tools' taps are
// never touched.
func ownTap(tap string, knewIDs map[string]bool, onBridge func(string) bool) bool {
	if !fcmTap.MatchString(tap) {
		return false
	}
	return knewIDs[strings.TrimPrefix(tap, "tap_")] || onBridge(tap)
}

// onBridge says whether link is enslaved to fcm's bridge.
func (m *Manager) onBridge(link string) bool {
	if m.cfg.Bridge == "" {
		return false
	}
	l, err := netlink.LinkByName(link)
	if err != nil {
		return false
	}
	br, err := netlink.LinkByName(m.cfg.Bridge)
	return err == nil && l.Attrs().MasterIndex == br.Attrs().Index
}

// removeLeaks removes what no VM uses, each on its own: an error is logged and
// the rest still removed.
func (m *Manager) removeLeaks(ctx context.Context, known, knewIDs, live map[string]bool) {
	taps, err := m.cfg.Network.TapNames()
	if err != nil {
		m.log.Error("list taps", "err", err)
	}
	for _, tap := range taps {
		if live[tap] {
			continue
		}
		if !ownTap(tap, knewIDs, m.onBridge) {
			m.log.Info("leaving a tap fcm did not make", "tap", tap)
			continue
		}
		m.log.Info("removing leaked tap", "tap", tap)
		if err := m.cfg.Network.RemoveVM(ctx, tap, netip.Addr{}); err != nil {
			m.log.Error("remove leaked tap", "tap", tap, "err", err)
		}
	}
	groups, err := cgroup.List()
	if err != nil {
		m.log.Error("list cgroups", "err", err)
	}
	for _, id := range groups {
		if live["tap_"+id] {
			continue // its hypervisor runs, adopted or not
		}
		m.log.Info("removing leaked cgroup", "vm_id", id)
		if err := cgroup.Kill(id); err != nil {
			m.log.Error("end the processes of a leaked cgroup", "vm_id", id, "err", err)
			continue
		}
		if err := cgroup.Remove(id); err != nil {
			m.log.Error("remove leaked cgroup", "vm_id", id, "err", err)
		}
	}
	if lister, ok := m.cfg.Network.(interface{ VMAddrs() ([]netip.Addr, error) }); ok {
		addrs, err := lister.VMAddrs()
		if err != nil {
			m.log.Error("list nft elements", "err", err)
		}
		for _, a := range addrs {
			if !live[a.String()] {
				m.log.Info("removing leaked nft element", "ip", a)
				if err := m.cfg.Network.RemoveVM(ctx, "", a); err != nil {
					m.log.Error("remove leaked nft element", "ip", a, "err", err)
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
		m.log.Error("release leaked leases", "err", err)
	}
	entries, err := os.ReadDir(filepath.Join(m.cfg.DataDir, "vms"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Error("list vm directories", "err", err)
	}
	for _, e := range entries {
		if e.IsDir() && names.ValidID(e.Name()) && !known[e.Name()] && !strings.HasPrefix(e.Name(), ".") {
			if p, err := vmm.FindByMarker(m.dir(e.Name()) + "/"); err == nil {
				m.log.Warn("killing the hypervisor of a leaked vm directory", "dir", e.Name(), "pid", p.PID())
				err := killAndWait(ctx, &vmm.Stray{Process: p})
				p.Close()
				if err != nil {
					m.log.Error("leaving the leaked vm directory of a live hypervisor", "dir", e.Name(), "err", err)
					continue
				}
			}
			m.log.Info("removing leaked vm directory", "dir", e.Name())
			if err := os.RemoveAll(m.dir(e.Name())); err != nil {
				m.log.Error("remove leaked vm directory", "dir", e.Name(), "err", err)
			}
		}
	}
}

// checkBootID says whether the host restarted since the daemon last ran: the
// kernel's boot id differs from the one the daemon wrote in its data dir. It
// writes the current one.
func (m *Manager) checkBootID() bool {
	cur, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return false
	}
	path := filepath.Join(m.cfg.DataDir, "boot_id")
	old, err := os.ReadFile(path)
	if string(old) != string(cur) {
		os.WriteFile(path, cur, 0o600)
	}
	return err == nil && string(old) != string(cur)
}

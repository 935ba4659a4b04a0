package vm

import (
	"context"
	"slices"
	"time"

	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// DefaultStandbys is how many suspended VMs keep a hypervisor waiting for
// their wake (fcm daemon --standbys).
const DefaultStandbys = 4

// standbys are hypervisors started ahead of a wake (vmm.Standbyer): QEMU
// with the VM's machine, memory file and tap, waiting for its state. A wake
// that finds one skips QEMU's start. At most Config.Standbys are kept, for
// the VMs suspended last.
type standbys struct {
	inst      map[string]vmm.Instance  // vm id -> its waiting hypervisor
	order     []string                 // vm ids, the oldest standby first
	preparing map[string]chan struct{} // vm id -> closed once its standby is made (or not)
}

// standbyer is the driver's standby support when the daemon keeps any.
func (m *Manager) standbyer() vmm.Standbyer {
	sb, ok := m.cfg.Driver.(vmm.Standbyer)
	if !ok || m.cfg.Standbys <= 0 {
		return nil
	}
	return sb
}

// prepareStandby starts, in the background, a hypervisor waiting for the
// wake of vm (just suspended), making room among the standbys by ending the
// oldest. Wakes, stops and destroys of vm wait for it (waitStandby).
func (m *Manager) prepareStandby(vm *store.VM) {
	sb := m.standbyer()
	if sb == nil {
		return
	}
	done := make(chan struct{})
	m.mu.Lock()
	if m.sb.preparing == nil {
		m.sb.preparing = map[string]chan struct{}{}
	}
	if m.sb.preparing[vm.ID] != nil || m.sb.inst[vm.ID] != nil {
		m.mu.Unlock()
		return
	}
	m.sb.preparing[vm.ID] = done
	m.mu.Unlock()
	go func() {
		defer func() {
			m.mu.Lock()
			delete(m.sb.preparing, vm.ID)
			m.mu.Unlock()
			close(done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		spec, err := m.spec(ctx, vm)
		if err == nil {
			var inst vmm.Instance
			t := time.Now()
			if inst, err = sb.Standby(ctx, spec); err == nil {
				m.log.Info("standby hypervisor waits for the vm's wake", "name", vm.Name, "pid", inst.PID(), "took", time.Since(t).Round(time.Millisecond))
				m.keepStandby(vm.ID, inst)
				return
			}
		}
		m.log.Warn("no standby hypervisor for the vm: its wake starts one", "name", vm.Name, "err", err)
	}()
}

// keepStandby records inst as VM id's standby, ending the oldest beyond
// Config.Standbys.
func (m *Manager) keepStandby(id string, inst vmm.Instance) {
	m.mu.Lock()
	if m.sb.inst == nil {
		m.sb.inst = map[string]vmm.Instance{}
	}
	m.sb.inst[id] = inst
	m.sb.order = append(slices.DeleteFunc(m.sb.order, func(s string) bool { return s == id }), id)
	var evict []vmm.Instance
	for len(m.sb.order) > m.cfg.Standbys {
		old := m.sb.order[0]
		m.sb.order = m.sb.order[1:]
		evict = append(evict, m.sb.inst[old])
		delete(m.sb.inst, old)
	}
	m.mu.Unlock()
	for _, inst := range evict {
		endStandby(inst)
	}
}

// takeStandby returns VM id's standby and forgets it (nil when it has none
// or it died), once any being made is.
func (m *Manager) takeStandby(id string) vmm.Instance {
	m.waitStandby(id)
	m.mu.Lock()
	inst := m.sb.inst[id]
	delete(m.sb.inst, id)
	m.sb.order = slices.DeleteFunc(m.sb.order, func(s string) bool { return s == id })
	m.mu.Unlock()
	if inst != nil && !inst.Running() {
		endStandby(inst)
		return nil
	}
	return inst
}

// dropStandby ends VM id's standby, if it has one.
func (m *Manager) dropStandby(id string) {
	if inst := m.takeStandby(id); inst != nil {
		endStandby(inst)
	}
}

// waitStandby waits until VM id's standby, if one is being made, is.
func (m *Manager) waitStandby(id string) {
	m.mu.Lock()
	ch := m.sb.preparing[id]
	m.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// endStandby kills a waiting hypervisor: it never ran the guest, so the
// suspend image stays good.
func endStandby(inst vmm.Instance) {
	inst.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inst.Wait(ctx)
	vmm.Close(inst)
}

// isStandby says whether inst, found running for a suspended VM, is a
// hypervisor waiting for its state (a standby of the daemon's last run).
func isStandby(ctx context.Context, inst vmm.Instance) bool {
	s, ok := inst.(interface {
		Status(context.Context) (string, error)
	})
	if !ok {
		return false
	}
	st, err := s.Status(ctx)
	return err == nil && st == vmm.StandbyStatus
}

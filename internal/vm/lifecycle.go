package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// killWait bounds the wait for a killed hypervisor to exit (one stuck in D
// state never does).
const killWait = 10 * time.Second

// opFor records a new operation on vm and marks it busy; the caller must end().
// prev is the state the VM was in before.
func (m *Manager) opFor(name, id, kind, busyAs string, allowed ...string) (vm *store.VM, op *store.Op, prev string, err error) {
	if err := m.begin(name, busyAs); err != nil {
		return nil, nil, "", err
	}
	op = &store.Op{Kind: kind, StartedAt: time.Now().UTC()}
	err = m.cfg.Store.Update(func(tx *store.Tx) error {
		var err error
		if vm, err = tx.VM(name); err != nil {
			return err
		}
		if id != "" && vm.ID != id {
			// The VM the caller looked up (and checked the owner of) is gone,
			// and another has its name since: not the one meant.
			return fmt.Errorf("%w: vm %q", store.ErrNotFound, name)
		}
		if len(allowed) > 0 && !contains(allowed, vm.State) {
			return fmt.Errorf("%w: vm %q is %s", ErrBadState, name, vm.State)
		}
		prev = vm.State
		if kind == "start" || kind == "restart" || kind == "wake" {
			if err := m.checkMemory(tx, vm.ID, vm.MemoryMiB); err != nil {
				return err
			}
		}
		op.ID, op.VMName, op.VMID = kind+"-"+vm.ID, vm.Name, vm.ID
		switch kind {
		case "start":
			vm.State, op.Steps = api.StateStarting, []string{stepStarting}
			vm.Desired, vm.Deaths, vm.Reason = api.DesiredRunning, nil, ""
		case "restart":
			vm.State, op.Steps = api.StateStarting, []string{stepRestarting}
			vm.Reason = causeAfter(vm)
		case "stop":
			vm.State, op.Steps = api.StateStopping, []string{stepStopping}
			vm.Desired = api.DesiredStopped
		case "suspend":
			vm.State, op.Steps = api.StateSuspending, []string{stepSuspending}
		case "wake":
			vm.State, op.Steps = api.StateWaking, []string{stepWaking}
		case "restore":
			vm.State, op.Steps = api.StateStopping, []string{stepRestoring}
		case "destroy":
			op.Steps = []string{stepDestroying}
		}
		if err := tx.PutVM(vm); err != nil {
			return err
		}
		return tx.PutOp(op)
	})
	if err != nil {
		m.end(name)
		return nil, nil, "", err
	}
	m.crashPoint(kind, op.Steps[0])
	return vm, op, prev, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Start boots a VM that is stopped, crashed, restarting or in error and waits
// for SSH; its desired state becomes running, with a fresh count of deaths. It
// refuses while a hypervisor of the VM still runs, answering or not. A
// non-empty id makes the start apply only to the VM with that id (see Stop).
// A boot that fails counts as a death: the daemon tries again (see Heal).
func (m *Manager) Start(ctx context.Context, name, id string, progress Progress) (*store.VM, error) {
	if v, err := m.cfg.Store.GetVM(name); err == nil && v.State == api.StateSuspended {
		return m.Wake(ctx, name, id) // where it was, not a cold boot
	} else if err == nil && v.State == api.StateStopped || err == nil && v.State == api.StateCrashed {
		m.makeRoom(ctx, v.MemoryMiB, v.ID)
	}
	return m.startAs(ctx, "start", name, id, progress)
}

// startAs is Start (kind "start") or the daemon's own restart of a VM in state
// restarting (kind "restart", which keeps the desired state and deaths).
func (m *Manager) startAs(ctx context.Context, kind, name, id string, progress Progress) (*store.VM, error) {
	if progress == nil {
		progress = noProgress
	}
	allowed := []string{api.StateStopped, api.StateError, api.StateCrashed, api.StateRestarting}
	if kind == "restart" {
		allowed = []string{api.StateRestarting}
	}
	vm, op, prev, err := m.opFor(name, id, kind, "starting", allowed...)
	if err != nil {
		return nil, err
	}
	defer m.end(name)
	if inst, stray := m.liveInstance(ctx, vm); inst != nil {
		err := fmt.Errorf("%w: vm %q: its hypervisor (pid %d) is still running; stop or destroy it first", ErrBadState, name, inst.PID())
		if stray != nil {
			err = fmt.Errorf("%w: vm %q: its hypervisor (pid %d) is still running but does not answer (%v); not starting a second one on its disk: stop or destroy it to kill it",
				ErrBadState, name, inst.PID(), stray)
			vmm.Close(inst)
		}
		m.abandon(vm, op, prev)
		return nil, err
	}
	vm, err = m.boot(ctx, vm, op, progress)
	if err != nil {
		e := exit{"died", "its boot failed: " + err.Error()}
		if inst := m.instance(vm.ID); inst != nil && !inst.Running() {
			if x := m.exitOf(vm.ID, inst); x.kind == "died" {
				e.cause = "its boot failed: " + x.cause
			}
		}
		set := died(e.cause, time.Now())
		if ctx.Err() != nil {
			// Cancelled (the daemon stops, or the client left): not the VM's fault.
			e.kind = "interrupted"
			set = again("interrupted", "its boot was interrupted", time.Now())
		}
		out, herr := m.halt(context.WithoutCancel(ctx), vm, op, set)
		if herr != nil {
			m.markError(vm.ID, op.ID, fmt.Errorf("%v; then stopping it failed: %w", err, herr))
			return nil, err
		}
		m.logDeath(out, e)
		switch out.State {
		case api.StateRestarting:
			err = fmt.Errorf("%w (the daemon boots it again in %s: see fcm ls)", err, time.Until(out.RestartAt).Round(time.Second))
		case api.StateCrashed:
			err = fmt.Errorf("%w (%s)", err, out.Reason)
		}
		return nil, err
	}
	return vm, nil
}

// abandon puts a VM back in the state it was in before an operation that did
// nothing, and forgets the operation.
func (m *Manager) abandon(vm *store.VM, op *store.Op, prev string) {
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		if cur, err := tx.VMByID(vm.ID); err == nil {
			cur.State = prev
			if err := tx.PutVM(cur); err != nil {
				return err
			}
		}
		return tx.DeleteOp(op.ID)
	})
	if err != nil {
		m.log.Error("abandon operation", "op", op.ID, "err", err)
	}
}

// Stop powers a VM off gracefully (Ctrl-Alt-Del), killing it after the stop
// timeout, and releases its tap. Its disk and address stay. It works from every
// state, so that a VM left starting, stopping or in error can always be
// stopped; a VM whose create never finished ends in error (destroy it).
// A non-empty id makes the stop apply only to the VM with that id: a caller that
// looked the VM up (and checked its owner) never acts on another VM that took
// the name meanwhile; it gets store.ErrNotFound.
func (m *Manager) Stop(ctx context.Context, name, id string) (*store.VM, error) {
	vm, op, prev, err := m.opFor(name, id, "stop", "stopping")
	if err != nil {
		return nil, err
	}
	defer m.end(name)
	state, reason := api.StateStopped, ""
	if prev == api.StateCreating {
		state, reason = api.StateError, "its create did not finish: destroy it"
	}
	out, err := m.halt(ctx, vm, op, to(state, reason))
	if err != nil {
		m.markError(vm.ID, op.ID, err)
		return nil, err
	}
	return out, nil
}

// halt stops the hypervisor (if running; killing one that does not answer),
// removes the tap, and leaves the VM as set makes it; it finishes stop,
// rolls back start and follows a VM that exited on its own. It gives up after
// the stop timeout plus the time a kill may take; on error the caller marks
// the VM error.
func (m *Manager) halt(ctx context.Context, vm *store.VM, op *store.Op, set setter) (*store.VM, error) {
	return m.haltTap(ctx, vm, op, set, false)
}

// haltTap is halt, keeping the VM's tap when keepTap says a boot follows at
// once (deleting a network device waits for the kernel's grace periods,
// tens of milliseconds); if the daemon dies before that boot, the next one
// removes the tap of a VM that does not run.
func (m *Manager) haltTap(ctx context.Context, vm *store.VM, op *store.Op, set setter, keepTap bool) (*store.VM, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.StopTimeout+killWait)
	defer cancel()
	recordStop := func(step string) error {
		if op.Kind != "stop" {
			return nil // start's rollback and the watcher follow no op log of their own
		}
		return m.record(op, step)
	}
	if err := recordStop(stepHalt); err != nil {
		return vm, err
	}
	if err := m.stopHypervisor(ctx, vm); err != nil {
		return vm, fmt.Errorf("stop vm %s: %w", vm.Name, err)
	}
	if err := cgroup.Remove(vm.ID); err != nil {
		m.log.Warn("remove the vm's cgroup", "name", vm.Name, "err", err) // reconcile retries it
	}
	m.discardImage(vm.ID) // it boots cold from here
	if err := recordStop(stepUnplug); err != nil {
		return vm, err
	}
	if ip, err := netip.ParseAddr(vm.IP); err == nil && !keepTap {
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
		cur.PID = 0
		set(cur)
		out = cur
		if err := tx.PutVM(cur); err != nil {
			return err
		}
		return tx.DeleteOp(op.ID)
	})
	return out, err
}

// stopHypervisor ends the VM's hypervisor, if one runs: gracefully within the
// stop timeout when it answers, killed through its pidfd when it does not.
func (m *Manager) stopHypervisor(ctx context.Context, vm *store.VM) error {
	m.dropStandby(vm.ID) // it never ran the guest: nothing to shut down
	inst, stray := m.liveInstance(ctx, vm)
	if inst == nil {
		m.setInstance(vm.ID, nil)
		return nil
	}
	if stray != nil {
		defer vmm.Close(inst)
		m.log.Warn("killing a hypervisor that does not answer", "name", vm.Name, "pid", inst.PID(), "err", stray)
		return killAndWait(ctx, inst)
	}
	if p, ok := inst.(vmm.Pauser); ok && pausedOnIOError(ctx, p) {
		// A paused guest cannot shut down: waiting for it is the stop timeout lost.
		m.log.Info("killing the hypervisor of a paused vm", "name", vm.Name, "pid", inst.PID())
		if err := killAndWait(ctx, inst); err != nil {
			return err
		}
		m.setInstance(vm.ID, nil)
		return nil
	}
	graceful, err := vmm.Stop(ctx, inst, m.cfg.StopTimeout)
	if err != nil {
		return err
	}
	if !graceful {
		m.log.Warn("vm did not power off in time; killed", "name", vm.Name, "timeout", m.cfg.StopTimeout)
	}
	m.setInstance(vm.ID, nil)
	return nil
}

// pausedOnIOError says whether the hypervisor paused its guest on a host I/O
// error (a full host disk).
func pausedOnIOError(ctx context.Context, p vmm.Pauser) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := p.RunState(ctx)
	return err == nil && st == vmm.RunStateIOError
}

func killAndWait(ctx context.Context, inst vmm.Instance) error {
	if err := inst.Kill(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	if err := inst.Wait(wctx); err != nil {
		return fmt.Errorf("hypervisor pid %d did not exit: %w", inst.PID(), err)
	}
	return nil
}

// liveInstance returns the VM's running hypervisor, adopting it (and keeping
// it) when this daemon did not start it; nil when none runs. A hypervisor that
// is alive but does not answer on its control socket is returned too, with
// stray saying why: it runs, holds the VM's disk and tap, and can only be
// killed; the caller must vmm.Close it.
func (m *Manager) liveInstance(ctx context.Context, vm *store.VM) (inst vmm.Instance, stray error) {
	if inst := m.instance(vm.ID); inst != nil && inst.Running() {
		return inst, nil
	}
	spec, _ := m.spec(ctx, vm) // adopting needs the VM's id and directory only
	inst, err := m.cfg.Driver.Adopt(ctx, spec)
	var ue *vmm.UnresponsiveError
	switch {
	case err == nil:
		m.setInstance(vm.ID, inst)
		return inst, nil
	case errors.As(err, &ue):
		return ue.Instance, ue
	case !errors.Is(err, vmm.ErrNotRunning) && !errors.Is(err, os.ErrNotExist):
		m.log.Warn("adopt", "name", vm.Name, "err", err)
	}
	return nil, nil
}

// markError leaves VM id in state error with cause as its reason and forgets
// op (best effort: the store itself may be what failed), logging why.
func (m *Manager) markError(id, opID string, cause error) {
	m.log.Error("vm failed; marked error", "id", id, "err", cause)
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		if cur, err := tx.VMByID(id); err == nil {
			cur.State, cur.Reason = api.StateError, cause.Error()
			if err := tx.PutVM(cur); err != nil {
				return err
			}
		}
		if opID == "" {
			return nil
		}
		return tx.DeleteOp(opID)
	})
	if err != nil {
		m.log.Error("could not mark the vm error", "id", id, "err", err)
	}
}

// Destroy kills the VM and removes everything it had: hypervisor, tap, nft
// element, directory and disk, address lease and record. It works from every
// state; when a part cannot be removed the VM is left in error with the reason,
// and destroy can be retried. A non-empty id: as for Stop.
func (m *Manager) Destroy(ctx context.Context, name, id string) error {
	vm, op, _, err := m.opFor(name, id, "destroy", "being destroyed")
	if err != nil {
		return err
	}
	defer m.end(name)
	m.log.Info("destroying vm", "name", vm.Name, "id", vm.ID)
	defer m.activity.forget(vm.ID)
	if err := m.teardown(ctx, vm.ID, vm, op); err != nil {
		m.markError(vm.ID, op.ID, err)
		return err
	}
	return nil
}

// teardown removes everything of VM id (vm may be nil when its record is gone).
// Each part tolerates being already gone, so it finishes any interrupted
// destroy or create. The hypervisor is killed (and waited for) first, answering
// or not: nothing it uses is removed while it runs.
func (m *Manager) teardown(ctx context.Context, id string, vm *store.VM, op *store.Op) error {
	record := func(step string) error {
		if op.Kind != "destroy" {
			return nil // an undone create follows no op log of its own
		}
		return m.record(op, step)
	}
	if err := record(stepKill); err != nil {
		return err
	}
	m.dropStandby(id)
	if vm != nil {
		if inst, stray := m.liveInstance(ctx, vm); inst != nil {
			if stray != nil {
				m.log.Warn("killing a hypervisor that does not answer", "name", vm.Name, "pid", inst.PID(), "err", stray)
			}
			err := killAndWait(ctx, inst)
			if stray != nil {
				vmm.Close(inst)
			}
			if err != nil {
				return fmt.Errorf("destroy vm %s: %w", vm.Name, err)
			}
		}
	} else if p, err := vmm.FindByMarker(m.dir(id) + "/"); err == nil {
		// No record says how to reach it, but a process still uses its directory.
		err := killAndWait(ctx, &vmm.Stray{Process: p})
		p.Close()
		if err != nil {
			return fmt.Errorf("destroy vm %s: %w", id, err)
		}
	}
	m.setInstance(id, nil)
	// Anything left in the VM's cgroup (a hypervisor no pid file names) goes
	// with it, and then the cgroup.
	if err := cgroup.Kill(id); err != nil {
		return fmt.Errorf("destroy vm %s: %w", id, err)
	}
	if err := cgroup.Remove(id); err != nil {
		return fmt.Errorf("destroy vm %s: %w", id, err)
	}
	if err := record(stepUnplug); err != nil {
		return err
	}
	if vm != nil {
		ip, _ := netip.ParseAddr(vm.IP)
		if err := m.cfg.Network.RemoveVM(ctx, vm.Tap, ip); err != nil {
			return fmt.Errorf("destroy vm %s: %w", vm.Name, err)
		}
	} else if err := m.cfg.Network.RemoveVM(ctx, "tap_"+id, netip.Addr{}); err != nil {
		return fmt.Errorf("destroy vm %s: %w", id, err)
	}
	if err := record(stepRemoveDir); err != nil {
		return err
	}
	if err := os.RemoveAll(m.checkpointsOf(id)); err != nil {
		return fmt.Errorf("destroy vm %s: its checkpoints: %w", id, err)
	}
	if err := os.RemoveAll(m.dir(id)); err != nil {
		return fmt.Errorf("destroy vm %s: %w", id, err)
	}
	if err := record(stepRelease); err != nil {
		return err
	}
	return m.cfg.Store.Update(func(tx *store.Tx) error {
		if err := tx.Release(id); err != nil {
			return err
		}
		if cur, err := tx.VMByID(id); err == nil {
			if err := tx.DeleteVM(cur.Name); err != nil {
				return err
			}
			// A destroyed VM's name stays its owner's a while (L7); a
			// failed create's never served anything.
			if op.Kind == "destroy" && m.cfg.NameHold > 0 {
				if err := tx.PutTombstone(cur, time.Now(), m.cfg.NameHold); err != nil {
					return err
				}
			}
		}
		return tx.DeleteOp(op.ID)
	})
}

// undoCreate removes everything an interrupted or failed create may have made.
func (m *Manager) undoCreate(ctx context.Context, op *store.Op) error {
	var vm *store.VM
	m.cfg.Store.View(func(tx *store.Tx) error {
		vm, _ = tx.VMByID(op.VMID)
		return nil
	})
	return m.teardown(ctx, op.VMID, vm, op)
}

// watch notices a VM whose hypervisor exits on its own and records why: a
// guest that powered itself off is stopped (its desired state too); one that
// rebooted itself or died is restarted (see Heal), or crashed after too many
// deaths.
func (m *Manager) watch(name, id string, inst vmm.Instance) {
	inst.Wait(context.Background()) // also ends when the instance is closed (replaced)
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
	vm, err := m.cfg.Store.GetVM(name)
	if err != nil || vm.ID != id {
		m.setInstance(id, nil)
		return
	}
	e := m.exitOf(id, inst)
	now := time.Now()
	var set setter
	switch e.kind {
	case "poweroff":
		m.log.Warn("vm powered itself off; it stays stopped (its desired state is stopped now)", "name", name)
		set = poweredOff(now)
	case "reboot":
		m.log.Warn("vm rebooted itself; booting it again", "name", name)
		set = again("reboot", e.cause, now)
	default:
		set = died(e.cause, now)
	}
	out, err := m.halt(context.Background(), vm, &store.Op{ID: "watch-" + id}, set)
	if err != nil {
		m.markError(id, "", err)
		return
	}
	m.logDeath(out, e)
}

// logDeath writes the daemon log's one line for a VM that died.
func (m *Manager) logDeath(v *store.VM, e exit) {
	if e.kind != "died" {
		return
	}
	switch v.State {
	case api.StateCrashed:
		m.log.Error("vm died too often; not restarting it", "name", v.Name, "cause", e.cause, "deaths", len(v.Deaths), "within", DeathWindow)
	case api.StateRestarting:
		m.log.Warn("vm died; restarting it", "name", v.Name, "cause", e.cause, "in", time.Until(v.RestartAt).Round(time.Second), "deaths", len(v.Deaths), "within", DeathWindow)
	default:
		m.log.Warn("vm died", "name", v.Name, "cause", e.cause, "state", v.State)
	}
}

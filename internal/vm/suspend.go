package vm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
	"golang.org/x/sys/unix"
)

// MemoryFile is the file in a VM's directory that holds its guest's RAM when
// its driver can suspend (vmm.Snapshotter): a suspend writes only device state
// beside it, and a wake maps it again.
const MemoryFile = "mem.ram"

// snapshotter is the driver's suspend support, or an error saying there is none.
func (m *Manager) snapshotter() (vmm.Snapshotter, error) {
	s, ok := m.cfg.Driver.(vmm.Snapshotter)
	if !ok {
		return nil, invalidf("the %s driver cannot suspend vms", m.cfg.Driver.Name())
	}
	if !m.cfg.Suspend {
		return nil, invalidf("this daemon does not suspend vms (fcm daemon --suspend on)")
	}
	return s, nil
}

// writesMemory says whether the driver's Suspend writes the guest's memory
// into spec.MemoryFile itself (Firecracker's Full snapshot), so that a VM
// needs no memory file before its first suspend.
func writesMemory(s vmm.Snapshotter) bool {
	w, ok := s.(interface{ WritesMemory() bool })
	return ok && w.WritesMemory()
}

// Suspend writes a running VM's device state to its directory (its memory is
// there already, in MemoryFile) and ends its hypervisor: it keeps its name,
// address, tap and disks, and the host has its memory back. A non-empty id:
// as for Stop.
func (m *Manager) Suspend(ctx context.Context, name, id string) (*store.VM, error) {
	return m.suspend(ctx, name, id, "")
}

// suspend is Suspend; why, when the daemon suspends a VM by itself, is its
// reason while it sleeps and an event.
func (m *Manager) suspend(ctx context.Context, name, id, why string) (*store.VM, error) {
	snap, err := m.snapshotter()
	if err != nil {
		return nil, err
	}
	vm, op, prev, err := m.opFor(name, id, "suspend", "suspending", api.StateRunning)
	if err != nil {
		return nil, err
	}
	defer m.end(name)
	inst, stray := m.liveInstance(ctx, vm)
	spec, serr := m.spec(ctx, vm)
	switch {
	case inst == nil:
		err = fmt.Errorf("%w: vm %q: its hypervisor is not running", ErrBadState, name)
	case stray != nil:
		vmm.Close(inst)
		err = fmt.Errorf("%w: vm %q: %v", ErrBadState, name, stray)
	case serr != nil:
		err = serr
	case !fileExists(spec.MemoryFile) && !writesMemory(snap):
		err = invalidf("vm %s was booted before it could be suspended (its memory is not in a file): stop and start it once", name)
	}
	if err != nil {
		m.abandon(vm, op, prev)
		return nil, err
	}
	if err := m.record(op, stepSave); err != nil {
		m.abandon(vm, op, prev)
		return nil, err
	}
	if why != "" && m.cfg.Slept != nil {
		m.cfg.Slept(vm) // requests from now on wait in the waker for its wake
	}
	m.syncGuest(ctx, vm) // the guest's own work, logged apart
	t := time.Now()      // fcm's share: stop, save, quit
	m.closeShared(vm.ID) // its SSH connection would time out while it sleeps
	if err := snap.Suspend(ctx, inst, spec); err != nil {
		m.abandon(vm, op, prev)
		if why != "" && m.cfg.Slept != nil {
			m.cfg.Slept(vm) // it runs on: its route goes back to it
		}
		return nil, err
	}
	m.setInstance(vm.ID, nil)
	if err := m.writeImageMeta(spec); err != nil {
		m.log.Warn("suspend image: its record could not be written; a wake will not check it", "name", name, "err", err)
	}
	m.log.Info("vm suspended", "name", name, "took", time.Since(t).Round(time.Millisecond))
	m.observe("suspend", time.Since(t))
	out, err := m.finish(vm, op, func(v *store.VM) {
		v.State, v.Reason, v.PID, v.SuspendedAt = api.StateSuspended, why, 0, time.Now().UTC()
		if why != "" {
			v.AddEvent(v.SuspendedAt, "suspended", why)
		}
	})
	if err == nil {
		m.prepareStandby(out)
	}
	if err == nil && why != "" && m.cfg.Slept != nil {
		m.cfg.Slept(out)
	}
	return out, err
}

// Wake restores a suspended VM from its directory and lets it run on where it
// was; its suspend image is spent once it runs. A wake that fails leaves the
// VM stopped with its disk intact, saying why: the next start boots it cold.
func (m *Manager) Wake(ctx context.Context, name, id string) (*store.VM, error) {
	snap, err := m.snapshotter()
	if err != nil {
		return nil, err
	}
	if v, err := m.cfg.Store.GetVM(name); err == nil && v.State == api.StateSuspended && (id == "" || v.ID == id) {
		if why := m.imageStale(ctx, v); why != "" {
			return m.wakeCold(ctx, name, id, why)
		}
		m.makeRoom(ctx, v.MemoryMiB, v.ID)
	}
	vm, op, _, err := m.opFor(name, id, "wake", "waking", api.StateSuspended)
	if err != nil {
		return nil, err
	}
	defer m.end(name)
	t := time.Now()
	inst, err := m.restore(ctx, snap, vm, op)
	if err != nil {
		err = fmt.Errorf("wake vm %s: %w", name, err)
		m.log.Warn("vm wake failed; it is stopped, its disk intact", "name", name, "err", err)
		if _, herr := m.halt(context.WithoutCancel(ctx), vm, op, to(api.StateStopped, err.Error()+"; fcm start boots it cold")); herr != nil {
			m.markError(vm.ID, op.ID, fmt.Errorf("%v; then stopping it failed: %w", err, herr))
		}
		return nil, err
	}
	took := time.Since(t)
	m.log.Info("vm woken", "name", name, "took", took.Round(time.Millisecond), "pid", inst.PID())
	m.observe("wake", took)
	out, err := m.finish(vm, op, func(v *store.VM) {
		v.State, v.Reason, v.PID, v.SuspendedAt = api.StateRunning, "", inst.PID(), time.Time{}
	})
	if err != nil {
		return nil, err
	}
	m.activity.Touch(vm.ID)
	go m.watch(name, vm.ID, inst)
	go m.fixGuest(out)
	return out, nil
}

// syncGuest has the guest write what it holds for its disks (best effort,
// bounded), before a suspend (should its suspend image be lost, a host
// restart, or refused, its disk changed, its cold boot finds them there) and
// before a copy of its disk (a checkpoint or a fork holds them).
func (m *Manager) syncGuest(ctx context.Context, vm *store.VM) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t := time.Now()
	c, err := m.Shared(vm)
	if err == nil {
		_, err = c.Run(ctx, "sync")
	}
	if err != nil {
		m.log.Warn("the guest's sync failed; going on without it", "name", vm.Name, "err", err)
		return
	}
	m.log.Info("the guest synced its disks", "name", vm.Name, "took", time.Since(t).Round(time.Millisecond))
}

// fixGuest sets a woken guest's clock (it stood still while it slept) and
// reseeds its random pool, over SSH; the guest serves meanwhile. The host's
// time is sent once the guest's command is up and waiting for it, so neither
// the SSH handshake nor the command's start makes it late.
func (m *Manager) fixGuest(vm *store.VM) {
	if err := m.sendResumed(vm); err != nil {
		m.log.Warn("woken vm: its clock was not set", "name", vm.Name, "err", err)
	}
}

func (m *Manager) sendResumed(vm *store.VM) error {
	c, err := m.Shared(vm)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sess, err := c.Session(ctx)
	if err != nil {
		return err
	}
	defer sess.Close()
	stdin, err := sess.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	sess.Stderr = &stderr
	if err := sess.Start("/usr/sbin/fcm-init guest resumed"); err != nil {
		return err
	}
	ready := make([]byte, len(guestResumedReady))
	if _, err := io.ReadFull(stdout, ready); err != nil || string(ready) != guestResumedReady {
		sess.Wait()
		return fmt.Errorf("the guest's fcm-init did not wait for the time (%v): %s", err, strings.TrimSpace(stderr.String()))
	}
	seed := make([]byte, 64)
	rand.Read(seed)
	fmt.Fprintf(stdin, "%d %x\n", time.Now().UnixNano(), seed)
	stdin.Close()
	if err := sess.Wait(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// guestResumedReady is what `fcm guest resumed` prints once it waits for
// the host's time on its standard input.
const guestResumedReady = "ready\n"

// restore is Wake's work: the tap (a host restart loses it), the hypervisor
// on the saved state, and the guest let run, each step recorded first.
func (m *Manager) restore(ctx context.Context, snap vmm.Snapshotter, vm *store.VM, op *store.Op) (vmm.Instance, error) {
	if err := m.record(op, stepNetwork, stepRestore); err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return nil, err
	}
	if err := m.cfg.Network.AddVM(ctx, vm.Tap, ip, parseMAC(vm.MAC)); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	spec, err := m.spec(ctx, vm)
	if err != nil {
		return nil, err
	}
	inst, err := m.restoreFrom(ctx, snap, vm, spec)
	if err != nil {
		return nil, err
	}
	m.setInstance(vm.ID, inst)
	p, ok := inst.(vmm.Pauser)
	if !ok {
		return nil, errors.New("the restored hypervisor cannot be resumed")
	}
	if err := m.record(op, stepCont); err != nil {
		return nil, err
	}
	if err := p.Resume(ctx); err != nil {
		return nil, err
	}
	// It runs on: the saved state no longer matches its memory.
	os.Remove(filepath.Join(m.dir(vm.ID), vmm.StateFile))
	return inst, nil
}

// finish ends op with the VM as set makes it, in one transaction.
func (m *Manager) finish(vm *store.VM, op *store.Op, set setter) (*store.VM, error) {
	var out *store.VM
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		cur, err := tx.VMByID(vm.ID)
		if err != nil {
			return err
		}
		set(cur)
		out = cur
		if err := tx.PutVM(cur); err != nil {
			return err
		}
		return tx.DeleteOp(op.ID)
	})
	return out, err
}

// restoreFrom loads vm's state into its standby hypervisor when it has one,
// else into one started now.
func (m *Manager) restoreFrom(ctx context.Context, snap vmm.Snapshotter, vm *store.VM, spec vmm.Spec) (vmm.Instance, error) {
	if sb, inst := m.standbyer(), m.takeStandby(vm.ID); sb != nil && inst != nil {
		err := sb.RestoreInto(ctx, inst, spec)
		if err == nil {
			m.log.Info("vm restored into its standby hypervisor", "name", vm.Name, "pid", inst.PID())
			return inst, nil
		}
		m.log.Warn("restore into the standby hypervisor failed; starting another", "name", vm.Name, "err", err)
	} else if inst != nil {
		endStandby(inst)
	}
	return snap.Restore(ctx, spec)
}

// discardImage removes a VM's suspend image and memory file: it boots cold
// from now on (a halt's, a failed wake's, a destroyed host state's).
func (m *Manager) discardImage(id string) {
	m.dropStandby(id)
	os.Remove(filepath.Join(m.dir(id), vmm.StateFile))
	os.Remove(filepath.Join(m.dir(id), MemoryFile))
	os.Remove(filepath.Join(m.dir(id), MemoryFile+vmm.MemoryLayerSuffix))
	os.Remove(filepath.Join(m.dir(id), ImageMetaFile))
}

// hasImage says whether VM id has a suspend image to wake from.
func (m *Manager) hasImage(id string) bool {
	return fileExists(filepath.Join(m.dir(id), vmm.StateFile)) && fileExists(filepath.Join(m.dir(id), MemoryFile))
}

// closeShared closes the SSH connection commands to VM id share.
func (m *Manager) closeShared(id string) {
	m.mu.Lock()
	c := m.shared[id]
	delete(m.shared, id)
	m.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// resumeSuspendOp settles an interrupted suspend or wake after a daemon
// crash: the VM ends running, suspended (its image intact and never run) or,
// when neither can be trusted, as a VM that died.
func (m *Manager) resumeSuspendOp(ctx context.Context, vm *store.VM, op *store.Op) error {
	inst, stray := m.liveInstance(ctx, vm)
	if stray != nil {
		vmm.Close(inst)
		inst = nil
		if p, err := vmm.FindByMarker(m.dir(vm.ID) + "/"); err == nil {
			killAndWait(ctx, &vmm.Stray{Process: p})
			p.Close()
		}
	}
	running := func(inst vmm.Instance) error { // reconcileVM adopts and watches it next
		_, err := m.finish(vm, op, func(v *store.VM) { v.State, v.Reason, v.PID = api.StateRunning, "", inst.PID() })
		return err
	}
	suspended := func() error {
		_, err := m.finish(vm, op, func(v *store.VM) {
			v.State, v.Reason, v.PID = api.StateSuspended, "", 0
			if v.SuspendedAt.IsZero() {
				v.SuspendedAt = time.Now().UTC()
			}
		})
		return err
	}
	kill := func() error {
		if inst == nil {
			return nil
		}
		err := killAndWait(ctx, inst)
		m.setInstance(vm.ID, nil)
		inst = nil
		return err
	}
	spent := slices.Contains(op.Steps, stepCont)
	switch op.Kind {
	case "suspend":
		if m.hasImage(vm.ID) {
			// The state was written: the guest must never run on from here.
			if err := kill(); err != nil {
				return err
			}
			return suspended()
		}
		if inst != nil {
			if p, ok := inst.(vmm.Pauser); ok {
				p.Resume(ctx) // stopped for the suspend that never finished
			}
			return running(inst)
		}
	case "wake":
		if !spent && m.hasImage(vm.ID) {
			if err := kill(); err != nil { // restored but never let run
				return err
			}
			return suspended()
		}
		if inst != nil {
			os.Remove(filepath.Join(m.dir(vm.ID), vmm.StateFile))
			if p, ok := inst.(vmm.Pauser); ok {
				p.Resume(ctx)
			}
			return running(inst)
		}
	}
	m.discardImage(vm.ID)
	_, err := m.halt(ctx, vm, op, died(fmt.Sprintf("its %s was interrupted and its hypervisor is gone", op.Kind), time.Now()))
	return err
}

// reserveMemory allocates the blocks of spec's memory file before its
// hypervisor maps it (QEMU: the guest's RAM is that file, shared), so that a
// full host disk can never take them: a write to a page of a sparse shared
// mapping whose block cannot be allocated kills the hypervisor with SIGBUS,
// where a full disk otherwise only pauses a guest's disk writes. The disk
// admission promised those blocks already; only with --disk-overcommit above
// 1 (promises beyond the free space, by the operator's choice) does the file
// stay sparse, holding only what the guest touched. A driver that writes the
// memory file at suspend (Firecracker) needs none: its guest's RAM is its own.
func (m *Manager) reserveMemory(spec vmm.Spec) error {
	snap, ok := m.cfg.Driver.(vmm.Snapshotter)
	if spec.MemoryFile == "" || !ok || writesMemory(snap) || m.cfg.DiskOvercommit > 1 {
		return nil
	}
	f, err := os.OpenFile(spec.MemoryFile, os.O_CREATE|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if spec.UID != 0 {
		if err := f.Chown(spec.UID, spec.GID); err != nil {
			return err
		}
	}
	size := int64(spec.MemoryMiB) << 20
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("%w: not enough disk space for the vm's memory file (%d MiB) in %s", ErrInsufficientStorage, spec.MemoryMiB, spec.Dir)
		}
		return fmt.Errorf("the vm's memory file: %w", err)
	}
	return nil
}

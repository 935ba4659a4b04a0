package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/guestinit"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// Self-healing: a VM whose owner wants it running (store.VM.Desired) and whose
// hypervisor died is booted again, after a backoff that doubles with each
// death; after MaxDeaths deaths within DeathWindow it stays down as crashed
// until its owner starts it. A guest that powers itself off is stopped, as if
// its owner had stopped it; one that reboots itself is booted again at once.
const (
	DeathWindow = 10 * time.Minute
	MaxDeaths   = 5
	BackoffMin  = time.Second
	BackoffMax  = 5 * time.Minute
)

// DefaultBootConcurrency is how many VMs the daemon boots at once by itself
// (restarts after a crash or a host restart): the host's cores, at least 2 and
// at most 4. Memory is admitted per boot as for fcm start.
func DefaultBootConcurrency() int { return min(max(runtime.NumCPU(), 2), 4) }

// backoff is the wait before the restart that follows the nth death in the
// window: 1 s, doubling, at most BackoffMax.
func backoff(n int) time.Duration {
	d := BackoffMin
	for i := 1; i < n && d < BackoffMax; i++ {
		d *= 2
	}
	return min(d, BackoffMax)
}

// recentDeaths keeps the deaths within DeathWindow of now.
func recentDeaths(deaths []time.Time, now time.Time) []time.Time {
	var out []time.Time
	for _, t := range deaths {
		if now.Sub(t) < DeathWindow {
			out = append(out, t)
		}
	}
	return out
}

// setter changes a VM record in the transaction that ends an operation.
type setter func(v *store.VM)

// to leaves a VM in state with reason.
func to(state, reason string) setter {
	return func(v *store.VM) { v.State, v.Reason = state, reason }
}

// died records a death of cause at now: the VM is restarting after the
// backoff, or crashed after MaxDeaths within DeathWindow. A VM whose owner
// wants it stopped just stops.
func died(cause string, now time.Time) setter {
	return func(v *store.VM) {
		v.AddEvent(now, "died", cause)
		if v.DesiredState() != api.DesiredRunning {
			v.State, v.Reason = api.StateStopped, cause
			return
		}
		v.Deaths = append(recentDeaths(v.Deaths, now), now.UTC())
		n := len(v.Deaths)
		if n >= MaxDeaths {
			v.State = api.StateCrashed
			v.Reason = fmt.Sprintf("crashed %d times in %d min: %s; `fcm start` tries again", n, int(DeathWindow.Minutes()), cause)
			v.AddEvent(now, "crashed", v.Reason)
			return
		}
		d := backoff(n)
		v.State, v.RestartAt = api.StateRestarting, now.Add(d).UTC()
		v.Reason = fmt.Sprintf("%s; restart in %s (%d of %d deaths in %d min)", cause, d, n, MaxDeaths, int(DeathWindow.Minutes()))
	}
}

// again marks a VM to be booted again now, without counting a death (the
// host restarted, the guest rebooted itself, the daemon was stopped during a
// boot); one whose owner wants it stopped stays stopped.
func again(kind, cause string, now time.Time) setter {
	return func(v *store.VM) {
		v.AddEvent(now, kind, cause)
		if v.DesiredState() != api.DesiredRunning {
			v.State, v.Reason = api.StateStopped, ""
			return
		}
		v.State, v.Reason, v.RestartAt = api.StateRestarting, cause, now.UTC()
	}
}

// poweredOff records a guest that powered itself off: its desired state is
// stopped now, as if its owner had run fcm stop.
func poweredOff(now time.Time) setter {
	return func(v *store.VM) {
		v.AddEvent(now, "poweroff", "the guest powered itself off")
		v.State, v.Reason, v.Desired = api.StateStopped, "the guest powered itself off", api.DesiredStopped
	}
}

// causeAfter is what a restarting VM's reason says while it boots: "after" and
// what happened last.
func causeAfter(v *store.VM) string {
	for i := len(v.Events) - 1; i >= 0; i-- {
		switch e := v.Events[i]; e.Kind {
		case "died", "reboot", "host-restart":
			return "after " + strings.TrimPrefix(e.Detail, "after ")
		}
	}
	return ""
}

// exit is how a hypervisor ended by itself: kind is poweroff or reboot (the
// guest asked for it) or died, with cause saying why in words.
type exit struct{ kind, cause string }

// exitOf tells why VM id's hypervisor inst ended: out of memory (its cgroup's
// OOM kills, which the driver's Wait read before removing it), the guest's own poweroff or
// reboot or kernel panic (its console since the boot), or the exit status or
// signal (known when the hypervisor was this daemon's child).
func (m *Manager) exitOf(id string, inst vmm.Instance) exit {
	if o, ok := inst.(interface{ OOMKilled() bool }); ok && o.OOMKilled() {
		return exit{"died", "out of memory (the kernel's OOM killer ended its hypervisor at the vm's memory limit)"}
	}
	tail := lastBoot(filepath.Join(m.dir(id), "console.log"))
	status := ""
	if e, ok := inst.(interface{ Exit() string }); ok {
		status = e.Exit()
	}
	signalled := strings.HasPrefix(status, "killed by signal")
	if !signalled {
		if i := bytes.Index(tail, []byte("fcm-init: "+guestinit.ShutdownMarker+" ")); i >= 0 {
			rest := tail[i+len("fcm-init: "+guestinit.ShutdownMarker+" "):]
			if bytes.HasPrefix(rest, []byte("reboot")) {
				return exit{"reboot", "the guest rebooted itself"}
			}
			return exit{"poweroff", "the guest powered itself off"}
		}
		if i := bytes.Index(tail, []byte("Kernel panic - not syncing")); i >= 0 {
			line, _, _ := bytes.Cut(tail[i:], []byte("\n"))
			return exit{"died", "guest kernel panic: " + strings.TrimSpace(string(line))}
		}
	}
	if status == "" {
		status = "exited"
	}
	return exit{"died", fmt.Sprintf("its hypervisor (%s) %s", m.cfg.Driver.Name(), status)}
}

// lastBoot is the end of a console log from the last boot's first kernel line
// on (at most its last 64 KiB).
func lastBoot(path string) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	const most = 64 << 10
	off := int64(0)
	if st, err := f.Stat(); err == nil && st.Size() > most {
		off = st.Size() - most
	}
	data, _ := io.ReadAll(io.NewSectionReader(f, off, most))
	if i := bytes.LastIndex(data, []byte("Linux version ")); i >= 0 {
		data = data[i:]
	}
	return data
}

// Heal converges what runs to what owners asked for until ctx ends: it boots
// VMs in state restarting once their backoff is over, at most
// Config.BootConcurrency at once, earliest first. The daemon runs it in a
// goroutine after Reconcile.
func (m *Manager) Heal(ctx context.Context) {
	slots := make(chan struct{}, m.cfg.BootConcurrency)
	var inflight sync.Map // vm id -> a restart of it runs
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		vms, err := m.cfg.Store.ListVMs()
		if err != nil {
			m.log.Error("heal: list vms", "err", err)
			continue
		}
		now := time.Now()
		var due []*store.VM
		waiting := 0
		for _, v := range vms {
			if v.State != api.StateRestarting || v.DesiredState() != api.DesiredRunning {
				continue
			}
			waiting++
			if !now.Before(v.RestartAt) && !m.isBusy(v.Name) {
				due = append(due, v)
			}
		}
		sort.Slice(due, func(i, j int) bool { return due[i].RestartAt.Before(due[j].RestartAt) })
		for _, v := range due {
			select {
			case slots <- struct{}{}:
			default:
				continue // all slots busy: the next tick
			}
			if _, dup := inflight.LoadOrStore(v.ID, true); dup {
				<-slots
				continue
			}
			waiting--
			m.log.Info("restarting vm", "name", v.Name, "reason", causeAfter(v), "still_waiting", waiting)
			go func(name, id string) {
				defer func() { inflight.Delete(id); <-slots }()
				m.restart(ctx, name, id)
			}(v.Name, v.ID)
		}
	}
}

// restart boots a VM in state restarting, as fcm start would but keeping its
// desired state and deaths; a boot that fails is one more death.
func (m *Manager) restart(ctx context.Context, name, id string) {
	vm, err := m.cfg.Store.GetVM(name)
	if err != nil || vm.ID != id {
		return
	}
	after := causeAfter(vm)
	t := time.Now()
	_, err = m.startAs(ctx, "restart", name, id, noProgress)
	switch {
	case errors.Is(err, ErrInsufficientCapacity):
		m.log.Warn("vm waits for memory to restart", "name", name, "err", err)
		m.cfg.Store.UpdateVM(name, func(v *store.VM) error {
			if v.ID == id && v.State == api.StateRestarting {
				v.RestartAt = time.Now().Add(30 * time.Second).UTC()
				v.Reason = "waiting for memory: " + err.Error()
			}
			return nil
		})
	case errors.Is(err, ErrBusy), errors.Is(err, ErrBadState), errors.Is(err, store.ErrNotFound):
		// Its owner acted first.
	case err != nil:
		m.log.Warn("vm restart failed", "name", name, "err", err)
	default:
		m.log.Info("vm restarted", "name", name, "took", time.Since(t).Round(time.Millisecond), "reason", after)
		m.cfg.Store.UpdateVM(name, func(v *store.VM) error {
			if v.ID == id {
				v.AddEvent(time.Now(), "restarted", fmt.Sprintf("%s, in %s", after, time.Since(t).Round(time.Millisecond)))
			}
			return nil
		})
	}
}

package vm

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

// IdleEvery is how often the daemon looks for idle VMs to suspend.
const IdleEvery = time.Second

// Activity is when each VM was last used, and what uses it now: a request
// through its URL, an attached console, a command, a deploy. A VM in use is
// never idle; one that has not been used for its SuspendAfter is.
type Activity struct {
	mu    sync.Mutex
	last  map[string]time.Time // vm id -> last use ended (or first seen)
	inUse map[string]int       // vm id -> uses in progress
}

func newActivity() *Activity {
	return &Activity{last: map[string]time.Time{}, inUse: map[string]int{}}
}

// Touch records a use of VM id now.
func (a *Activity) Touch(id string) {
	a.mu.Lock()
	a.last[id] = time.Now()
	a.mu.Unlock()
}

// Use marks VM id in use until the returned func is called (once).
func (a *Activity) Use(id string) (done func()) {
	a.mu.Lock()
	a.inUse[id]++
	a.last[id] = time.Now()
	a.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			if a.inUse[id]--; a.inUse[id] <= 0 {
				delete(a.inUse, id)
			}
			a.last[id] = time.Now()
			a.mu.Unlock()
		})
	}
}

// idle says for how long VM id has not been used (counted from now, for a
// VM not seen before) and whether something uses it now.
func (a *Activity) idle(id string, now time.Time) (time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	last, ok := a.last[id]
	if !ok {
		a.last[id] = now
		last = now
	}
	return now.Sub(last), a.inUse[id] > 0
}

func (a *Activity) forget(id string) {
	a.mu.Lock()
	delete(a.last, id)
	delete(a.inUse, id)
	a.mu.Unlock()
}

// Activity is the VMs' use, which the daemon's handlers record.
func (m *Manager) Activity() *Activity { return m.activity }

// SuspendIdle suspends every running VM that has a SuspendAfter and has not
// been used for that long: no request through its URL (a connection from
// the host to its port, which the edge keeps open no longer than
// edge.UpstreamIdle after a request), no console attached, no command or
// deploy running. The daemon runs it in a goroutine when --suspend is on.
func (m *Manager) SuspendIdle(ctx context.Context) {
	t := time.NewTicker(IdleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, v := range m.idleVMs(time.Now(), true) {
			why := "idle for " + api.FormatSuspendAfter(v.SuspendAfter)
			m.log.Info("suspending an idle vm", "name", v.Name, "suspend_after", api.FormatSuspendAfter(v.SuspendAfter))
			if _, err := m.suspend(ctx, v.Name, v.ID, why); err != nil && ctx.Err() == nil {
				m.log.Warn("suspend of an idle vm failed", "name", v.Name, "err", err)
				m.activity.Touch(v.ID) // not again at once
			}
		}
	}
}

// idleVMs are the running VMs that may sleep (a SuspendAfter) and nothing
// uses now, least recently used first; due: only those idle for their
// SuspendAfter.
func (m *Manager) idleVMs(now time.Time, due bool) []*store.VM {
	vms, err := m.cfg.Store.ListVMs()
	if err != nil {
		m.log.Error("idle vms: list vms", "err", err)
		return nil
	}
	open := m.openConns()
	type cand struct {
		vm   *store.VM
		idle time.Duration
	}
	var out []cand
	for _, v := range vms {
		if v.State != api.StateRunning || v.SuspendAfter <= 0 || m.isBusy(v.Name) {
			continue
		}
		if open[fmt.Sprintf("%s:%d", v.IP, v.Port)] {
			m.activity.Touch(v.ID) // a request goes through its URL
			continue
		}
		idle, inUse := m.activity.idle(v.ID, now)
		if inUse || due && idle < v.SuspendAfter {
			continue
		}
		out = append(out, cand{v, idle})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].idle > out[j].idle })
	vmsOut := make([]*store.VM, len(out))
	for i, c := range out {
		vmsOut[i] = c.vm
	}
	return vmsOut
}

// makeRoom suspends idle VMs that may sleep, least recently used first,
// until needMiB more fits the host's memory (see checkMemory), when the
// daemon suspends VMs at all. It is best effort: admission decides after.
func (m *Manager) makeRoom(ctx context.Context, needMiB int, self string) {
	if _, err := m.snapshotter(); err != nil {
		return
	}
	for _, v := range m.idleVMs(time.Now(), false) {
		short, err := m.memoryShort(self, needMiB)
		if err != nil || short <= 0 {
			return
		}
		if v.ID == self {
			continue
		}
		m.log.Info("suspending an idle vm early: the host needs its memory", "name", v.Name, "short_mib", short)
		if _, err := m.suspend(ctx, v.Name, v.ID, "suspended early: the host needed its memory"); err != nil {
			m.log.Warn("suspend to make room failed", "name", v.Name, "err", err)
		}
	}
}

// memoryShort is how many MiB checkMemory would find missing for a VM of
// needMiB (self: its id on start, "" on create); 0 or less when it fits.
func (m *Manager) memoryShort(self string, needMiB int) (int, error) {
	total, err := m.memTotal()
	if err != nil {
		return 0, err
	}
	vms, err := m.cfg.Store.ListVMs()
	if err != nil {
		return 0, err
	}
	return memoryUsed(vms, self) + needMiB - (total - m.cfg.MemoryReserveMiB), nil
}

// memoryUsed is the memory of the VMs that hold some (not stopped,
// suspended or crashed), less self's.
func memoryUsed(vms []*store.VM, self string) int {
	used := 0
	for _, v := range vms {
		if v.State != api.StateStopped && v.State != api.StateSuspended && v.State != api.StateCrashed && v.ID != self {
			used += v.MemoryMiB // a suspended vm's memory is on disk
		}
	}
	return used
}

// openConns are the addresses (ip:port) the host has established TCP
// connections to: the edge's to a VM's app while a request goes through its
// URL (and briefly after). Tests replace it.
var openConns = establishedRemotes

func (m *Manager) openConns() map[string]bool { return openConns() }

// establishedRemotes reads /proc/net/tcp for the remote ends of established
// IPv4 connections in the daemon's network namespace.
func establishedRemotes() map[string]bool {
	out := map[string]bool{}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st ...; st 01 is ESTABLISHED.
		if len(fields) < 4 || fields[3] != "01" {
			continue
		}
		if a, ok := parseProcAddr(fields[2]); ok {
			out[a] = true
		}
	}
	return out
}

// parseProcAddr reads /proc/net/tcp's 0100007F:0BB8 (a little-endian IPv4
// address and a port in hex) as 127.0.0.1:3000.
func parseProcAddr(s string) (string, bool) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	if !ok || len(ipHex) != 8 {
		return "", false
	}
	b, err := hex.DecodeString(ipHex)
	if err != nil {
		return "", false
	}
	var port int
	if _, err := fmt.Sscanf(portHex, "%X", &port); err != nil {
		return "", false
	}
	ip := netip.AddrFrom4([4]byte{b[3], b[2], b[1], b[0]})
	return fmt.Sprintf("%s:%d", ip, port), true
}

// SetSuspendAfter changes how long a VM may sit idle before the daemon
// suspends it (0: never). A non-empty id: as for Stop.
func (m *Manager) SetSuspendAfter(name, id string, d time.Duration) (*store.VM, error) {
	if d > 0 {
		if _, err := m.snapshotter(); err != nil {
			return nil, err
		}
	}
	var out *store.VM
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		v, err := tx.VM(name)
		if err != nil {
			return err
		}
		if id != "" && v.ID != id {
			return fmt.Errorf("%w: vm %q", store.ErrNotFound, name)
		}
		v.SuspendAfter, out = d, v
		return tx.PutVM(v)
	})
	if err == nil {
		m.activity.Touch(out.ID) // counted from the change
	}
	return out, err
}

// suspendAfterFor is the idle time a new VM gets: what its create asked
// for, else the daemon's default (Config.SuspendAfter) unless it has no
// public URL.
func (m *Manager) suspendAfterFor(req api.CreateVMRequest) (time.Duration, error) {
	if req.SuspendAfter == "" {
		if req.NoExpose || m.cfg.SuspendAfter <= 0 {
			return 0, nil
		}
		if _, err := m.snapshotter(); err != nil {
			return 0, nil // the daemon's default needs nothing the daemon lacks
		}
		return m.cfg.SuspendAfter, nil
	}
	d, err := api.ParseSuspendAfter(req.SuspendAfter)
	if err != nil {
		return 0, invalidf("%v", err)
	}
	if d > 0 {
		if _, err := m.snapshotter(); err != nil {
			return 0, err
		}
	}
	return d, nil
}

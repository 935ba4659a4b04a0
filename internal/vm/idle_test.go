package vm

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

func setSuspendAfter(t *testing.T, m *Manager, id string, d time.Duration) {
	t.Helper()
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		v, err := tx.VMByID(id)
		if err != nil {
			return err
		}
		v.SuspendAfter = d
		return tx.PutVM(v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func vmNames(vms []*store.VM) string {
	var out []string
	for _, v := range vms {
		out = append(out, v.Name)
	}
	return strings.Join(out, " ")
}

// TestIdleVMs: only running VMs with a SuspendAfter, not in use, with no
// connection from the host to their app, idle for their SuspendAfter are
// due; for making room, every idle one counts, least recently used first.
func TestIdleVMs(t *testing.T) {
	m, _, _ := testManager(t)
	defer func(f func() map[string]bool) { openConns = f }(openConns)
	conns := map[string]bool{}
	openConns = func() map[string]bool { return conns }

	old := addVM(t, m, "old", "id-old", api.StateRunning)
	recent := addVM(t, m, "recent", "id-recent", api.StateRunning)
	used := addVM(t, m, "used", "id-used", api.StateRunning)
	web := addVM(t, m, "web", "id-web", api.StateRunning)
	addVM(t, m, "never", "id-never", api.StateRunning)                // no SuspendAfter
	stopped := addVM(t, m, "stopped", "id-stopped", api.StateStopped) // not running
	for _, v := range []*store.VM{old, recent, used, web, stopped} {
		setSuspendAfter(t, m, v.ID, time.Minute)
	}
	now := time.Now()
	a := m.Activity()
	a.last[old.ID] = now.Add(-10 * time.Minute)
	a.last[recent.ID] = now.Add(-5 * time.Second)
	a.last[used.ID] = now.Add(-time.Hour)
	a.last[web.ID] = now.Add(-time.Hour)
	done := a.Use(used.ID) // a console attached
	conns[web.IP+":3000"] = true

	if got := vmNames(m.idleVMs(now, true)); got != "old" {
		t.Errorf("due: %q, want old", got)
	}
	if got := vmNames(m.idleVMs(now, false)); got != "old recent" {
		t.Errorf("idle, least recently used first: %q, want old recent", got)
	}
	done()
	done() // once only
	delete(conns, web.IP+":3000")
	// The console left and the request ended now: their idle time counts
	// from now.
	if got := vmNames(m.idleVMs(now.Add(50*time.Second), true)); got != "old" {
		t.Errorf("50 s later: %q, want old", got)
	}
	if got := vmNames(m.idleVMs(now.Add(2*time.Minute), true)); !strings.HasPrefix(got, "old recent ") || len(strings.Fields(got)) != 4 {
		t.Errorf("2 min later: %q, want old recent, then used and web", got)
	}
	if a.inUse[used.ID] != 0 {
		t.Errorf("a use ended twice left %d in use", a.inUse[used.ID])
	}
}

// TestMemoryShort: what a create lacks counts the VMs holding memory only.
func TestMemoryShort(t *testing.T) {
	m, _, _ := testManager(t)
	m.memTotal = func() (int, error) { return 4096, nil } // 3072 for vms
	addVM(t, m, "a", "id-a", api.StateRunning)
	addVM(t, m, "b", "id-b", api.StateSuspended)
	addVM(t, m, "c", "id-c", api.StateRunning)
	if short, err := m.memoryShort("", 1024); err != nil || short != 0 {
		t.Errorf("1 GiB more: short %d, %v; want 0", short, err)
	}
	if short, _ := m.memoryShort("", 2048); short != 1024 {
		t.Errorf("2 GiB more: short %d, want 1024", short)
	}
	if short, _ := m.memoryShort("id-c", 2048); short != 0 {
		t.Errorf("starting c with 2 GiB: short %d, want 0", short)
	}
}

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{"0100007F:0BB8": "127.0.0.1:3000", "3200ACAC:0016": "172.172.0.50:22"} {
		if got, ok := parseProcAddr(in); !ok || got != want {
			t.Errorf("parseProcAddr(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "00000000000000000000000001000000:0050", "zz00007F:0050"} {
		if got, ok := parseProcAddr(in); ok {
			t.Errorf("parseProcAddr(%q) = %q, want not ok", in, got)
		}
	}
}

// TestEstablishedRemotes: a connection this process holds is listed by its
// remote address.
func TestEstablishedRemotes(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !establishedRemotes()[l.Addr().String()] {
		t.Errorf("the connection to %s is not among the established remotes", l.Addr())
	}
}

package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/base/basetest"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// fakeDriver's Adopt and Start are whatever the test says.
type fakeDriver struct {
	adopt  func(spec vmm.Spec) (vmm.Instance, error)
	start  func(spec vmm.Spec) (vmm.Instance, error)
	starts int
}

func (d *fakeDriver) Name() string { return "fake" }
func (d *fakeDriver) Start(_ context.Context, spec vmm.Spec) (vmm.Instance, error) {
	d.starts++
	if d.start == nil {
		return nil, errors.New("fake: no start")
	}
	return d.start(spec)
}
func (d *fakeDriver) Adopt(_ context.Context, spec vmm.Spec) (vmm.Instance, error) {
	if d.adopt == nil {
		return nil, vmm.ErrNotRunning
	}
	return d.adopt(spec)
}

// fakeNet records the taps it was asked to remove; fail makes a tap's removal
// fail, and onRemove runs first.
type fakeNet struct {
	mu       sync.Mutex
	taps     []string
	removed  []string
	fail     map[string]error
	onRemove func(tap string)
}

func (n *fakeNet) AddVM(_ context.Context, tap string, _ netip.Addr, _ net.HardwareAddr) error {
	return nil
}
func (n *fakeNet) RemoveVM(_ context.Context, tap string, _ netip.Addr) error {
	if n.onRemove != nil {
		n.onRemove(tap)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.fail[tap]; err != nil {
		return err
	}
	n.removed = append(n.removed, tap)
	return nil
}
func (n *fakeNet) TapNames() ([]string, error) { return n.taps, nil }
func (n *fakeNet) wasRemoved(tap string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, t := range n.removed {
		if t == tap {
			return true
		}
	}
	return false
}

// testManager is a Manager on a real store in a temporary data dir, with the
// fake driver and network.
func testManager(t *testing.T) (*Manager, *fakeDriver, *fakeNet) {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcm-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st, err := store.Open(filepath.Join(dir, "fcm.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d, n := &fakeDriver{}, &fakeNet{fail: map[string]error{}}
	_, key, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{DataDir: dir, Driver: d, Network: n, Store: st,
		Subnet: netip.MustParsePrefix("172.30.0.0/24"), StopTimeout: time.Second, NameHold: store.TombstoneAge,
		Bases: basetest.Store(t, dir, "a"), Key: key,
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Ready: func(context.Context, *store.VM) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return m, d, n
}

// addVM stores a VM in state with a lease and a directory.
func addVM(t *testing.T, m *Manager, name, id, state string) *store.VM {
	t.Helper()
	var vm *store.VM
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		ip, err := tx.Lease(id, m.pool)
		if err != nil {
			return err
		}
		vm = &store.VM{ID: id, Name: name, State: state, IP: ip.String(), MAC: macFor(ip), Tap: "tap_" + id,
			CPUs: 1, MemoryMiB: 1024, DiskBytes: 2 << 30, Port: 3000}
		return tx.InsertVM(vm)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(m.dir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	return vm
}

// hungHypervisor is a real process whose command line carries the VM's
// directory, as a hypervisor's does, but that answers nothing: Adopt finds it
// alive and returns it as unresponsive.
func hungHypervisor(t *testing.T, m *Manager, id string) (*exec.Cmd, func(vmm.Spec) (vmm.Instance, error)) {
	t.Helper()
	marker := filepath.Join(m.dir(id), "qmp.sock")
	cmd := exec.Command("sleep", "300")
	cmd.Args[0] = marker
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	adopt := func(spec vmm.Spec) (vmm.Instance, error) {
		p, err := vmm.OpenProcess(cmd.Process.Pid, marker)
		if err != nil {
			return nil, err
		}
		return nil, &vmm.UnresponsiveError{Instance: &vmm.Stray{Process: p}, Err: fmt.Errorf("qmp %s: i/o timeout", marker)}
	}
	return cmd, adopt
}

func alive(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !isZombieStat(string(st))
}

func isZombieStat(s string) bool {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ')' {
			return len(s) > i+2 && s[i+2] == 'Z'
		}
	}
	return false
}

func getVM(t *testing.T, m *Manager, name string) *store.VM {
	t.Helper()
	vm, err := m.cfg.Store.GetVM(name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func ops(t *testing.T, m *Manager) []*store.Op {
	t.Helper()
	var ops []*store.Op
	m.cfg.Store.View(func(tx *store.Tx) (err error) { ops, err = tx.Ops(); return })
	return ops
}

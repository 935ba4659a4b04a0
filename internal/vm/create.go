package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/names"
	"github.com/fcmhost/fcm/internal/store"
	"golang.org/x/crypto/ssh"
)

// validate fills defaults into req and checks its ranges.
func validate(req *api.CreateVMRequest) error {
	if req.Name != "" {
		if err := names.Validate(req.Name); err != nil {
			return invalidf("%v", err)
		}
	}
	if req.CPUs == 0 {
		req.CPUs = api.DefaultCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = api.DefaultMemoryMiB
	}
	if req.DiskBytes == 0 {
		req.DiskBytes = api.DefaultDiskBytes
	}
	if req.Port == 0 {
		req.Port = api.DefaultPort
	}
	switch {
	case req.CPUs < 1 || req.CPUs > api.MaxCPUs:
		return invalidf("cpus %d out of range 1-%d", req.CPUs, api.MaxCPUs)
	case req.MemoryMiB < api.MinMemoryMiB || req.MemoryMiB > api.MaxMemoryMiB:
		return invalidf("memory %d MiB out of range %d-%d", req.MemoryMiB, api.MinMemoryMiB, api.MaxMemoryMiB)
	case req.DiskBytes < 1<<30 || req.DiskBytes > api.MaxDiskBytes:
		return invalidf("disk size %d bytes out of range 1 GiB-1 TiB", req.DiskBytes)
	case req.Port < 1 || req.Port > 65535:
		return invalidf("port %d out of range 1-65535", req.Port)
	}
	return nil
}

// macFor derives a locally administered MAC from the VM's address, so two VMs
// never share one (QEMU's default MAC is the same for every VM).
func macFor(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("06:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

func bootArgs(vm *store.VM, subnet netip.Prefix) string {
	gw := subnet.Masked().Addr().Next()
	return guest.BootArgs(guest.Boot{
		Address: net.ParseIP(vm.IP), Gateway: net.IP(gw.AsSlice()),
		Mask: net.CIDRMask(subnet.Bits(), 32), Hostname: vm.Name, SwapMiB: vm.SwapMiB,
		Overlay: vm.Layout == LayoutOverlay,
	})
}

// Create makes and boots a VM owned by owner, held to no quota (the admin's,
// or a tool's, create); see CreateFor.
func (m *Manager) Create(ctx context.Context, owner string, req api.CreateVMRequest, progress Progress) (*store.VM, error) {
	return m.CreateFor(ctx, Owner{ID: owner}, req, progress)
}

// CreateFor makes and boots a VM for owner, reporting each step to progress,
// and returns it running with SSH ready. A user's create is refused when it
// would go beyond their quota, or they are gone, as the VM is reserved. On any
// error everything made is undone.
func (m *Manager) CreateFor(ctx context.Context, owner Owner, req api.CreateVMRequest, progress Progress) (*store.VM, error) {
	return m.create(ctx, owner, req, progress, nil)
}

// create is CreateFor, of a fork of src's disk when src is not nil.
func (m *Manager) create(ctx context.Context, owner Owner, req api.CreateVMRequest, progress Progress, src *forkSource) (*store.VM, error) {
	if progress == nil {
		progress = noProgress
	}
	if err := validate(&req); err != nil {
		return nil, err
	}
	if err := m.checkMaxima(req); err != nil {
		return nil, err
	}
	start := time.Now()
	b, err := m.cfg.Bases.Current(ctx)
	if src != nil {
		// Its disk is an overlay over its source's base: the fork keeps it.
		b, err = m.cfg.Bases.Get(src.vm.Base)
	}
	if err != nil {
		return nil, err
	}
	ident, err := guest.NewIdentity(m.cfg.Key.PublicKey())
	if err != nil {
		return nil, err
	}
	suspendAfter, err := m.suspendAfterFor(req)
	if err != nil {
		return nil, err
	}
	m.makeRoom(ctx, req.MemoryMiB, "")
	vm, op, err := m.reserve(owner, req, b.ID, ident, suspendAfter)
	if err != nil {
		return nil, err
	}
	defer m.end(vm.Name)
	m.crashPoint(op.Kind, stepLease)
	m.crashPoint(op.Kind, stepDir)
	m.log.Info("creating vm", "name", vm.Name, "id", vm.ID, "ip", vm.IP)
	progress(vm, "reserve", fmt.Sprintf("name %s, address %s", vm.Name, vm.IP))

	vm, err = m.build(ctx, vm, op, ident, progress, src)
	if err != nil {
		m.log.Error("create failed; undoing", "name", vm.Name, "err", err)
		if saved := m.keepConsole(vm); saved != "" {
			err = fmt.Errorf("%w (guest console: %s)", err, saved)
		}
		if uerr := m.undoCreate(context.WithoutCancel(ctx), op); uerr != nil {
			m.markError(vm.ID, op.ID, fmt.Errorf("create failed (%v) and its undo too: %w", err, uerr))
		}
		return nil, err
	}
	m.log.Info("vm created", "name", vm.Name, "took", time.Since(start).Round(time.Millisecond))
	m.observe("create", time.Since(start))
	return vm, nil
}

// reserve picks the name and id, marks the name busy, checks the owner's
// quota and the host's memory and disk, leases the address, and records the VM and the operation, all in one
// transaction; the caller must end() the name. The name is marked busy inside
// the transaction (and unmarked if it fails), so a create racing a destroy of
// the same name either waits for nothing (ErrBusy) or finds it free: it never
// leaves a record nothing works on.
func (m *Manager) reserve(owner Owner, req api.CreateVMRequest, baseID string, ident *guest.Identity, suspendAfter time.Duration) (*store.VM, *store.Op, error) {
	var vm *store.VM
	var op *store.Op
	busy := ""
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		name := req.Name
		now := time.Now().UTC()
		if name == "" {
			name = names.Generate(func(n string) bool { return tx.NameTaken(n) || m.isBusy(n) || tombstoned(tx, n, now) })
		} else if tx.NameTaken(name) {
			return fmt.Errorf("vm %q: %w", name, store.ErrExists)
		} else if err := checkTombstone(tx, owner, name, now); err != nil {
			return err
		}
		if err := m.begin(name, "creating"); err != nil {
			return err
		}
		busy = name
		if err := checkOwner(tx, owner, req); err != nil {
			return err
		}
		if err := m.checkMemory(tx, "", req.MemoryMiB); err != nil {
			return err
		}
		if err := m.checkDisk(tx, req); err != nil {
			return err
		}
		// Pruning retires a base inside a transaction too: either it saw no VM
		// of this base and it is gone now, or it sees this VM and keeps it.
		if !m.cfg.Bases.Exists(baseID) {
			return fmt.Errorf("image %s was just removed (fcm image prune?): try again", base.Short(baseID))
		}
		id := names.NewID()
		if _, err := tx.VMByID(id); err == nil {
			return fmt.Errorf("vm id collision, try again: %w", store.ErrExists)
		}
		ip, err := tx.Lease(id, m.pool)
		if err != nil {
			return err
		}
		if err := tx.DeleteTombstone(name); err != nil {
			return err
		}
		vm = &store.VM{
			ID: id, Name: name, Owner: owner.ID, State: api.StateCreating, Desired: api.DesiredRunning,
			IP: ip.String(), MAC: macFor(ip), Tap: "tap_" + id,
			CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, SwapMiB: api.DefaultSwapMiB,
			DiskBytes: req.DiskBytes, Port: req.Port, NoExpose: req.NoExpose, Hypervisor: m.cfg.Driver.Name(),
			HostKey: string(ssh.MarshalAuthorizedKey(ident.HostKey)), Base: baseID, Layout: LayoutOverlay,
			CreatedAt: now, SuspendAfter: suspendAfter,
		}
		if err := tx.InsertVM(vm); err != nil {
			return err
		}
		op = &store.Op{ID: "create-" + id, Kind: "create", VMName: name, VMID: id,
			Steps: []string{stepLease, stepDir}, StartedAt: now}
		return tx.PutOp(op)
	})
	if err != nil {
		if busy != "" {
			m.end(busy)
		}
		return nil, nil, err
	}
	return vm, op, nil
}

// tombstoned reports whether a VM of this name was destroyed less than
// its hold ago.
func tombstoned(tx *store.Tx, name string, now time.Time) bool {
	_, err := tx.Tombstone(name, now)
	return err == nil
}

// checkTombstone refuses a name a VM had until it was destroyed less than
// its hold (Config.NameHold) ago to anyone but its last owner and the admin: links to
// https://<name>.<domain> (OAuth redirects, webhooks, reset links) may still
// be out there, and must not reach someone else's app. It says when the name
// frees, not whose it was.
func checkTombstone(tx *store.Tx, owner Owner, name string, now time.Time) error {
	ts, err := tx.Tombstone(name, now)
	if err != nil || !owner.User || ts.Owner == owner.ID {
		return nil
	}
	return &roomError{kind: store.ErrExists,
		msg: fmt.Sprintf("vm %q: the name was given up on %s and stays reserved for its last owner until %s (a destroyed VM's name is held a while): pick another name",
			name, ts.DestroyedAt.Format("2006-01-02"), ts.Frees().Format("2006-01-02 15:04 UTC"))}
}

func (m *Manager) isBusy(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.busy[name]
	return ok
}

func (m *Manager) build(ctx context.Context, vm *store.VM, op *store.Op, ident *guest.Identity, progress Progress, src *forkSource) (*store.VM, error) {
	if err := os.MkdirAll(m.dir(vm.ID), 0o700); err != nil {
		return vm, err
	}
	msg, err := m.makeDrives(ctx, vm, ident)
	if err != nil {
		return vm, fmt.Errorf("disk: %w", err)
	}
	progress(vm, "disk", msg)
	if src != nil {
		if msg, err = m.forkDisk(ctx, src, vm); err != nil {
			return vm, fmt.Errorf("fork: %w", err)
		}
		progress(vm, "fork", msg)
	}
	return m.boot(ctx, vm, op, progress)
}

// boot sets up the network, starts the hypervisor and waits for SSH; create and
// start share it.
func (m *Manager) boot(ctx context.Context, vm *store.VM, op *store.Op, progress Progress) (*store.VM, error) {
	t := time.Now()
	if err := m.record(op, stepNetwork, stepBoot); err != nil {
		return vm, err
	}
	ip, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return vm, err
	}
	if err := m.cfg.Network.AddVM(ctx, vm.Tap, ip, parseMAC(vm.MAC)); err != nil {
		return vm, fmt.Errorf("network: %w", err)
	}
	progress(vm, "network", fmt.Sprintf("tap %s on the bridge in %s", vm.Tap, time.Since(t).Round(time.Millisecond)))

	t = time.Now()
	spec, err := m.spec(ctx, vm)
	if err != nil {
		return vm, fmt.Errorf("boot: %w", err)
	}
	if err := m.reserveMemory(spec); err != nil {
		return vm, fmt.Errorf("boot: %w", err)
	}
	booted := time.Now()
	inst, err := m.cfg.Driver.Start(ctx, spec)
	if err != nil {
		return vm, fmt.Errorf("boot: %w", err)
	}
	m.setInstance(vm.ID, inst)
	vm.PID = inst.PID() // stored with the state once the guest is up
	progress(vm, "boot", fmt.Sprintf("%s started (pid %d) in %s", m.cfg.Driver.Name(), inst.PID(), time.Since(t).Round(time.Millisecond)))

	t = time.Now()
	ready := m.waitSSH
	if m.cfg.Ready != nil {
		ready = m.cfg.Ready
	}
	if err := ready(ctx, vm); err != nil {
		return vm, fmt.Errorf("boot: %w", err)
	}
	progress(vm, "ssh", fmt.Sprintf("SSH ready in %s", time.Since(t).Round(time.Millisecond)))
	m.observe("boot", time.Since(booted))

	err = m.cfg.Store.Update(func(tx *store.Tx) error {
		cur, err := tx.VM(vm.Name)
		if err != nil {
			return err
		}
		cur.State, cur.Reason, cur.PID = api.StateRunning, "", inst.PID()
		vm = cur
		if err := tx.PutVM(cur); err != nil {
			return err
		}
		return tx.DeleteOp(op.ID)
	})
	if err != nil {
		return vm, err
	}
	go m.watch(vm.Name, vm.ID, inst)
	return vm, nil
}

// Client returns an SSH client for a VM, pinned to its host key.
func (m *Manager) Client(vm *store.VM) (*guest.Client, error) {
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(vm.HostKey))
	if err != nil {
		return nil, fmt.Errorf("vm %s: stored host key: %w", vm.Name, err)
	}
	return &guest.Client{Addr: net.JoinHostPort(vm.IP, "22"), Signer: m.cfg.Key, HostKey: hostKey}, nil
}

func (m *Manager) waitSSH(ctx context.Context, vm *store.VM) error {
	c, err := m.Client(vm)
	if err != nil {
		return err
	}
	defer c.Close()
	wctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	inst := m.instance(vm.ID)
	done := make(chan error, 1)
	go func() { done <- c.WaitReady(wctx) }()
	// A VM whose hypervisor dies while booting fails at once, not at the timeout.
	for {
		select {
		case err := <-done:
			return err
		case <-time.After(250 * time.Millisecond):
			if inst != nil && !inst.Running() {
				cancel()
				<-done
				return errors.New("the hypervisor exited during boot")
			}
		}
	}
}

// keepConsole moves a failed VM's console log out of its directory, which the
// undo removes, and returns where it went ("" when there was none).
func (m *Manager) keepConsole(vm *store.VM) string {
	src := filepath.Join(m.dir(vm.ID), "console.log")
	if _, err := os.Stat(src); err != nil {
		return ""
	}
	logs := filepath.Join(m.cfg.DataDir, "logs")
	if err := os.MkdirAll(logs, 0o700); err != nil {
		return ""
	}
	dst := filepath.Join(logs, fmt.Sprintf("%s-%s-console.log", vm.Name, vm.ID))
	if err := os.Rename(src, dst); err != nil {
		return ""
	}
	now := time.Now()
	os.Chtimes(dst, now, now) // pruning keeps the newest by the time they were kept
	pruneLogs(logs, now)
	return dst
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

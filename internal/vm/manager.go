// Package vm sequences VM lifecycles: create, start, stop, destroy, and the
// reconcile a daemon runs at start-up. It is the only package that does; each
// operation is recorded in the store step by step before the step's side effect,
// so a daemon killed at any point can finish or undo it on restart.
package vm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
	"golang.org/x/crypto/ssh"
)

// Network is what the lifecycle needs of the host network (internal/network).
type Network interface {
	AddVM(ctx context.Context, tap string, ip netip.Addr, mac net.HardwareAddr) error
	RemoveVM(ctx context.Context, tap string, ip netip.Addr) error
	TapNames() ([]string, error)
}

// parseMAC is a VM's stored MAC for Network.AddVM, nil if it does not parse
// (AddVM then refuses it).
func parseMAC(s string) net.HardwareAddr {
	mac, _ := net.ParseMAC(s)
	return mac
}

// Config is what a Manager is built from.
type Config struct {
	DataDir string
	// StoreDir is where new VMs' directories and checkpoints go (see
	// vmstore): <StoreDir>/vms/<id> and <StoreDir>/checkpoints/<id>; ""
	// means DataDir. A VM made before it was set stays in <DataDir>/vms.
	StoreDir string
	// Bases holds the guest images; a new VM is made from the current one.
	Bases *base.Store
	// Templates makes the empty disks new VMs get (default: in
	// <data-dir>/templates).
	Templates   *disk.Templates
	Driver      vmm.Driver
	Network     Network
	Subnet      netip.Prefix
	Store       *store.Store
	Key         ssh.Signer    // the daemon's key, authorized in every VM
	BootTimeout time.Duration // create/start: from hypervisor start to SSH ready
	// NameHold is how long a destroyed VM's name stays its last owner's (and
	// the admin's); 0: anyone may take it at once.
	NameHold    time.Duration
	StopTimeout time.Duration // graceful stop before the hypervisor is killed
	Log         *slog.Logger
	// Bridge is the bridge fcm's taps join: a tap_<id> enslaved to it is fcm's
	// even when no VM record names it (reconcile removes only fcm's taps).
	Bridge string
	// Maxima per VM, enforced on create (the daemon's --max-cpus, --max-memory,
	// --max-disk); zero means the default.
	MaxCPUs      int
	MaxMemoryMiB int
	MaxDiskBytes int64
	// Headroom create leaves on the host: free space on the data dir's
	// filesystem, and memory beyond what VMs that are not stopped are given.
	DiskReserve      int64
	MemoryReserveMiB int
	// DiskOvercommit is how many times the free space less DiskReserve the
	// VMs' disks may be promised (fcm daemon --disk-overcommit); zero means
	// DefaultDiskOvercommit.
	DiskOvercommit float64
	// Suspend lets VMs be suspended (fcm daemon --suspend on): with QEMU their
	// RAM is then in a file in their directory (MemoryFile), which the host
	// may write back to disk under memory pressure instead of OOM-killing
	// them; off keeps guest RAM anonymous and refuses fcm suspend.
	Suspend bool
	// SuspendAfter is how long a new VM with a public URL may sit idle before
	// it is suspended, unless its create says otherwise (fcm daemon
	// --suspend-after); 0: never. It needs Suspend.
	SuspendAfter time.Duration
	// KeepCheckpoints is how many checkpoints a VM keeps, the oldest removed
	// first (fcm daemon --keep-checkpoints); 0: DefaultKeepCheckpoints.
	KeepCheckpoints int
	// Standbys is how many suspended VMs keep a hypervisor waiting for their
	// wake, the last suspended (fcm daemon --standbys); 0: none.
	Standbys int
	// Slept is told of each VM the daemon suspends by itself (idle, or to
	// make room), as the suspend starts and once it is done, so that its
	// route goes to the waker; and, if the suspend failed, once the VM runs
	// on, so that the route comes back to it.
	Slept func(*store.VM)
	// BootConcurrency bounds the boots the daemon does by itself at once
	// (restarts, see Heal); 0: DefaultBootConcurrency.
	BootConcurrency int
	// Observe, when set, is told how long each create (to SSH ready), boot
	// (hypervisor start to SSH ready), suspend and wake took: op is "create",
	// "boot", "suspend" or "wake".
	Observe func(op string, took time.Duration)
	// Ready waits until a booted VM is usable; default: its SSH answers with the
	// pinned host key. Benchmarks of the daemon's own overhead replace it.
	Ready func(ctx context.Context, vm *store.VM) error
}

// Manager runs VM lifecycles.
type Manager struct {
	cfg  Config
	pool store.Pool
	log  *slog.Logger

	mu        sync.Mutex
	busy      map[string]string        // vm name -> operation in progress
	instances map[string]vmm.Instance  // vm id -> running hypervisor
	shared    map[string]*guest.Client // vm id -> the SSH connection its commands share
	// reserveErr is why the store's reserve could not be kept, as last logged
	// (see KeepStoreReserve); "" when it is kept.
	reserveErr string

	// hostRestarted: the host booted since the daemon last ran (Reconcile).
	hostRestarted bool

	activity *Activity // when each VM was last used (SuspendIdle)
	sb       standbys  // hypervisors waiting for wakes (under mu)

	crashAt   string                           // test-only: see CrashEnv
	freeSpace func(dir string) (int64, error)  // bytes free for us on dir's filesystem
	memTotal  func() (int, error)              // the host's MemTotal in MiB
	sync      func(context.Context, *store.VM) // has a guest sync its disks (syncGuest)
}

// Errors the API maps to status codes.
var (
	ErrBusy     = errors.New("vm is busy")
	ErrBadState = errors.New("vm is not in a state for this")
	ErrInvalid  = errors.New("invalid request")
)

// invalidError is a bad request whose message stands alone; errors.Is matches
// it to ErrInvalid.
type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// New makes a Manager; call Reconcile before serving requests.
func New(cfg Config) (*Manager, error) {
	pool, err := store.PoolFor(cfg.Subnet)
	if err != nil {
		return nil, err
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 2 * time.Minute
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxCPUs == 0 {
		cfg.MaxCPUs = DefaultMaxCPUs
	}
	if cfg.MaxMemoryMiB == 0 {
		cfg.MaxMemoryMiB = DefaultMaxMemoryMiB
	}
	if cfg.MaxDiskBytes == 0 {
		cfg.MaxDiskBytes = DefaultMaxDiskBytes
	}
	if cfg.DiskReserve == 0 {
		cfg.DiskReserve = DefaultDiskReserve
	}
	if cfg.DiskOvercommit == 0 {
		cfg.DiskOvercommit = DefaultDiskOvercommit
	}
	if cfg.MemoryReserveMiB == 0 {
		cfg.MemoryReserveMiB = DefaultMemoryReserveMiB
	}
	if cfg.BootConcurrency <= 0 {
		cfg.BootConcurrency = DefaultBootConcurrency()
	}
	if cfg.Bases == nil {
		return nil, errors.New("vm: no image store (Config.Bases)")
	}
	if cfg.Templates == nil {
		// Beside the VMs' disks: a VM's disk is a reflink of its template
		// where the store can.
		cfg.Templates = &disk.Templates{Dir: filepath.Join(cmp.Or(cfg.StoreDir, cfg.DataDir), "templates")}
	}
	m := &Manager{cfg: cfg, pool: pool, log: cfg.Log,
		busy: map[string]string{}, instances: map[string]vmm.Instance{}, activity: newActivity(),
		crashAt: os.Getenv(CrashEnv), freeSpace: FreeSpace, memTotal: memTotalMiB}
	m.sync = m.syncGuest
	return m, nil
}

// Pool is the address range VMs are leased from.
func (m *Manager) Pool() store.Pool { return m.pool }

// begin marks a VM busy with op; a second operation on it gets ErrBusy.
func (m *Manager) begin(name, op string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.busy[name]; ok {
		return fmt.Errorf("%w: vm %q is %s", ErrBusy, name, cur)
	}
	m.busy[name] = op
	return nil
}

func (m *Manager) end(name string) {
	m.mu.Lock()
	delete(m.busy, name)
	m.mu.Unlock()
}

func (m *Manager) instance(id string) vmm.Instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.instances[id]
}

// setInstance records id's hypervisor (nil: none), closing the pidfd of the
// one it replaces.
func (m *Manager) setInstance(id string, inst vmm.Instance) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.instances[id]
	if old != nil && old != inst {
		vmm.Close(old)
	}
	if old != inst {
		// The guest it spoke to is gone (or booted again).
		if c := m.shared[id]; c != nil {
			delete(m.shared, id)
			go c.Close()
		}
	}
	if inst == nil {
		delete(m.instances, id)
	} else {
		m.instances[id] = inst
	}
}

// Shared returns the SSH client that commands to a running VM share (ps,
// logs, run, releases): one connection per VM, its sessions multiplexed on
// it, closed when the VM's hypervisor stops or is replaced. Callers must not
// close it.
func (m *Manager) Shared(vm *store.VM) (*guest.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.instances[vm.ID] == nil {
		return nil, fmt.Errorf("vm %s is not running: %w", vm.Name, ErrBadState)
	}
	if c := m.shared[vm.ID]; c != nil {
		return c, nil
	}
	c, err := m.Client(vm)
	if err != nil {
		return nil, err
	}
	if m.shared == nil {
		m.shared = map[string]*guest.Client{}
	}
	m.shared[vm.ID] = c
	return c, nil
}

// dir is a VM's directory; ids are validated before they get here. New VMs
// are made in the store; a VM made before the store was where it is stays in
// the data dir, and works there.
func (m *Manager) dir(id string) string {
	legacy := filepath.Join(m.cfg.DataDir, "vms", id)
	if m.cfg.StoreDir == "" || m.cfg.StoreDir == m.cfg.DataDir {
		return legacy
	}
	if _, err := os.Lstat(legacy); err == nil {
		return legacy
	}
	return filepath.Join(m.cfg.StoreDir, "vms", id)
}

// DiskPath is where VM id's own disk is.
func (m *Manager) DiskPath(id string) string { return filepath.Join(m.dir(id), dataFile) }

// root is the directory VM id's directory is in the vms/ of: the store, or
// the data dir for a VM made before it.
func (m *Manager) root(id string) string { return filepath.Dir(filepath.Dir(m.dir(id))) }

// spec is the hypervisor's view of a VM. Its hypervisor runs as a uid of its
// own, derived from its address (vmm.UIDFor), in its own cgroup. A VM boots
// its own base's kernel and initrd, with the base's root filesystem read-only
// and its own disks (see drives.go); a VM made before bases were shared boots
// its one disk with the current base's kernel and initrd. On error the spec
// still names the VM and its directory (enough to adopt or kill it).
func (m *Manager) spec(ctx context.Context, vm *store.VM) (vmm.Spec, error) {
	ip, _ := netip.ParseAddr(vm.IP)
	uid := vmm.UIDFor(ip, m.cfg.Subnet)
	s := vmm.Spec{
		ID: vm.ID, Dir: m.dir(vm.ID),
		BootArgs:  bootArgs(vm, m.cfg.Subnet),
		TapDevice: vm.Tap, MAC: vm.MAC,
		VCPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB,
		UID: uid, GID: uid, Cgroup: true,
	}
	var b *base.Base
	var err error
	if vm.Layout == LayoutOverlay {
		b, err = m.cfg.Bases.Get(vm.Base)
	} else {
		b, err = m.cfg.Bases.Current(ctx)
	}
	if err != nil {
		return s, fmt.Errorf("vm %s: its image: %w", vm.Name, err)
	}
	s.Kernel, s.Initrd = b.Kernel(), b.Initrd()
	s.Drives = m.drives(vm, b)
	if m.snapshots() {
		s.MemoryFile = filepath.Join(s.Dir, MemoryFile)
	}
	return s, nil
}

// Progress reports a step of a long operation on vm to whoever asked for it.
type Progress func(vm *store.VM, step, message string)

func noProgress(*store.VM, string, string) {}

// ToAPI converts a stored VM to its wire form; its URL is http://<ip>:<port>
// (the edge, when there is one, gives the public one instead).
func ToAPI(vm *store.VM) api.VM {
	a := api.VM{
		Name: vm.Name, ID: vm.ID, State: vm.State, Reason: vm.Reason, IP: vm.IP, MAC: vm.MAC,
		CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes, Port: vm.Port,
		Hypervisor: vm.Hypervisor, PID: vm.PID, HostKey: vm.HostKey, CreatedAt: vm.CreatedAt,
	}
	a.Desired = vm.DesiredState()
	if vm.SuspendAfter > 0 {
		a.SuspendAfter = api.FormatSuspendAfter(vm.SuspendAfter)
	}
	if vm.State == api.StateSuspended && !vm.SuspendedAt.IsZero() {
		at := vm.SuspendedAt
		a.SuspendedAt = &at
	}
	for _, e := range vm.Events {
		a.Events = append(a.Events, api.VMEvent{At: e.At, Kind: e.Kind, Detail: e.Detail})
	}
	if !vm.NoExpose {
		a.URL = fmt.Sprintf("http://%s:%d", vm.IP, vm.Port)
	}
	return a
}

// observe tells Config.Observe how long op took.
func (m *Manager) observe(op string, took time.Duration) {
	if m.cfg.Observe != nil {
		m.cfg.Observe(op, took)
	}
}

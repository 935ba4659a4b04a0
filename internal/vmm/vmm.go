// Package vmm defines the hypervisor driver interface fcm boots VMs through, and
// a registry of drivers by name ("firecracker", "qemu"). Drivers start a VM from a
// Spec, stop it gracefully or kill it, wait for it, and adopt a VM that is still
// running after the daemon restarted. They know nothing of fcm's store.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Spec is everything a driver needs to boot one VM.
type Spec struct {
	ID       string // short [a-z0-9] id; names the process
	Dir      string // the VM's directory: sockets, pid file and logs go here
	Kernel   string // uncompressed ELF kernel (vmlinux.bin)
	Initrd   string // optional initrd
	BootArgs string // the whole kernel command line (drivers may append what their machine needs)
	// Drives are the VM's disks, raw images; the first is the root device
	// (Firecracker's is_root_device, which it attaches as /dev/vda). A guest
	// finds its drives by label or content, not by /dev/vdX order.
	Drives    []Drive
	TapDevice string // host tap device for eth0
	MAC       string // eth0's MAC address
	VCPUs     int
	MemoryMiB int
	// UID and GID, when UID is not 0, are the unprivileged user and group the
	// hypervisor runs as, one per VM (see PrepareSandbox); 0 keeps the daemon's.
	UID, GID int
	// Cgroup puts the hypervisor in its own cgroup fcm/vm-<ID>, its memory
	// limited to MemoryMiB plus overhead and its CPU weight set by VCPUs.
	Cgroup bool
	// MemoryFile, when set, holds the guest's RAM (a file in Dir): what a
	// Snapshotter suspends and restores without copying it. QEMU maps it
	// shared while the guest runs; Firecracker's snapshot writes all guest
	// memory to it and a restore maps it privately, never writing it.
	MemoryFile string
}

// Drive is one disk of a VM.
type Drive struct {
	ID   string // [a-z0-9_]: Firecracker's drive_id, QEMU's drive id
	Path string // raw image on the host
	// ReadOnly attaches it read-only: the guest's writes fail.
	ReadOnly bool
	// Shared drives belong to no one VM (the guest image's base): the sandbox
	// only checks that the VM's user can read them, and never takes them over.
	// A shared drive must be ReadOnly.
	Shared bool
}

// MaxDirLen is the longest VM directory a driver accepts: control sockets live
// there, and a unix socket path has at most 107 bytes.
const MaxDirLen = 80

var (
	idPattern    = regexp.MustCompile(`^[a-z0-9]{1,32}$`)
	drivePattern = regexp.MustCompile(`^[a-z0-9_]{1,16}$`)
	tapPattern   = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,15}$`)
)

// Validate rejects a spec a driver must not act on: paths that are relative, an id
// or tap name that could reach a path or a command line unchecked.
func (s Spec) Validate() error {
	if !idPattern.MatchString(s.ID) {
		return fmt.Errorf("invalid vm id %q: want 1-32 of [a-z0-9]", s.ID)
	}
	for name, p := range map[string]string{"dir": s.Dir, "kernel": s.Kernel} {
		if p == "" || !filepath.IsAbs(p) {
			return fmt.Errorf("vm %s: %s path %q must be absolute", s.ID, name, p)
		}
	}
	if len(s.Drives) == 0 {
		return fmt.Errorf("vm %s: no drives: a vm needs a root drive", s.ID)
	}
	seen := map[string]bool{}
	for _, d := range s.Drives {
		switch {
		case !drivePattern.MatchString(d.ID):
			return fmt.Errorf("vm %s: invalid drive id %q: want 1-16 of [a-z0-9_]", s.ID, d.ID)
		case seen[d.ID]:
			return fmt.Errorf("vm %s: drive id %q given twice", s.ID, d.ID)
		case d.Path == "" || !filepath.IsAbs(d.Path):
			return fmt.Errorf("vm %s: drive %s path %q must be absolute", s.ID, d.ID, d.Path)
		case d.Shared && !d.ReadOnly:
			return fmt.Errorf("vm %s: drive %s is shared between vms, so it must be read-only", s.ID, d.ID)
		}
		seen[d.ID] = true
	}
	if len(s.Dir) > MaxDirLen {
		return fmt.Errorf("vm %s: directory %s is %d bytes long; at most %d fit a unix socket path", s.ID, s.Dir, len(s.Dir), MaxDirLen)
	}
	if s.Initrd != "" && !filepath.IsAbs(s.Initrd) {
		return fmt.Errorf("vm %s: initrd path %q must be absolute", s.ID, s.Initrd)
	}
	if s.TapDevice != "" && !tapPattern.MatchString(s.TapDevice) {
		return fmt.Errorf("vm %s: invalid tap device name %q", s.ID, s.TapDevice)
	}
	if s.TapDevice != "" {
		if _, err := net.ParseMAC(s.MAC); err != nil {
			return fmt.Errorf("vm %s: invalid MAC %q", s.ID, s.MAC)
		}
	}
	if s.VCPUs < 1 || s.VCPUs > 32 {
		return fmt.Errorf("vm %s: vcpus %d out of range 1-32", s.ID, s.VCPUs)
	}
	if s.MemoryMiB < 128 {
		return fmt.Errorf("vm %s: memory %d MiB is below the 128 MiB minimum", s.ID, s.MemoryMiB)
	}
	return nil
}

// Driver boots VMs with one hypervisor.
type Driver interface {
	// Name is the registry name ("qemu", "firecracker").
	Name() string
	// Start boots a VM and returns once the hypervisor runs it (not once the guest
	// has booted). On error nothing of the hypervisor is left running.
	Start(ctx context.Context, spec Spec) (Instance, error)
	// Adopt finds the VM of spec still running from an earlier daemon, through
	// the pid file and control socket in spec.Dir. ErrNotRunning when it is gone.
	Adopt(ctx context.Context, spec Spec) (Instance, error)
}

// Instance is one running hypervisor process.
type Instance interface {
	// PID of the hypervisor process.
	PID() int
	// Shutdown asks the guest to power off (Ctrl-Alt-Del or the ACPI power
	// button) and returns without waiting.
	Shutdown(ctx context.Context) error
	// Kill ends the hypervisor at once.
	Kill() error
	// Wait blocks until the hypervisor process has exited or ctx ends.
	Wait(ctx context.Context) error
	// Running reports whether the hypervisor process is alive.
	Running() bool
}

// Pauser is an Instance whose hypervisor may pause its guest by itself and
// be asked to resume it: QEMU stops a guest whose disk write failed for want
// of space on the host (virtio-blk's werror=enospc) rather than fail the
// write. Firecracker reports the error to the guest instead, and pauses only
// when asked (for a suspend, or restored from one).
type Pauser interface {
	// RunState is the hypervisor's own run state: RunStateIOError when it
	// paused the guest on a host I/O error.
	RunState(ctx context.Context) (string, error)
	// Pause stops the guest's vCPUs; its block requests in flight complete
	// first (a checkpoint's copy of its disk then holds every write the
	// guest was told was done).
	Pause(ctx context.Context) error
	// Resume lets a paused guest run again; the failed write is retried.
	Resume(ctx context.Context) error
}

// RunStateIOError is Pauser.RunState's answer for a guest paused on a host
// I/O error (QMP query-status "io-error").
const RunStateIOError = "io-error"

// Snapshotter is a Driver that can suspend a VM to disk and restore it: the
// guest's memory stays in spec.MemoryFile, its device state goes to a state
// file in spec.Dir, and the hypervisor process ends, so a suspended VM holds
// no host memory.
type Snapshotter interface {
	// Suspend pauses inst's guest, writes its device state to the file
	// StateFile names in spec.Dir and ends the hypervisor. On error the guest
	// runs again (or, if that failed too, is left paused, still running).
	Suspend(ctx context.Context, inst Instance, spec Spec) error
	// Restore starts a hypervisor for spec from what Suspend wrote, its guest
	// paused: the instance is a Pauser, whose Resume lets it run. Once it has
	// run, the state file no longer matches the memory file: the caller
	// removes it, and never restores it again.
	Restore(ctx context.Context, spec Spec) (Instance, error)
}

// Standbyer is a Snapshotter that can start a VM's hypervisor ahead of its
// wake, waiting for the state (its start is then off the wake's path).
type Standbyer interface {
	// Standby starts a hypervisor for spec that waits for the state Suspend
	// wrote; it runs no guest and holds no guest memory of its own. Its
	// Status is "inmigrate" while it waits.
	Standby(ctx context.Context, spec Spec) (Instance, error)
	// RestoreInto loads the state into inst (from Standby), its guest paused,
	// as Restore does; on an error inst is killed.
	RestoreInto(ctx context.Context, inst Instance, spec Spec) error
}

// StandbyStatus is the QMP status of a hypervisor from Standby.
const StandbyStatus = "inmigrate"

// StateFile is the name, in a VM's directory, of the device state a
// Snapshotter's Suspend writes.
const StateFile = "suspend.state"

// MemoryLayerSuffix names, after spec.MemoryFile's name, a layer of guest
// memory a Snapshotter's Suspend may leave beside it (Firecracker's Diff
// snapshot: the pages written since the memory file was loaded): the memory
// of the suspend image is the memory file with the layer on top, and Restore
// merges it first. It goes with the state file whenever that is removed.
const MemoryLayerSuffix = ".layer"

// ErrNotRunning says a VM's hypervisor process is not (or no longer) running.
var ErrNotRunning = errors.New("vm is not running")

// ErrUnresponsive says a VM's hypervisor process is alive (found by pidfd and
// the VM's marker on its command line) but its control socket does not answer
// or is missing: it is running and holds the VM's disk and tap, it is not gone.
var ErrUnresponsive = errors.New("the hypervisor is alive but its control socket does not answer")

// UnresponsiveError is Adopt's error for such a process. Instance can still be
// killed and waited for through its pidfd; whoever gets it must Close it.
type UnresponsiveError struct {
	Instance *Stray
	Err      error // why talking to it failed
}

func (e *UnresponsiveError) Error() string {
	return fmt.Sprintf("hypervisor pid %d is alive but does not answer: %v", e.Instance.PID(), e.Err)
}

// Is makes errors.Is(err, ErrUnresponsive) true.
func (e *UnresponsiveError) Is(target error) bool { return target == ErrUnresponsive }

func (e *UnresponsiveError) Unwrap() error { return e.Err }

// Stray is a hypervisor process fcm cannot talk to: it can only be killed.
type Stray struct{ *Process }

var _ Instance = (*Stray)(nil)

// Shutdown cannot ask a stray anything: it returns ErrUnresponsive, and Stop
// then kills it.
func (s *Stray) Shutdown(context.Context) error { return ErrUnresponsive }

// Kill implements Instance.
func (s *Stray) Kill() error { return s.Signal(unix.SIGKILL) }

// Close releases an instance's pidfd, if it holds one.
func Close(inst Instance) {
	if c, ok := inst.(interface{ Close() error }); ok {
		c.Close()
	}
}

// RefuseRunning is what a driver's Start checks first: an error when a
// hypervisor of spec still runs (answering or not), so that a second one is
// never booted on the same disk and a live one's pid file and socket are never
// removed. nil when none runs.
func RefuseRunning(ctx context.Context, d Driver, spec Spec) error {
	inst, err := d.Adopt(ctx, spec)
	var ue *UnresponsiveError
	switch {
	case err == nil:
		pid := inst.PID()
		Close(inst)
		return fmt.Errorf("vm %s: already running as pid %d", spec.ID, pid)
	case errors.As(err, &ue):
		pid := ue.Instance.PID()
		ue.Instance.Close()
		return fmt.Errorf("vm %s: its hypervisor (pid %d) still runs on its disk but does not answer (%v); not starting a second one: stop or destroy the vm to kill it", spec.ID, pid, ue.Err)
	case errors.Is(err, ErrNotRunning):
		return nil
	}
	return fmt.Errorf("vm %s: cannot tell whether its hypervisor still runs: %w", spec.ID, err)
}

// Stop shuts an instance down gracefully and kills it when it has not exited
// within timeout. graceful reports whether the guest stopped by itself.
func Stop(ctx context.Context, inst Instance, timeout time.Duration) (graceful bool, err error) {
	if !inst.Running() {
		return true, nil
	}
	if err := inst.Shutdown(ctx); err != nil && inst.Running() {
		if kerr := inst.Kill(); kerr != nil {
			return false, fmt.Errorf("shutdown: %w; kill: %v", err, kerr)
		}
		return false, inst.Wait(ctx)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := inst.Wait(wctx); err == nil {
		return true, nil
	} else if ctx.Err() != nil {
		return false, err
	}
	if err := inst.Kill(); err != nil {
		return false, err
	}
	return false, inst.Wait(ctx)
}

var (
	mu      sync.Mutex
	drivers = map[string]func() (Driver, error){}
)

// Register makes a driver constructor available by name; drivers call it in init.
func Register(name string, open func() (Driver, error)) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := drivers[name]; dup {
		panic("vmm: driver registered twice: " + name)
	}
	drivers[name] = open
}

// Open returns the named driver, or an error listing the drivers there are.
func Open(name string) (Driver, error) {
	mu.Lock()
	open, ok := drivers[name]
	mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("unknown hypervisor %q (have: %v)", name, Names())
	}
	return open()
}

// Names lists the registered drivers, sorted.
func Names() []string {
	mu.Lock()
	defer mu.Unlock()
	var names []string
	for n := range drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

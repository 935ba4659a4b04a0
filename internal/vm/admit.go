package vm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
	"golang.org/x/sys/unix"
)

// Defaults of the per-VM maxima and the host headroom create keeps.
const (
	DefaultMaxCPUs          = 8
	DefaultMaxMemoryMiB     = 16 << 10
	DefaultMaxDiskBytes     = 64 << 30
	DefaultDiskReserve      = 2 << 30
	DefaultMemoryReserveMiB = 1 << 10
)

// Defaults of the per-user quotas (fcm daemon --max-vms-per-user,
// --max-memory-per-user, --max-cpus-per-user): ten VMs of the default size, or
// one of the per-VM maximum, fit.
const (
	DefaultMaxVMsPerUser       = 10
	DefaultMaxMemoryMiBPerUser = 16 << 10
	DefaultMaxCPUsPerUser      = 16
)

// Errors of admission: the host has not the room for what was asked, the
// owner's quota is used up, or the owner is gone.
var (
	ErrInsufficientStorage  = errors.New("insufficient storage")
	ErrInsufficientCapacity = errors.New("insufficient capacity")
	ErrQuota                = errors.New("quota exceeded")
	ErrOwnerGone            = errors.New("owner removed")
)

// Quota is what one user may have in all, summed over every VM they own in
// any state (a stopped VM may be started again without asking); a zero field
// is no limit.
type Quota struct {
	VMs       int
	MemoryMiB int
	CPUs      int
}

// Owner is who a VM is created for.
type Owner struct {
	// ID is what the VM's record names as its owner: the user's id, or the
	// admin token's.
	ID string
	// User marks a person's create: the user must still exist and be allowed
	// when the VM is reserved, and is held to Quota. The admin is not.
	User  bool
	Quota Quota
}

// roomError is a refusal for want of room whose message stands alone;
// errors.Is matches it to its kind.
type roomError struct {
	msg  string
	kind error
}

func (e *roomError) Error() string        { return e.msg }
func (e *roomError) Is(target error) bool { return target == e.kind }

// FreeSpace returns the bytes an unprivileged write may still use on the
// filesystem holding dir.
func FreeSpace(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space on %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// CheckFreeSpace refuses (ErrInsufficientStorage) when dir's filesystem has
// less than need bytes free; what tells the person why need is what it is.
func CheckFreeSpace(dir string, need int64, what string) error {
	return checkFree(FreeSpace, dir, need, what)
}

func checkFree(free func(string) (int64, error), dir string, need int64, what string) error {
	n, err := free(dir)
	if err != nil {
		return err
	}
	if n < need {
		return &roomError{kind: ErrInsufficientStorage,
			msg: fmt.Sprintf("not enough disk space on %s: %s free, need %s (%s)", dir, gib(n), gib(need), what)}
	}
	return nil
}

func gib(n int64) string { return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30)) }

// memTotalMiB reads MemTotal from /proc/meminfo.
func memTotalMiB() (int, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, err := strconv.Atoi(fields[1])
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: %q", sc.Text())
			}
			return kib >> 10, nil
		}
	}
	return 0, errors.New("/proc/meminfo has no MemTotal")
}

// checkMaxima enforces the host's per-VM maxima on a validated request.
func (m *Manager) checkMaxima(req api.CreateVMRequest) error {
	switch {
	case req.CPUs > m.cfg.MaxCPUs:
		return invalidf("cpus %d is above this host's maximum of %d per vm (fcm daemon --max-cpus)", req.CPUs, m.cfg.MaxCPUs)
	case req.MemoryMiB > m.cfg.MaxMemoryMiB:
		return invalidf("memory %d MiB is above this host's maximum of %d MiB per vm (fcm daemon --max-memory)", req.MemoryMiB, m.cfg.MaxMemoryMiB)
	case req.DiskBytes > m.cfg.MaxDiskBytes:
		return invalidf("disk size %s is above this host's maximum of %s per vm (fcm daemon --max-disk)", humanBytes(req.DiskBytes), humanBytes(m.cfg.MaxDiskBytes))
	}
	return nil
}

// DefaultDiskOvercommit is fcm daemon --disk-overcommit's default: the VMs'
// disks are never promised more than the free space less the reserve, so
// their guests alone cannot fill the host's disk.
const DefaultDiskOvercommit = 1.0

// diskRoom is what create's disk admission weighs: the free space on the data
// dir's filesystem less the reserve, times the overcommit ratio, must hold
// what the VMs were promised and have not used yet, and the new VM's disk and
// swap.
type diskRoom struct {
	dir     string
	free    int64 // bytes an unprivileged write may still use
	reserve int64 // kept free for the store, repositories and logs
	unused  int64 // promised to the VMs there are (disk and swap), not yet taken from the host
	disk    int64 // the new VM's disk
	swap    int64 // and its swap
	ratio   float64
}

// check refuses (ErrInsufficientStorage) a VM that does not fit, with the
// numbers and the flag to change.
func (r diskRoom) check() error {
	may := int64(r.ratio * float64(max(r.free-r.reserve, 0)))
	ask := r.disk + r.swap
	if r.unused+ask <= may {
		return nil
	}
	if r.free <= r.reserve {
		return &roomError{kind: ErrInsufficientStorage,
			msg: fmt.Sprintf("not enough disk space on %s: %s free, not more than the %s reserve (fcm daemon --disk-reserve): no new vms until space is freed on the host",
				r.dir, gib(r.free), gib(r.reserve))}
	}
	return &roomError{kind: ErrInsufficientStorage,
		msg: fmt.Sprintf("not enough disk space on %s: this vm asks for %s (%s disk, %s swap); %s is free less a %s reserve, "+
			"%s is promised to the vms there are and not yet used by them, and with fcm daemon --disk-overcommit %g the vms may be promised at most %s: "+
			"%s is left (destroy a vm, ask for a smaller --disk, free space on the host, or raise --disk-overcommit at the risk of a full disk)",
			r.dir, gib(ask), gib(r.disk), gib(r.swap), gib(r.free), gib(r.reserve), gib(r.unused), r.ratio, gib(may), gib(max(may-r.unused, 0)))}
}

// checkDisk refuses a create whose disk, with what the other VMs were
// promised and have not used yet, would not fit the free space on the data
// dir's filesystem (which also holds the store) less the reserve, times the
// overcommit ratio. It runs inside the transaction that records the create,
// so two cannot both pass.
func (m *Manager) checkDisk(tx *store.Tx, req api.CreateVMRequest) error {
	free, err := m.freeSpace(m.cfg.DataDir)
	if err != nil {
		return err
	}
	vms, err := tx.VMs()
	if err != nil {
		return err
	}
	r := diskRoom{dir: m.cfg.DataDir, free: free, reserve: m.cfg.DiskReserve,
		disk: req.DiskBytes, swap: int64(api.DefaultSwapMiB) << 20, ratio: m.cfg.DiskOvercommit}
	if m.snapshots() {
		r.swap += int64(req.MemoryMiB) << 20 // its memory file, as it fills
	}
	for _, v := range vms {
		r.unused += m.unusedPromise(v)
	}
	return r.check()
}

// unusedPromise is what vm's disks may still take of the host: its disk and
// swap sizes less the host blocks they occupy already (they are sparse).
func (m *Manager) unusedPromise(vm *store.VM) int64 {
	promised := vm.DiskBytes + int64(vm.SwapMiB)<<20
	if m.snapshots() {
		promised += int64(vm.MemoryMiB) << 20
	}
	return max(promised-occupied(m.dir(vm.ID), dataFile, swapFile, legacyFile, MemoryFile), 0)
}

// snapshots says whether VMs can be suspended (the daemon's --suspend, and a
// driver that can): they then keep their memory in a file on the data dir.
func (m *Manager) snapshots() bool {
	_, ok := m.cfg.Driver.(vmm.Snapshotter)
	return ok && m.cfg.Suspend
}

// occupied is the host blocks files in dir take (missing ones: none).
func occupied(dir string, files ...string) int64 {
	var n int64
	for _, f := range files {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, f), &st) == nil {
			n += st.Blocks * 512
		}
	}
	return n
}

// checkMemory refuses a VM of memMiB when, with every other VM that is not
// stopped, the host's memory less the reserve would be overcommitted. It runs
// inside the transaction that records the create or start, so two cannot both
// pass. self is the VM's own id on start ("" on create).
func (m *Manager) checkMemory(tx *store.Tx, self string, memMiB int) error {
	total, err := m.memTotal()
	if err != nil {
		return err
	}
	vms, err := tx.VMs()
	if err != nil {
		return err
	}
	used := memoryUsed(vms, self)
	if avail := total - m.cfg.MemoryReserveMiB; used+memMiB > avail {
		return &roomError{kind: ErrInsufficientCapacity,
			msg: fmt.Sprintf("not enough memory: vms that are not stopped have %d MiB, this one needs %d MiB, and the host has %d MiB for vms (MemTotal %d MiB less a %d MiB reserve)",
				used, memMiB, max(avail, 0), total, m.cfg.MemoryReserveMiB)}
	}
	return nil
}

// checkOwner refuses, inside the transaction that reserves a VM, a create for
// a user who was removed or is no longer allowed since the request was
// authenticated, or whose VMs (every one, whatever its state, with those still
// being created) would go beyond their quota with one more of req's size.
func checkOwner(tx *store.Tx, o Owner, req api.CreateVMRequest) error {
	if !o.User {
		return nil
	}
	u, err := tx.User(o.ID)
	if errors.Is(err, store.ErrNotFound) {
		return &roomError{kind: ErrOwnerGone, msg: "your user was removed while the vm was being created: nothing was made"}
	}
	if err != nil {
		return err
	}
	if ok, err := tx.Allowed(u.Email); err != nil {
		return err
	} else if !ok {
		return &roomError{kind: ErrOwnerGone, msg: fmt.Sprintf("%s may no longer use this host (fcm users deny): nothing was made", u.Email)}
	}
	vms, err := tx.VMs()
	if err != nil {
		return err
	}
	var have Quota
	for _, v := range vms {
		if v.Owner == o.ID {
			have.VMs++
			have.MemoryMiB += v.MemoryMiB
			have.CPUs += v.CPUs
		}
	}
	return overQuota(have, o.Quota, req)
}

// overQuota says, in a refusal that names what is used and what is allowed,
// whether a VM of req's size on top of have goes beyond q.
func overQuota(have, q Quota, req api.CreateVMRequest) error {
	const ask = "destroy one first (fcm destroy <vm>), or ask this host's admin"
	switch {
	case q.VMs > 0 && have.VMs+1 > q.VMs:
		return &roomError{kind: ErrQuota,
			msg: fmt.Sprintf("you have %d VMs, the most this host allows per user (%d, fcm daemon --max-vms-per-user): %s", have.VMs, q.VMs, ask)}
	case q.MemoryMiB > 0 && have.MemoryMiB+req.MemoryMiB > q.MemoryMiB:
		return &roomError{kind: ErrQuota,
			msg: fmt.Sprintf("your VMs have %d MiB of memory and this one asks for %d MiB: this host allows %d MiB per user in all (fcm daemon --max-memory-per-user): %s, or ask for less (--memory)",
				have.MemoryMiB, req.MemoryMiB, q.MemoryMiB, ask)}
	case q.CPUs > 0 && have.CPUs+req.CPUs > q.CPUs:
		return &roomError{kind: ErrQuota,
			msg: fmt.Sprintf("your VMs have %d vCPUs and this one asks for %d: this host allows %d vCPUs per user in all (fcm daemon --max-cpus-per-user): %s, or ask for fewer (--cpus)",
				have.CPUs, req.CPUs, q.CPUs, ask)}
	}
	return nil
}

// Failed creates' console logs kept in <data>/logs.
const (
	keepLogs   = 20
	keepLogAge = 7 * 24 * time.Hour
)

// pruneLogs keeps the newest keepLogs failed-create console logs, none older
// than keepLogAge.
func pruneLogs(dir string, now time.Time) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type logFile struct {
		path string
		mod  time.Time
	}
	var logs []logFile
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || !strings.HasSuffix(e.Name(), "-console.log") {
			continue
		}
		logs = append(logs, logFile{filepath.Join(dir, e.Name()), info.ModTime()})
	}
	sort.Slice(logs, func(i, j int) bool { return logs[i].mod.After(logs[j].mod) })
	for i, l := range logs {
		if i >= keepLogs || now.Sub(l.mod) > keepLogAge {
			os.Remove(l.path)
		}
	}
}

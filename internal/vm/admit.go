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

// checkDisk refuses a create whose disk would eat into the reserve of free
// space on the data dir's filesystem (which also holds the store).
func (m *Manager) checkDisk(req api.CreateVMRequest) error {
	// The disks are sparse, but a VM may fill them: its disk and its swap.
	swap := int64(api.DefaultSwapMiB) << 20
	return checkFree(m.freeSpace, m.cfg.DataDir, req.DiskBytes+swap+m.cfg.DiskReserve,
		fmt.Sprintf("the new vm's %s disk and %s swap plus a %s reserve", humanBytes(req.DiskBytes), humanBytes(swap), humanBytes(m.cfg.DiskReserve)))
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
	used := 0
	for _, v := range vms {
		if v.State != api.StateStopped && v.ID != self {
			used += v.MemoryMiB
		}
	}
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

// Package cgroup puts each VM's hypervisor in a cgroup of its own, fcm/vm-<id>,
// with a memory limit a little above the guest's memory and a CPU weight
// proportional to its vCPUs, so one VM can exhaust only itself: the kernel's OOM
// killer takes that VM's hypervisor when it outgrows its limit, never the
// daemon, Caddy or a neighbour.
//
// Both cgroup layouts are supported. cgroup v2 (the unified hierarchy at
// /sys/fs/cgroup, Debian 12's default): fcm/ enables +memory +cpu for its
// children, and a process joins at spawn through SysProcAttr.CgroupFD. cgroup v1
// (or the v1 controllers of a hybrid host): fcm/vm-<id> is made under both the
// memory and the cpu hierarchy, and the process is written to their cgroup.procs
// right after it starts (Join).
package cgroup

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// parent is the cgroup, under each hierarchy's root, that holds every VM's:
// "fcm" for the daemon of the default data dir, fcm-<hash> for others (see
// ParentFor), so two daemons on one host never touch each other's cgroups.
var (
	parentMu sync.RWMutex
	parent   = "fcm"
)

// SetParent makes name (from ParentFor) the cgroup holding every VM's cgroup.
// The daemon sets it once at start, before any VM is created or adopted.
func SetParent(name string) {
	parentMu.Lock()
	defer parentMu.Unlock()
	parent = name
}

// Parent returns the cgroup holding every VM's cgroup.
func Parent() string {
	parentMu.RLock()
	defer parentMu.RUnlock()
	return parent
}

// ParentFor returns the parent cgroup for a daemon on dataDir: "fcm" for
// defaultDir, fcm-<8 hex digits of the path's SHA-256> for any other.
func ParentFor(dataDir, defaultDir string) string {
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	if dataDir == defaultDir {
		return "fcm"
	}
	sum := sha256.Sum256([]byte(dataDir))
	return "fcm-" + hex.EncodeToString(sum[:4])
}

// prefix starts the name of a VM's cgroup: fcm/vm-<id>.
const prefix = "vm-"

// Limits are the resources a VM's hypervisor may use.
type Limits struct {
	MemoryBytes int64 // hard limit: over it (and nothing to reclaim) the OOM killer ends the VM
	CPUWeight   int   // relative CPU share, cgroup v2 units (1-10000, default 100)
}

// Overhead figures for ForVM. Measured with a TCG QEMU (tb-size 64 MiB, the
// qemu driver's): a 1024 MiB guest booted idle had an RSS of 282 MiB, and one
// holding 800 MiB in a process (plus its kernel and caches) peaked at 1094 MiB,
// so QEMU's own share (translation cache, heap, libraries) is under about
// 100 MiB. Firecracker's own overhead is a few MiB, so the figure is generous
// for it; +20% leaves room for page cache of the disk image, which the cgroup
// is charged for but can reclaim.
const (
	OverheadPercent = 20
	OverheadMiB     = 128
)

// ForVM returns the limits of a hypervisor running a guest with memMiB of RAM
// and vcpus virtual CPUs: memory + 20% + 128 MiB, and a CPU weight of 100 per vCPU.
func ForVM(memMiB, vcpus int) Limits {
	if vcpus < 1 {
		vcpus = 1
	}
	// Whole MiB: the kernel rounds a limit down to pages.
	mib := int64(memMiB) + int64(memMiB)*OverheadPercent/100 + OverheadMiB
	return Limits{
		MemoryBytes: mib << 20,
		CPUWeight:   min(100*vcpus, 10000),
	}
}

// hierarchy is the host's cgroup layout, found once.
type hierarchy struct {
	v2     bool
	root   string // v2: the unified root
	memory string // v1: the memory controller's root
	cpu    string // v1: the cpu controller's root
}

var (
	detectOnce sync.Once
	host       hierarchy
	detectErr  error
)

// Root is where cgroups are mounted; tests do not change it.
var Root = "/sys/fs/cgroup"

func detect() (hierarchy, error) {
	detectOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(Root, "cgroup.controllers")); err == nil {
			host = hierarchy{v2: true, root: Root}
			return
		}
		mem, cpu := filepath.Join(Root, "memory"), filepath.Join(Root, "cpu")
		for _, p := range []string{mem, cpu} {
			if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err != nil {
				detectErr = fmt.Errorf("cgroups: neither cgroup v2 at %s nor the v1 memory and cpu controllers are mounted: %w", Root, err)
				return
			}
		}
		host = hierarchy{memory: mem, cpu: cpu}
	})
	return host, detectErr
}

// Version returns 2 on a cgroup v2 host and 1 on a v1 (or hybrid) one.
func Version() (int, error) {
	h, err := detect()
	if err != nil {
		return 0, err
	}
	if h.v2 {
		return 2, nil
	}
	return 1, nil
}

// dirs are the directories of VM id's cgroup (one on v2, memory and cpu on v1).
func (h hierarchy) dirs(id string) []string {
	name := filepath.Join(Parent(), prefix+id)
	if h.v2 {
		return []string{filepath.Join(h.root, name)}
	}
	return []string{filepath.Join(h.memory, name), filepath.Join(h.cpu, name)}
}

// Group is a VM's cgroup, made by Create.
type Group struct {
	ID   string
	h    hierarchy
	fd   int // v2: the cgroup's directory, for CgroupFD; -1 otherwise
	dirs []string
}

// Create makes (or reuses) VM id's cgroup and sets its limits. Close it once
// the hypervisor has started; Remove it once the hypervisor has exited.
func Create(id string, l Limits) (*Group, error) {
	if id == "" || strings.ContainsAny(id, "/.") {
		return nil, fmt.Errorf("cgroup: invalid vm id %q", id)
	}
	h, err := detect()
	if err != nil {
		return nil, err
	}
	g := &Group{ID: id, h: h, fd: -1, dirs: h.dirs(id)}
	if h.v2 {
		err = g.createV2(l)
	} else {
		err = g.createV1(l)
	}
	if err != nil {
		return nil, fmt.Errorf("cgroup for vm %s: %w", id, err)
	}
	return g, nil
}

func (g *Group) createV2(l Limits) error {
	parent := filepath.Join(g.h.root, Parent())
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	// Enable the controllers for fcm's children (the root has them enabled for
	// its children on systemd hosts; enable them there too if not).
	for _, dir := range []string{g.h.root, parent} {
		if err := enable(dir, "memory", "cpu"); err != nil {
			return err
		}
	}
	if err := os.Mkdir(g.dirs[0], 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	files := [][2]string{
		{"memory.max", strconv.FormatInt(l.MemoryBytes, 10)},
		{"memory.swap.max", "0"},  // the limit is RAM, not RAM plus host swap
		{"memory.oom.group", "1"}, // an OOM kill ends the whole VM, not one thread's process
		{"cpu.weight", strconv.Itoa(l.CPUWeight)},
	}
	for _, f := range files {
		if err := write(filepath.Join(g.dirs[0], f[0]), f[1]); err != nil && !(f[0] == "memory.swap.max" && errors.Is(err, os.ErrNotExist)) {
			return err
		}
	}
	fd, err := unix.Open(g.dirs[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	g.fd = fd
	return nil
}

// enable turns on controllers for dir's children when they are not yet.
func enable(dir string, controllers ...string) error {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	have := strings.Fields(string(data))
	var add []string
	for _, c := range controllers {
		if !contains(have, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := write(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(add, " ")); err != nil {
		return fmt.Errorf("enable %s in %s: %w", strings.Join(add, " "), dir, err)
	}
	return nil
}

func (g *Group) createV1(l Limits) error {
	for _, d := range g.dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	mem := g.dirs[0]
	limit := strconv.FormatInt(l.MemoryBytes, 10)
	// memsw (memory+swap) must stay >= the memory limit: raise memory first when
	// it grows, memsw first when it shrinks; setting memory twice covers both.
	if err := write(filepath.Join(mem, "memory.limit_in_bytes"), limit); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	if err := write(filepath.Join(mem, "memory.memsw.limit_in_bytes"), limit); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := write(filepath.Join(mem, "memory.limit_in_bytes"), limit); err != nil {
		return err
	}
	// v2 weight 100 is v1 shares 1024.
	shares := max(2, l.CPUWeight*1024/100)
	return write(filepath.Join(g.dirs[1], "cpu.shares"), strconv.Itoa(shares))
}

// Prepare makes a process started with attr join the group at spawn (cgroup v2);
// on cgroup v1 it changes nothing and Join places the process after it starts.
func (g *Group) Prepare(attr *syscall.SysProcAttr) {
	if g.fd >= 0 {
		attr.UseCgroupFD, attr.CgroupFD = true, g.fd
	}
}

// Join moves pid (all its threads) into the group. On v2 a process started
// with Prepare is already in it, and Join is harmless.
func (g *Group) Join(pid int) error {
	for _, d := range g.dirs {
		if err := write(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("cgroup for vm %s: add pid %d: %w", g.ID, pid, err)
		}
	}
	return nil
}

// Close releases the group's directory handle; the cgroup itself stays.
func (g *Group) Close() error {
	if g.fd < 0 {
		return nil
	}
	err := unix.Close(g.fd)
	g.fd = -1
	return err
}

// Remove deletes VM id's cgroup. It is for after the hypervisor has exited: a
// cgroup that still holds processes cannot be removed, and an exited process
// leaves it a moment later, so EBUSY is retried for a few seconds. A cgroup
// that is already gone is not an error.
func Remove(id string) error {
	h, err := detect()
	if err != nil {
		return err
	}
	for _, d := range h.dirs(id) {
		deadline := time.Now().Add(3 * time.Second)
		for {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				return fmt.Errorf("remove cgroup %s: %w", d, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// List returns the ids of the VM cgroups that exist, sorted, so a daemon can
// remove those of VMs it no longer has.
func List() ([]string, error) {
	h, err := detect()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	roots := []string{h.root}
	if !h.v2 {
		roots = []string{h.memory, h.cpu}
	}
	for _, r := range roots {
		entries, err := os.ReadDir(filepath.Join(r, Parent()))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
				seen[strings.TrimPrefix(e.Name(), prefix)] = true
			}
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// ofPath matches a VM cgroup's path under any daemon's parent.
var ofPath = regexp.MustCompile(`/fcm(?:-[0-9a-f]{8})?/vm-([a-z0-9]+)$`)

// Of returns the id of the VM cgroup pid is in ("" when none), read from
// /proc/<pid>/cgroup; drivers use it to remove an adopted VM's cgroup after it exits.
func Of(pid int) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// hierarchy-id:controllers:/path
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		p := parts[2]
		if m := ofPath.FindStringSubmatch(p); m != nil {
			return m[1]
		}
	}
	return ""
}

// Dirs returns the directories of VM id's cgroup, for tests and diagnostics.
func Dirs(id string) ([]string, error) {
	h, err := detect()
	if err != nil {
		return nil, err
	}
	return h.dirs(id), nil
}

// MemoryLimit reads the memory limit set on VM id's cgroup.
func MemoryLimit(id string) (int64, error) {
	h, err := detect()
	if err != nil {
		return 0, err
	}
	file := "memory.max"
	if !h.v2 {
		file = "memory.limit_in_bytes"
	}
	data, err := os.ReadFile(filepath.Join(h.dirs(id)[0], file))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
}

// OOMKills is how many processes the kernel's OOM killer ended in VM id's
// cgroup for exceeding its memory limit (memory.events oom_kill on v2,
// memory.oom_control on v1); read it before Remove.
func OOMKills(id string) (int, error) {
	h, err := detect()
	if err != nil {
		return 0, err
	}
	file := "memory.events"
	if !h.v2 {
		file = "memory.oom_control"
	}
	data, err := os.ReadFile(filepath.Join(h.dirs(id)[0], file))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "oom_kill" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, nil
}

// SetOOMScoreAdj sets pid's oom_score_adj: fcm gives hypervisors 500, so the
// OOM killer takes a VM before anything else on the host.
func SetOOMScoreAdj(pid, adj int) error {
	return write(fmt.Sprintf("/proc/%d/oom_score_adj", pid), strconv.Itoa(adj))
}

// HypervisorOOMScoreAdj is the oom_score_adj of every hypervisor.
const HypervisorOOMScoreAdj = 500

func write(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Procs lists the processes in VM id's cgroup (none when it does not exist):
// a hypervisor whose pid file was never written is still found here.
func Procs(id string) ([]int, error) {
	h, err := detect()
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	var pids []int
	for _, d := range h.dirs(id) {
		data, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV) {
			continue // gone, or being removed as its last process exited
		}
		if err != nil {
			return nil, err
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	sort.Ints(pids)
	return pids, nil
}

// Kill sends SIGKILL to every process in VM id's cgroup, for a VM that must
// be gone (teardown, reconcile of a VM fcm no longer has); Remove it after.
func Kill(id string) error {
	pids, err := Procs(id)
	if err != nil {
		return err
	}
	var errs []error
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("kill pid %d of vm %s: %w", pid, id, err))
		}
	}
	return errors.Join(errs...)
}

// RemoveParent removes the parent cgroup (see SetParent) once no VM cgroup is
// left in it; one still holding any is left alone. For tests, whose every data
// dir has a parent of its own.
func RemoveParent() error {
	h, err := detect()
	if err != nil {
		return err
	}
	roots := []string{h.root}
	if !h.v2 {
		roots = []string{h.memory, h.cpu}
	}
	for _, r := range roots {
		err := unix.Rmdir(filepath.Join(r, Parent()))
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.EBUSY) {
			return err
		}
	}
	return nil
}

// Usage is what VM id's cgroup has used: CPU time since it was made, and the
// memory it holds now (the hypervisor's, guest RAM included).
type Usage struct {
	CPUSeconds  float64
	MemoryBytes int64
}

// ReadUsage reads VM id's cgroup usage: cpu.stat usage_usec and
// memory.current on v2; cpuacct.usage and memory.usage_in_bytes on v1.
func ReadUsage(id string) (Usage, error) {
	h, err := detect()
	if err != nil {
		return Usage{}, err
	}
	dirs := h.dirs(id)
	var u Usage
	if h.v2 {
		stat, err := os.ReadFile(filepath.Join(dirs[0], "cpu.stat"))
		if err != nil {
			return u, err
		}
		for _, line := range strings.Split(string(stat), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "usage_usec" {
				usec, _ := strconv.ParseInt(f[1], 10, 64)
				u.CPUSeconds = float64(usec) / 1e6
			}
		}
		u.MemoryBytes, err = readInt(filepath.Join(dirs[0], "memory.current"))
		return u, err
	}
	if u.MemoryBytes, err = readInt(filepath.Join(dirs[0], "memory.usage_in_bytes")); err != nil {
		return u, err
	}
	// cpuacct where it is mounted with cpu; else what the cgroup's processes
	// (the hypervisor) used, from /proc.
	if ns, err := readInt(filepath.Join(dirs[1], "cpuacct.usage")); err == nil {
		u.CPUSeconds = float64(ns) / 1e9
		return u, nil
	}
	pids, err := Procs(id)
	if err != nil {
		return u, err
	}
	for _, pid := range pids {
		u.CPUSeconds += processCPUSeconds(pid)
	}
	return u, nil
}

// processCPUSeconds is the user and system time process pid (all its
// threads) used: fields 14 and 15 of /proc/<pid>/stat, in ticks of 1/100 s.
func processCPUSeconds(pid int) float64 {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat)[i+1:]) // f[0] is field 3, the state
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

func readInt(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
}

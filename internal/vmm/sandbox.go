package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fcmhost/fcm/internal/cgroup"
	"golang.org/x/sys/unix"
)

// UIDBase is the first of the uids (and gids) hypervisors run as: VM n of the
// subnet (its address's host index, 50 for 172.16.0.50 in a /24) runs as
// UIDBase+n. The range is far above any distribution's users and below the
// 2^31 that some tools treat as negative, and a /16 subnet still fits in it.
// Addresses are leased to one VM at a time, so no two VMs share a uid.
const UIDBase = 2100000000

// UIDFor returns the uid of the hypervisor of the VM with address ip in subnet;
// 0 (the daemon's own) when ip is not in it.
func UIDFor(ip netip.Addr, subnet netip.Prefix) int {
	subnet = subnet.Masked()
	if !ip.Is4() || !subnet.Addr().Is4() || !subnet.Contains(ip) {
		return 0
	}
	a, n := ip.As4(), subnet.Addr().As4()
	return UIDBase + int(binary.BigEndian.Uint32(a[:])-binary.BigEndian.Uint32(n[:]))
}

// Sandbox is what a driver starts a hypervisor inside: the VM's unprivileged
// credentials and its cgroup. PrepareSandbox makes it, Apply sets it on the
// process's attributes, Started finishes it once the process runs, and Abort
// undoes it when the start failed.
type Sandbox struct {
	spec  Spec
	cred  *syscall.Credential
	group *cgroup.Group
}

// PrepareSandbox makes, as root, what spec's hypervisor needs to run as
// spec.UID: the VM directory and every file in it owned by the uid (the
// directory 0700, the disk 0600); the tap owned by the uid and gid so the
// hypervisor can attach to it; /dev/net/tun usable by unprivileged processes
// (0666, Debian's default) when there is a tap; and a check that the uid can
// reach its directory, the kernel and the initrd. kvm adds /dev/kvm's group as
// a supplementary group. With spec.Cgroup it also makes the VM's cgroup.
func PrepareSandbox(spec Spec, kvm bool) (*Sandbox, error) {
	s := &Sandbox{spec: spec}
	if spec.UID != 0 {
		if err := s.prepareUser(kvm); err != nil {
			return nil, fmt.Errorf("vm %s: sandbox for uid %d: %w", spec.ID, spec.UID, err)
		}
	}
	if spec.Cgroup {
		g, err := cgroup.Create(spec.ID, cgroup.ForVM(spec.MemoryMiB, spec.VCPUs))
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", spec.ID, err)
		}
		s.group = g
	}
	return s, nil
}

func (s *Sandbox) prepareUser(kvm bool) error {
	spec, uid, gid := s.spec, s.spec.UID, s.spec.GID
	if err := os.Chown(spec.Dir, uid, gid); err != nil {
		return err
	}
	if err := os.Chmod(spec.Dir, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(spec.Dir)
	if err != nil {
		return err
	}
	// The directory is the uid's: an earlier (compromised) hypervisor may have
	// left symlinks in it, so nothing here follows one (Lchown, O_NOFOLLOW).
	for _, e := range entries {
		if e.Type().IsRegular() {
			if err := os.Lchown(filepath.Join(spec.Dir, e.Name()), uid, gid); err != nil {
				return err
			}
		}
	}
	// A shared drive (the base) is read like the kernel and never taken over:
	// root-owned and read-only, it cannot be written by a hypervisor that
	// forgot to attach it read-only.
	readable := []string{spec.Kernel, spec.Initrd}
	for _, d := range spec.Drives {
		if d.Shared {
			readable = append(readable, d.Path)
			continue
		}
		if err := ownDisk(d.Path, uid, gid); err != nil {
			return err
		}
	}
	if err := reachable(spec.Dir, uid, gid, false); err != nil {
		return err
	}
	for _, f := range readable {
		if f == "" {
			continue
		}
		if err := reachable(f, uid, gid, true); err != nil {
			return err
		}
	}
	if spec.TapDevice != "" {
		if err := openTun(); err != nil {
			return err
		}
		if err := SetTapOwner(spec.TapDevice, uid, gid); err != nil {
			return err
		}
	}
	s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	if kvm {
		// /dev/kvm's group, when that group may use it and is not root's
		// (root's group opens far more than /dev/kvm; a 0600 root:root
		// /dev/kvm gives its group nothing).
		if st, err := os.Stat("/dev/kvm"); err == nil {
			if g := st.Sys().(*syscall.Stat_t).Gid; g != 0 && st.Mode().Perm()&0o060 == 0o060 {
				s.cred.Groups = append(s.cred.Groups, g)
			}
		}
	}
	return nil
}

// ownDisk gives the disk image to uid and gid, mode 0600, refusing anything
// but a regular file (a symlink left in the VM's directory would otherwise
// make root chown its target).
func ownDisk(path string, uid, gid int) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("disk %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
		return fmt.Errorf("disk %s is not a regular file with one link", path)
	}
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return fmt.Errorf("disk %s: %w", path, err)
	}
	return unix.Fchmod(fd, 0o600)
}

// reachable checks that uid/gid can search every directory on the way to path
// and, with read, read path itself; the error says which mode to change.
func reachable(path string, uid, gid int, read bool) error {
	check := func(p string, bit os.FileMode) error {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		m := st.Mode().Perm()
		ok := m&bit != 0 || int(sys.Uid) == uid && m&(bit<<6) != 0 || int(sys.Gid) == gid && m&(bit<<3) != 0
		if !ok {
			what := "search (x)"
			if bit == 0o4 {
				what = "read (r)"
			}
			return fmt.Errorf("%s (mode %04o, owner %d) does not let the VM's user %d %s it: allow others to %s it (chmod o+%c)",
				p, m, sys.Uid, uid, what, what, "xr"[bit/4])
		}
		return nil
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		if err := check(dir, 0o1); err != nil {
			return err
		}
		if dir == "/" {
			break
		}
	}
	if read {
		return check(path, 0o4)
	}
	return nil
}

// openTun makes /dev/net/tun openable by unprivileged hypervisors, as Debian's
// udev rule does (0666); only the owner of a tap may attach to it, and making
// taps needs CAP_NET_ADMIN, so this gives a VM's user its own tap only.
func openTun() error {
	st, err := os.Stat("/dev/net/tun")
	if err != nil {
		return err
	}
	if st.Mode().Perm()&0o666 == 0o666 {
		return nil
	}
	return os.Chmod("/dev/net/tun", st.Mode().Perm()|0o666)
}

// How long SetTapOwner waits for a tap another fd is attached to.
const (
	tapBusyTries = 100
	tapBusyWait  = 20 * time.Millisecond
)

// SetTapOwner gives the persistent tap name to uid and gid, so a process of
// theirs (and no other unprivileged one) may attach to it: TUNSETIFF on the
// existing tap with the flags it was made with, then TUNSETOWNER/TUNSETGROUP.
func SetTapOwner(name string, uid, gid int) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	// internal/network makes taps with IFF_VNET_HDR; TUNSETIFF sets the flags it
	// is given on the device, so keep that one.
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	// EBUSY: another fd is still attached to the tap. The one that made it
	// (closed before this) can live on for a moment in a child the daemon
	// forked meanwhile on another thread, until that child execs and its
	// close-on-exec fds go: so wait for that, briefly.
	for try := 0; ; try++ {
		err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EBUSY) || try >= tapBusyTries {
			return fmt.Errorf("tap %s: attach to set its owner: %w", name, err)
		}
		time.Sleep(tapBusyWait)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("tap %s: set owner %d: %w", name, uid, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, gid); err != nil {
		return fmt.Errorf("tap %s: set group %d: %w", name, gid, err)
	}
	return nil
}

// Apply sets the sandbox's credentials and cgroup on the attributes of the
// hypervisor's process, before it starts.
func (s *Sandbox) Apply(attr *syscall.SysProcAttr) {
	if s.cred != nil {
		attr.Credential = s.cred
	}
	if s.group != nil {
		s.group.Prepare(attr)
	}
}

// Started finishes the sandbox of a hypervisor that runs as pid: it joins the
// cgroup (cgroup v1; on v2 it joined at spawn) and gets oom_score_adj 500, so
// the OOM killer takes a VM before the daemon or Caddy. The cgroup's handle is
// released; the cgroup stays until RemoveCgroup.
func (s *Sandbox) Started(pid int) error {
	var errs []error
	if s.group != nil {
		errs = append(errs, s.group.Join(pid))
		errs = append(errs, s.group.Close())
	}
	errs = append(errs, cgroup.SetOOMScoreAdj(pid, cgroup.HypervisorOOMScoreAdj))
	return errors.Join(errs...)
}

// Abort undoes PrepareSandbox after a start that failed (the process is gone).
func (s *Sandbox) Abort() {
	if s.group != nil {
		s.group.Close()
		cgroup.Remove(s.spec.ID)
	}
}

// RemoveCgroup removes the cgroup of the hypervisor p once it has exited,
// first noting in p whether the kernel's OOM killer ended something in it
// (the cgroup's count goes with it): the drivers' Wait calls it with the
// cgroup read before waiting (cgroup.Of), so adopted VMs' cgroups go too. ""
// does nothing.
func RemoveCgroup(p *Process, id string) error {
	if id == "" {
		return nil
	}
	if n, err := cgroup.OOMKills(id); err == nil && n > 0 {
		p.mu.Lock()
		p.oom = true
		p.mu.Unlock()
	}
	return cgroup.Remove(id)
}

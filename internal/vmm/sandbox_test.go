package vmm

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestMain lets the test binary act as a helper: FCM_TEST_OPEN_TAP=<name>
// attaches to the tap as a hypervisor would, and exits 0 if it may.
func TestMain(m *testing.M) {
	if name := os.Getenv("FCM_TEST_OPEN_TAP"); name != "" {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR, 0)
		if err == nil {
			var ifr *unix.Ifreq
			if ifr, err = unix.NewIfreq(name); err == nil {
				ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
				err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
			}
		}
		if err != nil {
			fmt.Printf("uid %d: %v\n", os.Getuid(), err)
			os.Exit(1)
		}
		fmt.Printf("uid %d: attached to %s\n", os.Getuid(), name)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperBinary copies the test binary where any uid may run it (go test's
// build directory is 0700).
func helperBinary(t *testing.T) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "fcm-vmm-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "helper")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	return bin
}

func TestSetTapOwner(t *testing.T) {
	bin := helperBinary(t)
	// A network namespace of the test's own, on a locked thread: the tap and the
	// helpers (forked from this thread) live there.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	defer unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET)

	const tap = "tap_owner0"
	err = netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tap}, Mode: netlink.TUNTAP_MODE_TAP,
		Flags: netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR})
	if err != nil {
		t.Fatal(err)
	}
	if err := openTun(); err != nil {
		t.Fatal(err)
	}
	uid := UIDFor(netip.MustParseAddr("172.16.0.77"), netip.MustParsePrefix("172.16.0.0/24"))
	if uid != UIDBase+77 {
		t.Fatalf("UIDFor(172.16.0.77) = %d, want %d", uid, UIDBase+77)
	}
	attach := func(uid int) (bool, string) {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "FCM_TEST_OPEN_TAP="+tap)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		return err == nil, strings.TrimSpace(string(out))
	}
	if ok, out := attach(uid); ok {
		t.Fatalf("before SetTapOwner, uid %d attached to the tap (%s); want refused", uid, out)
	}
	if err := SetTapOwner(tap, uid, uid); err != nil {
		t.Fatal(err)
	}
	if ok, out := attach(uid); !ok {
		t.Fatalf("after SetTapOwner(%d), that uid could not attach: %s", uid, out)
	} else {
		t.Log(out)
	}
	if ok, out := attach(uid + 1); ok {
		t.Fatalf("uid %d, not the owner, attached to the tap (%s); want refused", uid+1, out)
	}
	l, err := netlink.LinkByName(tap)
	if err != nil {
		t.Fatalf("the tap did not outlive SetTapOwner: %v", err)
	}
	if tt, ok := l.(*netlink.Tuntap); !ok || tt.Owner != uint32(uid) {
		t.Errorf("tap link = %#v; want a tap owned by %d", l, uid)
	}
}

func TestReachable(t *testing.T) {
	// Under /tmp (1777), not t.TempDir, whose parent is 0700.
	dir, err := os.MkdirTemp("", "fcm-reach-") // 0700, root's
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	f := filepath.Join(dir, "vmlinux")
	os.WriteFile(f, []byte("x"), 0o644)
	err = reachable(f, UIDBase+50, UIDBase+50, true)
	if err == nil || !strings.Contains(err.Error(), "chmod o+x") {
		t.Fatalf("reachable through a 0700 directory: %v; want an error saying chmod o+x", err)
	}
	os.Chmod(dir, 0o711)
	if err := reachable(f, UIDBase+50, UIDBase+50, true); err != nil {
		t.Fatal(err)
	}
	os.Chmod(f, 0o600)
	if err := reachable(f, UIDBase+50, UIDBase+50, true); err == nil || !strings.Contains(err.Error(), "chmod o+r") {
		t.Fatalf("reachable of a 0600 file: %v; want an error saying chmod o+r", err)
	}
}

// A disk left as a symlink (by a compromised hypervisor, whose user owns the
// VM's directory) does not make root chown the link's target.
func TestOwnDisk_Symlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "shadow")
	os.WriteFile(victim, []byte("root:x"), 0o640)
	disk := filepath.Join(dir, "rootfs.img")
	os.Symlink(victim, disk)
	if err := ownDisk(disk, UIDBase+50, UIDBase+50); err == nil {
		t.Fatal("ownDisk of a symlink succeeded")
	}
	st, _ := os.Stat(victim)
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 || st.Mode().Perm() != 0o640 {
		t.Errorf("the symlink's target is now uid %d mode %v", sys.Uid, st.Mode().Perm())
	}
	os.Remove(disk)
	os.WriteFile(disk, []byte("disk"), 0o644)
	if err := ownDisk(disk, UIDBase+50, UIDBase+50); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(disk)
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != UIDBase+50 || st.Mode().Perm() != 0o600 {
		t.Errorf("disk: uid %d mode %v; want %d 0600", sys.Uid, st.Mode().Perm(), UIDBase+50)
	}
}

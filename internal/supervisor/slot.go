package supervisor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"syscall"

	"github.com/fcmhost/fcm/internal/release"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A slot is one of two network namespaces a release runs in. Two releases can
// listen on "the same" port at once, each in its own slot, while the proxy sends
// traffic to one of them: that is how a deploy switches without downtime.
type slot struct {
	name   string // a or b
	hostIP netip.Addr
	appIP  netip.Addr
	ns     netns.NsHandle
}

// slotNet is the /24 the slots' veth pairs are numbered from: slot a is .1/.2,
// slot b .5/.6 (two /30s).
var slotNet = netip.MustParsePrefix("10.254.0.0/24")

func slotAddrs(name string) (host, app netip.Addr) {
	base := slotNet.Addr().As4()
	off := byte(0)
	if name == "b" {
		off = 4
	}
	base[3] = off + 1
	host = netip.AddrFrom4(base)
	base[3] = off + 2
	return host, netip.AddrFrom4(base)
}

func nsName(slot string) string   { return "fcm-" + slot }
func vethName(slot string) string { return "fcm-" + slot }

// nsPath is where a slot's namespace is bind-mounted (vishvananda/netns' place).
func nsPath(slot string) string { return filepath.Join("/run/netns", nsName(slot)) }

// newSlot makes the slot's namespace and veth pair from scratch, removing any
// leftover of an earlier run first.
func newSlot(name string) (*slot, error) {
	destroySlot(name)
	s := &slot{name: name}
	s.hostIP, s.appIP = slotAddrs(name)
	ns, err := newNamedNS(nsName(name))
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", nsName(name), err)
	}
	s.ns = ns
	if err := s.plumb(); err != nil {
		destroySlot(name)
		ns.Close()
		return nil, err
	}
	return s, nil
}

// newNamedNS creates a named namespace without leaving this thread in it.
func newNamedNS(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if rerr := netns.Set(orig); rerr != nil {
		// The thread is stuck in the new namespace: let it die with the goroutine.
		return 0, fmt.Errorf("return to the root namespace: %w", rerr)
	}
	runtime.UnlockOSThread()
	return ns, err
}

func (s *slot) plumb() error {
	la := netlink.NewLinkAttrs()
	la.Name = vethName(s.name)
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(s.ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s: %w", la.Name, err)
	}
	host, err := netlink.LinkByName(la.Name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(s.hostIP, 30)}); err != nil {
		return fmt.Errorf("address on %s: %w", la.Name, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(s.ns, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", name, nsName(s.name), err)
		}
		if name == "eth0" {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(s.appIP, 30)}); err != nil {
				return err
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		if name == "eth0" {
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: s.hostIP.AsSlice()}); err != nil {
				return fmt.Errorf("default route in %s: %w", nsName(s.name), err)
			}
		}
	}
	return nil
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}

// destroySlot kills every process left in the slot's namespace and removes it
// and its veth pair; a slot that does not exist is fine.
func destroySlot(name string) {
	killNamespace(nsPath(name))
	if l, err := netlink.LinkByName(vethName(name)); err == nil {
		netlink.LinkDel(l)
	}
	netns.DeleteNamed(nsName(name))
}

// killNamespace SIGKILLs every process whose network namespace is the one
// bind-mounted at path (daemonized grandchildren included).
func killNamespace(path string) {
	var target unix.Stat_t
	if err := unix.Stat(path, &target); err != nil {
		return
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == target.Ino && st.Dev == target.Dev {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// start starts cmd inside the slot's namespace: the forking thread switches in
// and back, so the child is born there.
func (s *slot) start(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(s.ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	startErr := cmd.Start()
	if err := netns.Set(orig); err != nil {
		return errors.Join(startErr, fmt.Errorf("return to the root namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return startErr
}

// close releases the slot and its namespace.
func (s *slot) close() {
	destroySlot(s.name)
	s.ns.Close()
}

// appCmd is a shell command run as the app user in its own process group.
func appCmd(command, dir string, env []string) *exec.Cmd {
	cmd := exec.Command("/bin/bash", "-c", command)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: release.UID, Gid: release.GID}}
	return cmd
}

// envList turns a map into KEY=value entries, sorted by key.
func envList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

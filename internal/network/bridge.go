package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tapPrefix starts the name of every VM tap.
const tapPrefix = "tap_"

// tapFlags are the flags the tap is created with. IFF_TUN_EXCL makes creation
// fail rather than attach to a device that appeared meanwhile; NO_PI and
// VNET_HDR match what Firecracker and QEMU ask for when they open the tap (they
// set their own flags on open anyway). Persistence is the library's default
// (Tuntap.NonPersist false): it sets TUNSETPERSIST and closes its fds, so the
// device outlives this process.
const tapFlags = netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR

// linkByName returns the link named name, or nil if there is none.
func linkByName(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, err
	}
	return l, nil
}

// ensureBridge makes the bridge if needed, adds the gateway address if it is
// missing and brings the bridge up.
func ensureBridge(cfg Config) error {
	name := cfg.Bridge
	br, err := linkByName(name)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if br == nil {
		// A bridge without an address of its own takes the lowest MAC of its
		// ports, so adding or deleting a tap would change the gateway's MAC
		// under the other guests' ARP caches (and they could not reach it
		// until those expire). A MAC given at creation stays put.
		la := netlink.LinkAttrs{Name: name, HardwareAddr: bridgeMAC(cfg.Gateway())}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if br, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("link %s exists but is a %s, not a bridge", name, br.Type())
	}
	gw := &net.IPNet{IP: cfg.Gateway().AsSlice(), Mask: net.CIDRMask(cfg.Subnet.Bits(), 32)}
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of bridge %s: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		if a.IPNet != nil && a.IPNet.String() == gw.String() {
			have = true
		}
	}
	if !have {
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: gw}); err != nil {
			return fmt.Errorf("add address %s to bridge %s: %w", gw, name, err)
		}
	}
	// Guests get no IPv6: the bridge neither has an address to be reached on
	// nor listens to router advertisements a guest might send.
	for k, v := range map[string]string{"accept_ra": "0", "disable_ipv6": "1"} {
		if err := writeSysctl(ipv6Conf(name, k), v, true); err != nil {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", name, err)
	}
	return nil
}

// isolatePorts sets the isolated flag of every port of the bridge to on.
func isolatePorts(bridge string, on bool) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			if err := setPort(l.Attrs().Name, on); err != nil {
				return err
			}
		}
	}
	return nil
}

// setPort makes the bridge port isolated (it cannot send to other isolated
// ports, only to the host) or not, and turns IPv6 off on the port itself.
func setPort(port string, isolated bool) error {
	l, err := netlink.LinkByName(port)
	if err != nil {
		return fmt.Errorf("port %s: %w", port, err)
	}
	if err := netlink.LinkSetIsolated(l, isolated); err != nil {
		return fmt.Errorf("port %s: set isolated %v: %w", port, isolated, err)
	}
	if err := writeSysctl(ipv6Conf(port, "disable_ipv6"), "1", true); err != nil {
		return fmt.Errorf("port %s: %w", port, err)
	}
	return nil
}

// pinNeighbour makes the host's neighbour entry of ip on the bridge a
// permanent one to mac, so no ARP a guest sends can change it.
func pinNeighbour(bridge string, ip netip.Addr, mac net.HardwareAddr) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	n := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}
	if err := netlink.NeighSet(n); err != nil {
		return fmt.Errorf("pin neighbour %s lladdr %s on %s: %w", ip, mac, bridge, err)
	}
	return nil
}

// unpinNeighbour deletes the host's neighbour entry of ip on the bridge; a
// missing entry or bridge is fine.
func unpinNeighbour(bridge string, ip netip.Addr) error {
	br, err := linkByName(bridge)
	if err != nil || br == nil {
		return err
	}
	n := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip.AsSlice()}
	if err := netlink.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete neighbour %s on %s: %w", ip, bridge, err)
	}
	return nil
}

// bridgeMAC is the bridge's fixed MAC: locally administered, derived from the
// gateway address so it is the same every time the bridge is made.
func bridgeMAC(gw netip.Addr) net.HardwareAddr {
	a := gw.As4()
	return net.HardwareAddr{0x02, 0xfc, a[0], a[1], a[2], a[3]}
}

// deleteBridge deletes the bridge if it exists.
func deleteBridge(name string) error {
	br, err := linkByName(name)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if br == nil {
		return nil
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("link %s is a %s, not a bridge: not deleting it", name, br.Type())
	}
	if err := netlink.LinkDel(br); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// ensureTap creates the persistent tap if needed, attaches it to the bridge
// and brings it up.
func ensureTap(bridge, name string) error {
	br, err := linkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if br == nil {
		return fmt.Errorf("tap %s: bridge %s does not exist (was Setup run?)", name, bridge)
	}
	tap, err := linkByName(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if tap == nil {
		t := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     tapFlags,
		}
		if err := netlink.LinkAdd(t); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		if tap, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("tap %s: %w", name, err)
		}
	}
	if err := checkTap(tap); err != nil {
		return err
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(tap, br); err != nil {
			return fmt.Errorf("attach tap %s to bridge %s: %w", name, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return fmt.Errorf("bring up tap %s: %w", name, err)
	}
	return nil
}

// checkTap refuses links that are not tap devices.
func checkTap(l netlink.Link) error {
	t, ok := l.(*netlink.Tuntap)
	if !ok {
		return fmt.Errorf("link %s exists but is a %s, not a tap", l.Attrs().Name, l.Type())
	}
	if t.Mode != netlink.TUNTAP_MODE_TAP {
		return fmt.Errorf("link %s exists but is a tun, not a tap", l.Attrs().Name)
	}
	return nil
}

// deleteTap deletes the tap if it exists.
func deleteTap(name string) error {
	tap, err := linkByName(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if tap == nil {
		return nil
	}
	if err := checkTap(tap); err != nil {
		return fmt.Errorf("not deleting it: %w", err)
	}
	if err := netlink.LinkDel(tap); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil // deleted meanwhile
		}
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// tapNames lists the links named tap_*, sorted.
func tapNames() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var names []string
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, tapPrefix) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}
